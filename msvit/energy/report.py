"""The reporting half of `msvit.energy`: what a meter's readings mean, as one dict (energy, operations and
firing rates per image, per layer, stage and time step) that the text, the JSON and the figures all read."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..layers import SpikeDrivenSelfAttention
from ..layers import SpikingSelfAttention
from .readings import Readings, stage_of

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_report", "neuron_rates", "KINDS", "RATE_ROWS", "PJ_TO_MJ"]

PJ_TO_MJ = 1e-9
KINDS = ("MAC", "AC", "attention")
# Table 4 of QKFormer: the firing rate of each spike tensor of a block, per stage.
RATE_ROWS = (("q", "Q"), ("k", "K"), ("p", "P"), ("v", "V"), ("attn_mask", "attention mask"),
             ("masked_k", "masked K (A*K)"), ("attn_out", "attention output"), ("projection", "projection"),
             ("mlp1", "MLP layer 1"), ("mlp2", "MLP layer 2"))

Rate = float | list[float] | None  # a mean, or one value per time step


def _per_step(steps: list[float] | None, numel: int, T: int) -> list[float] | None:
    return None if steps is None or not numel else [s / (numel // T) for s in steps]


def neuron_rates(readings: Readings) -> dict[str, Any]:
    """The output firing rate of every neuron (LIF), over all images and steps and per time step, and the
    rates of each stage and of the whole network (all spikes over all neuron updates).

    Keys: firing_rate, stage_firing_rates ({stage: rate}), neurons ({name: rate}), neurons_per_step
    ({name: [rate at t] for t < T})."""
    stage_totals: dict[str, list[float]] = {}
    for name, (total, numel, _) in readings.neurons.items():
        entry = stage_totals.setdefault(stage_of(name), [0.0, 0])
        entry[0] += total
        entry[1] += numel
    spikes, updates = sum(t for t, _ in stage_totals.values()), sum(n for _, n in stage_totals.values())
    return dict(
        firing_rate=spikes / updates if updates else None,
        stage_firing_rates={stage: (t / n if n else None) for stage, (t, n) in stage_totals.items()},
        neurons={name: (total / numel if numel else None) for name, (total, numel, _) in readings.neurons.items()},
        neurons_per_step={name: _per_step(steps, numel, readings.T)
                          for name, (_, numel, steps) in readings.neurons.items()})


def build_report(meter: Any, readings: Readings) -> dict[str, Any]:
    """Energy, operations and firing rates per image, from an `EnergyMeter` (its layers, attentions and energy
    settings) and what it read; see the package docstring for the model.

    Keys: energy_mj, mac_flops, sops (per image), images, T, e_mac_pj, e_ac_pj;
    layers: a list of {name, stage, kind, firing_rate, firing_rate_per_step, flops, mac_flops, sops, energy_mj}
    (flops per image and time step, the rest per image; the rates are of the layer's input);
    stages: {stage: {mac_flops, sops, energy_mj, by_kind: {MAC, AC, attention: mJ}}};
    firing_rates: QKFormer's Table 4 layout, {stage: {attention, blocks, q, k, ..., per_step: {q: [...], ...}}};
    and neuron_rates' keys: firing_rate, stage_firing_rates, neurons, neurons_per_step;
    unmetered: convolutions and linear layers the model has and the energy model does not know.
    """
    images, T = readings.images, readings.T
    if images == 0:
        raise RuntimeError("EnergyMeter saw no forward pass: run the model inside `with meter:`")
    layers = []
    stages: dict[str, dict[str, Any]] = {}
    for name, layer in meter.layers.items():
        total, numel, ops, steps = readings.layers[name]
        per_image = ops / images
        mac = per_image if layer.kind == "MAC" else 0.0
        sops = 0.0 if layer.kind == "MAC" else per_image
        energy = (mac * meter.e_mac_pj + sops * meter.e_ac_pj) * PJ_TO_MJ
        rate = total / numel if numel and layer.kind != "MAC" else None
        layers.append(dict(name=name, stage=layer.stage, kind=layer.kind, firing_rate=rate,
                           firing_rate_per_step=_per_step(steps, numel, T) if rate is not None else None,
                           flops=layer.acc.flops, mac_flops=mac, sops=sops, energy_mj=energy))
        stage = stages.setdefault(layer.stage, dict(mac_flops=0.0, sops=0.0, energy_mj=0.0,
                                                    by_kind=dict.fromkeys(KINDS, 0.0)))
        stage["mac_flops"] += mac
        stage["sops"] += sops
        stage["energy_mj"] += energy
        stage["by_kind"][layer.kind] += energy
    firing = neuron_rates(readings)
    inputs = {name: (t / n if n else None) for name, (t, n, _, _) in readings.layers.items()}
    inputs_per_step = {name: _per_step(steps, n, T) for name, (_, n, _, steps) in readings.layers.items()}
    table = _table4(meter.attention, firing["neurons"], inputs)
    for stage, per_step in _table4(meter.attention, firing["neurons_per_step"], inputs_per_step).items():
        table[stage]["per_step"] = {key: value for key, value in per_step.items() if key not in ("attention", "blocks")}
    return dict(
        energy_mj=sum(layer["energy_mj"] for layer in layers),
        mac_flops=sum(layer["mac_flops"] for layer in layers),
        sops=sum(layer["sops"] for layer in layers),
        images=images, T=T, e_mac_pj=meter.e_mac_pj, e_ac_pj=meter.e_ac_pj,
        stages=stages, layers=layers, firing_rates=table, **firing, unmetered=list(meter.unmetered))


def _mean(values: Sequence[Rate]) -> Rate:
    """The mean of rates, element-wise for rates per step; None when there are none."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    if isinstance(known[0], list):
        return [sum(column) / len(known) for column in zip(*known)]
    return sum(known) / len(known)


def _table4(attention: Sequence[tuple[str, "nn.Module"]], rates: dict[str, Rate],
            input_rates: dict[str, Rate]) -> dict[str, Any]:
    """Firing rates per stage, averaged over its blocks, in the layout of QKFormer's Table 4. `rates`: the
    neurons' output rates by name, `input_rates`: the layers' input rates (means, or lists per step)."""
    def join(*parts: str) -> str:
        return ".".join(p for p in parts if p)

    per_stage: dict[str, dict[str, Any]] = {}
    for name, attn in attention:
        block = name.rsplit(".", 1)[0] if "." in name else ""
        kind = ("SDSA" if isinstance(attn, SpikeDrivenSelfAttention) else "SSA" if isinstance(attn, SpikingSelfAttention)
                else "MSSA" if getattr(attn, "multi_scale", False) else "QKTA")
        row: dict[str, Rate] = {}
        for b in ("q", "k", "p", "v"):
            if join(name, f"{b}_lif") in rates and hasattr(attn, f"{b}_conv"):
                row[b] = rates[join(name, f"{b}_lif")]
        if kind in ("SSA", "SDSA"):  # SDSA: the channel mask, and the masked Q the projection reads
            row["attn_out"] = input_rates.get(join(name, "proj_conv"))
            if kind == "SDSA":
                row["attn_mask"] = rates.get(join(name, "attn_lif"))
        else:
            row["attn_mask"] = rates.get(join(name, "attn_lif"))
            row["masked_k"] = input_rates.get(join(name, "proj_conv"))
        row["projection"] = rates.get(join(name, "proj_lif"))
        for key, lif in (("mlp1", "fc1_lif"), ("mlp2", "fc2_lif")):
            if join(block, "mlp", lif) in rates:
                row[key] = rates[join(block, "mlp", lif)]
        entry = per_stage.setdefault(stage_of(name), {"attention": kind, "blocks": 0, "rows": []})
        entry["blocks"] += 1
        entry["rows"].append(row)
    table: dict[str, Any] = {}
    for stage, entry in per_stage.items():
        out: dict[str, Any] = {"attention": entry["attention"], "blocks": entry["blocks"]}
        for key, _ in RATE_ROWS:
            if any(key in r for r in entry["rows"]):
                out[key] = _mean([r.get(key) for r in entry["rows"]])
        table[stage] = out
    return table
