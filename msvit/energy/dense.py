"""The rate-independent energy of a model's dense layers, by `msvit.energy`'s rule: what `python -m msvit.zoo
--energy` prints for the zoo's rows with a published energy."""
from __future__ import annotations

from typing import Any

import timm
import torch

from ..models._inputs import make_batch
from ..models._registry import ALL_ARCHS
from ..models._timm import input_kind
from .meter import E_AC_PJ, EnergyMeter

__all__ = ["dense_costs"]


def dense_costs(entry: Any) -> dict[str, Any]:
    """The part of a model's energy that no firing rate changes (`msvit.energy`'s rule, random weights, one image
    at T 1): the MACs of its dense layers (the stem's first convolution; a head reading real values) in mJ, the
    FLOPs per image and time step of its spiking layers and attention products, and the mean input rate that the
    published energy would need at the model's T: (published - MACs) / (E_AC x T x FLOPs).

    `entry`: a `msvit.zoo.ZooEntry` (its model, dataset, kwargs and published_energy_mj)."""
    model = timm.create_model(entry.model, **{**entry.kwargs, "T": 1}).eval()
    kind = input_kind({**ALL_ARCHS[entry.model], **entry.kwargs})
    x, _ = make_batch(kind, 1, 1, model.in_chans, model.img_size, 1, torch.device("cpu"))
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(x)
    report = meter.report()
    mac_mj = sum(layer["energy_mj"] for layer in report["layers"] if layer["kind"] == "MAC")
    flops = sum(layer["flops"] for layer in report["layers"] if layer["kind"] != "MAC")
    T = entry.kwargs.get("T", ALL_ARCHS[entry.model]["T"])
    paper = entry.published_energy_mj
    implied = None if paper is None else (paper - mac_mj) / (E_AC_PJ * 1e-9 * T * flops)
    return dict(model=entry.model, dataset=entry.dataset, T=T, mac_mj=mac_mj, dense_gflops=flops / 1e9,
                published_energy_mj=paper, implied_rate=implied)
