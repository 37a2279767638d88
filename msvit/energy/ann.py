"""An ANN's energy by the papers' rule: every multiply-accumulate of one image at E_MAC (4.6 pJ).

The MACs are counted by `torch.utils.flop_counter.FlopCounterMode` on the meta device (no memory, no weights, no
download): batch 1, MACs = FLOPs / 2, matrix products and convolutions only (softmax, GELU and the norms cost
nothing, as in fvcore and the papers' GFLOPs). timm 1.0.31 gives deit_base_patch16_224 17.564 GMACs (80.79 mJ),
vit_base_patch16_384 55.484 (255.23 mJ), swin_tiny_patch4_window7_224 4.491 (20.66 mJ), swin_base_patch4_window7_224
15.431 (70.98 mJ).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .meter import E_MAC_PJ
from .report import PJ_TO_MJ

__all__ = ["count_macs", "ann_energy"]


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of `model` on one input of `input_size` (C, H, W), on the model's
    device (the meta device costs nothing): FLOPs / 2 of the matrix products and convolutions."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def ann_energy(name: str, img_size: int | None = None, e_mac_pj: float = E_MAC_PJ, **kwargs: Any) -> dict[str, Any]:
    """timm's model `name` (pretrained=False, `kwargs` to its constructor, `img_size` where it takes one) built on
    the meta device: its parameters, input, MACs per image and energy (mJ) at `e_mac_pj` per MAC."""
    import timm

    if img_size is not None:
        kwargs["img_size"] = img_size
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    size = _input_size(model, img_size)
    macs = count_macs(model, size)
    return dict(model=name, params=sum(p.numel() for p in model.parameters()), input="x".join(map(str, size)),
                macs=macs, gmacs=macs / 1e9, energy_mj=macs * e_mac_pj * PJ_TO_MJ)


def _input_size(model: nn.Module, img_size: int | None) -> tuple[int, int, int]:
    """(C, H, W): the model's own input size (its pretrained config), at `img_size` when given."""
    channels, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        height = width = img_size
    return int(channels), int(height), int(width)
