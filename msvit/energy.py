"""Energy per image of MSViT / QKFormer models, measured from the spikes of an evaluation run.

    python -m msvit.energy --config cifar10/cifar10.yml [--checkpoint PATH] [--batches N] [--json]
                           [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--key value ...]

The energy model of the papers (Spikformer, QKFormer, MSViT), on a 45 nm chip:

- Dense input: the first convolution of the stem (`patch_embed1.proj_conv`) sees the analog image (or raw
  DVS event counts) and performs multiply-accumulates, E_MAC = 4.6 pJ each. A static image is the same at
  every time step, and the default forward computes that convolution once per image, so it is charged
  once: FLOPs(conv1) per image, the papers' formula. Event frames differ from step to step: FLOPs(conv1)
  x T. (The reference path recomputes the static image's convolution on every step; it is charged the same.)
- Spiking input: a layer performs one accumulate per arriving spike and weight it reaches,
  SOPs(l) = fr(l) x T x FLOPs(l), E_AC = 0.9 pJ each. fr(l) is the mean of the layer's input over the
  evaluation set: the fraction of ones for spike tensors, the mean count for residual streams (which
  carry 0, 1, 2, ...). FLOPs(l) is the MAC count of the equivalent dense layer for one image and one
  time step (conv: C_out x C_in/groups x prod(kernel) x prod(output size); Linear: in x out).
- Attention products: QKTA/MSSA sum Q (and P) over each head's channels, fr(Q) x T x C x N additions,
  and gate K with the mask, fr(A) x T x C x N; SSA computes K^T V and Q (K^T V), each with FLOPs
  N x C x d (d = C / heads) scaled by fr(K) resp. fr(Q).
- The head (Linear on the token- and time-averaged last stage): fr(head input) x T x in x out.
- Batch norms (folded into the convolutions), max-pools and residual additions cost nothing.

`EnergyMeter` collects these counts with forward hooks that exist only inside its `with` block. The hooks
only launch reductions on the device (no host synchronisation); `report()` reads everything at once.
The q/k/v/p convolutions of the attentions are measured from the attention module's input (their common
input), so a forward path that fuses them into one call is measured the same way.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .layers import MLP, PatchEmbed, SpikingSelfAttention, TokenAttention
from .neurons import LIF

__all__ = ["EnergyMeter", "format_report", "format_totals", "conv_flops", "E_MAC_PJ", "E_AC_PJ", "main"]

E_MAC_PJ = 4.6  # pJ per multiply-accumulate (45 nm)
E_AC_PJ = 0.9   # pJ per accumulate
PJ_TO_MJ = 1e-9

KINDS = ("MAC", "AC", "attention")
# Table 4 of QKFormer: the firing rate of each spike tensor of a block, per stage.
RATE_ROWS = (("q", "Q"), ("k", "K"), ("p", "P"), ("v", "V"), ("attn_mask", "attention mask"),
             ("masked_k", "masked K (A*K)"), ("attn_out", "attention output"), ("projection", "projection"),
             ("mlp1", "MLP layer 1"), ("mlp2", "MLP layer 2"))
_STAGE = re.compile(r"^(patch_embed\d+|stage\d+|head)(\.|$)")


def conv_flops(conv: nn.Module, in_size: Sequence[int]) -> int:
    """MACs of a dense `Conv1d`/`Conv2d` for one sample whose spatial size is `in_size`:
    C_out x C_in/groups x prod(kernel) x prod(output size)."""
    out = 1
    padding = conv.padding
    for i, size in enumerate(in_size):
        k, s, d = conv.kernel_size[i], conv.stride[i], conv.dilation[i]
        if padding == "same":
            out *= size
            continue
        p = 0 if padding == "valid" else padding[i]
        out *= (size + 2 * p - d * (k - 1) - 1) // s + 1
    return conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size) * out


def _sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor as a 0-d tensor on its device, in float64 where the device has it."""
    return t.detach().sum(dtype=torch.float32 if t.device.type == "mps" else torch.float64)


class _Acc:
    """Running totals over every metered call (all images): the sum of the observed tensor's elements
    (a device tensor), their count, the operations derived from them, and the FLOPs per image and step."""

    __slots__ = ("total", "numel", "ops", "flops")

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.numel = 0
        self.ops: torch.Tensor | float = 0.0
        self.flops = 0

    def add(self, total: torch.Tensor | float, numel: int, ops: torch.Tensor | float, flops: int) -> None:
        self.total = self.total + total
        self.numel += numel
        self.ops = self.ops + ops
        self.flops = flops


@dataclass
class _Layer:
    name: str
    stage: str
    kind: str  # MAC, AC or attention
    acc: _Acc = field(default_factory=_Acc)


def _stage_of(name: str) -> str:
    m = _STAGE.match(name)
    return m.group(1) if m else "model"


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class EnergyMeter:
    """Opt-in energy accounting for a spiking transformer (or any of its blocks).

        with EnergyMeter(model) as meter:
            for images, _ in loader:
                model(images)
        report = meter.report()      # the dict `python -m msvit.energy --json` prints
        print(format_report(report))

    Hooks are registered on entering the block and removed on leaving it; the model's outputs are
    unchanged. Counts accumulate over every forward inside the block (and over repeated blocks) until
    `reset()`. `model` is a `SpikingTransformer` (input `[B, C, H, W]` or `[B, T, C, H, W]`) or a module
    taking time-major `[T, B, ...]` input (a block, an attention). The first convolution of the first
    patch embedding is the one dense-input (MAC) layer.
    """

    def __init__(self, model: nn.Module, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> None:
        self.model = model
        self.e_mac_pj, self.e_ac_pj = float(e_mac_pj), float(e_ac_pj)
        self._handles: list[Any] = []
        self._hooks: list[tuple[nn.Module, str, Callable]] = []  # (module, 'pre' | 'post', hook)
        self.layers: dict[str, _Layer] = {}
        self.neurons: dict[str, _Acc] = {}
        self._attention: list[tuple[str, nn.Module]] = []
        self._T = self._B = 0
        self._static_images = False  # the model's input is [B, C, H, W] images, the same at every step
        self._images = 0
        self._device: torch.device | None = None
        self._plan()

    # ------------------------------------------------------------------ set-up

    def _layer(self, name: str, kind: str) -> _Acc:
        layer = self.layers[name] = _Layer(name, _stage_of(name), kind)
        return layer.acc

    def _plan(self) -> None:
        """Decide the layers and hooks, in forward order, from the module tree."""
        model = self.model
        self._hooks.append((model, "pre", self._on_input))
        first_dense = True
        planned: set[int] = set()
        lif_deps: dict[int, list[tuple[_Acc, Callable[[int], int]]]] = {}

        for name, m in model.named_modules():
            if isinstance(m, PatchEmbed):
                convs = [f"{n}_conv" for n in m.names] + ["proj_res_conv"]
                for conv_name in convs:
                    conv = getattr(m, conv_name)
                    planned.add(id(conv))
                    full = _join(name, conv_name)
                    if first_dense:
                        first_dense = False
                        self._hooks.append((conv, "pre", self._dense_hook(self._layer(full, "MAC"))))
                    else:
                        self._hooks.append((conv, "pre", self._conv_hook(self._layer(full, "AC"))))
            elif isinstance(m, (TokenAttention, SpikingSelfAttention)):
                self._attention.append((name, m))
                branches = [b for b in ("q", "k", "p", "v") if hasattr(m, f"{b}_conv")]
                convs = [(getattr(m, f"{b}_conv"), self._layer(_join(name, f"{b}_conv"), "AC")) for b in branches]
                planned.update(id(c) for c, _ in convs)
                self._hooks.append((m, "pre", self._branches_hook(convs)))
                dim, heads = m.dim, m.num_heads
                if isinstance(m, TokenAttention):
                    # channel sums of Q (and P): one addition per spike, C x N per image and step
                    for b in ("q", "p"):
                        if b in branches:
                            acc = self._layer(_join(name, f"{b}_channel_sum"), "attention")
                            lif_deps.setdefault(id(getattr(m, f"{b}_lif")), []).append((acc, lambda per: per))
                    # mask product A * K: the mask [T, B, heads, 1, N] broadcast over the head's channels
                    acc = self._layer(_join(name, "mask_k"), "attention")
                    lif_deps.setdefault(id(m.attn_lif), []).append(
                        (acc, lambda per, dim=dim, heads=heads: dim * (per // heads)))
                else:
                    # K^T V and Q (K^T V): N x C x d each, d = C / heads; the spikes of K resp. Q count
                    d = dim // heads
                    for b, product in (("k", "k_t_v"), ("q", "q_kv")):
                        acc = self._layer(_join(name, product), "attention")
                        lif_deps.setdefault(id(getattr(m, f"{b}_lif")), []).append(
                            (acc, lambda per, dim=dim, d=d: (per // dim) * dim * d))
                planned.add(id(m.proj_conv))
                self._hooks.append((m.proj_conv, "pre", self._conv_hook(self._layer(_join(name, "proj_conv"),
                                                                                    "AC"))))
            elif isinstance(m, MLP):
                for conv_name in ("fc1_conv", "fc2_conv"):
                    conv = getattr(m, conv_name)
                    planned.add(id(conv))
                    self._hooks.append((conv, "pre", self._conv_hook(self._layer(_join(name, conv_name), "AC"))))
        head = getattr(model, "head", None)
        if isinstance(head, nn.Linear):
            planned.add(id(head))
            self._hooks.append((head, "pre", self._head_hook(self._layer("head", "AC"))))

        for name, m in model.named_modules():
            if isinstance(m, LIF):
                acc = self.neurons[name] = _Acc()
                self._hooks.append((m, "post", self._lif_hook(acc, lif_deps.get(id(m), []))))
        self.unmetered = [name for name, m in model.named_modules()
                          if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in planned]

    # ------------------------------------------------------------------ hooks (no host synchronisation)

    def _on_input(self, model: nn.Module, args: tuple) -> None:
        x = args[0]
        if hasattr(model, "time_major"):  # SpikingTransformer: [B, C, H, W] images or [B, T, C, H, W] frames
            B, T = x.shape[0], (model.T if x.dim() == 4 else x.shape[1])
        else:  # a block or attention: [T, B, ...]
            T, B = x.shape[0], x.shape[1]
        self._T, self._B = int(T), int(B)
        self._static_images = hasattr(model, "time_major") and x.dim() == 4
        self._images += int(B)
        if self._device is None:
            self._device = x.device

    def _per_sample(self, numel: int) -> int:
        """Elements per image and time step of a tensor holding `numel` for the current batch."""
        return numel // (self._T * self._B or 1)  # (T, B unknown only outside a metered model call)

    def _dense_hook(self, acc: _Acc) -> Callable:
        def hook(conv: nn.Module, args: tuple) -> None:
            x = args[0]
            flops = conv_flops(conv, x.shape[2:])
            samples = self._B if self._static_images else x.shape[0]  # once per image, else per image x step
            acc.add(0.0, 0, float(flops * samples), flops)
        return hook

    @staticmethod
    def _conv_hook(acc: _Acc) -> Callable:
        def hook(conv: nn.Module, args: tuple) -> None:
            x = args[0]  # [T*B, C_in, *size]
            s, n = _sum(x), x.numel()
            flops = conv_flops(conv, x.shape[2:])
            # sum over samples of fr x FLOPs = sum(x) x FLOPs / (elements per sample)
            acc.add(s, n, s * (flops * x.shape[0] / n), flops)
        return hook

    def _branches_hook(self, convs: list[tuple[nn.Module, _Acc]]) -> Callable:
        def hook(attn: nn.Module, args: tuple) -> None:
            x = args[0]  # [T, B, C, H, W]: the input of every branch convolution
            s, n = _sum(x), x.numel()
            per = self._per_sample(n)
            for conv, acc in convs:
                flops = conv_flops(conv, (per // conv.in_channels,))
                acc.add(s, n, s * (flops / per), flops)
        return hook

    def _head_hook(self, acc: _Acc) -> Callable:
        def hook(head: nn.Linear, args: tuple) -> None:
            x = args[0]  # [B, in]: the last stage averaged over tokens and time
            s, n = _sum(x), x.numel()
            flops = head.in_features * head.out_features
            # fr x T x in x out per image, fr = s / n, n = B x in
            acc.add(s, n, s * (self._T * flops * (n // head.in_features) / n), flops)
        return hook

    def _lif_hook(self, acc: _Acc, deps: list[tuple[_Acc, Callable[[int], int]]]) -> Callable:
        def hook(lif: nn.Module, args: tuple, out: torch.Tensor) -> None:
            s, n = _sum(out), out.numel()
            per = self._per_sample(n)
            acc.add(s, n, 0.0, per)
            for dep, flops_of in deps:
                flops = flops_of(per)
                dep.add(s, n, s * (flops / per), flops)
        return hook

    # ------------------------------------------------------------------ context

    def __enter__(self) -> "EnergyMeter":
        if self._handles:
            raise RuntimeError("this EnergyMeter is already active")
        try:
            for module, when, hook in self._hooks:
                register = module.register_forward_pre_hook if when == "pre" else module.register_forward_hook
                self._handles.append(register(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (also done on leaving the `with` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget everything measured so far."""
        for acc in [layer.acc for layer in self.layers.values()] + list(self.neurons.values()):
            acc.__init__()
        self._images = 0

    # ------------------------------------------------------------------ results

    def _read(self, sync: bool) -> tuple[int, dict[str, tuple[float, int, float]], dict[str, tuple[float, int]]]:
        """All totals on the host in one transfer (summed over processes with `sync` in a process group)."""
        accs = [layer.acc for layer in self.layers.values()] + list(self.neurons.values())
        values: list[torch.Tensor | float] = [float(self._images)]
        for acc in accs:
            values += [acc.total, float(acc.numel), acc.ops]
        device = self._device
        if device is None:
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        dtype = torch.float32 if device.type == "mps" else torch.float64
        tensor_idx = [i for i, v in enumerate(values) if torch.is_tensor(v)]
        vec = torch.tensor([0.0 if torch.is_tensor(v) else float(v) for v in values], dtype=dtype, device=device)
        if tensor_idx:
            vec[tensor_idx] = torch.stack([values[i].to(device, dtype) for i in tensor_idx])
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(vec)
        flat = vec.tolist()
        images = int(round(flat[0]))
        triples = [(flat[1 + 3 * i], int(round(flat[2 + 3 * i])), flat[3 + 3 * i]) for i in range(len(accs))]
        layers = dict(zip(self.layers, triples[:len(self.layers)]))
        neurons = {name: t[:2] for name, t in zip(self.neurons, triples[len(self.layers):])}
        return images, layers, neurons

    def report(self, sync: bool = True) -> dict[str, Any]:
        """Energy, operations and firing rates per image; see the module docstring for the model.

        Keys: energy_mj, mac_flops, sops (per image), images, T, e_mac_pj, e_ac_pj, layers (a list of
        {name, stage, kind, firing_rate, flops, mac_flops, sops, energy_mj}; flops per image and time
        step, the rest per image), stages ({stage: {mac_flops, sops, energy_mj}}), firing_rates (QKFormer's
        Table 4 layout: {stage: {attention, blocks, q, k, ...}}), neurons (every LIF's output firing rate)
        and unmetered (convolutions and linear layers the model has and the energy model does not know).
        With `sync` and a process group, the counts of all processes are summed (a collective call).
        """
        images, layer_totals, neuron_totals = self._read(sync)
        if images == 0:
            raise RuntimeError("EnergyMeter saw no forward pass: run the model inside `with meter:`")
        layers = []
        stages: dict[str, dict[str, float]] = {}
        for name, layer in self.layers.items():
            total, numel, ops = layer_totals[name]
            per_image = ops / images
            mac = per_image if layer.kind == "MAC" else 0.0
            sops = 0.0 if layer.kind == "MAC" else per_image
            energy = (mac * self.e_mac_pj + sops * self.e_ac_pj) * PJ_TO_MJ
            rate = total / numel if numel and layer.kind != "MAC" else None
            layers.append(dict(name=name, stage=layer.stage, kind=layer.kind, firing_rate=rate,
                               flops=layer.acc.flops, mac_flops=mac, sops=sops, energy_mj=energy))
            stage = stages.setdefault(layer.stage, dict(mac_flops=0.0, sops=0.0, energy_mj=0.0))
            stage["mac_flops"] += mac
            stage["sops"] += sops
            stage["energy_mj"] += energy
        rates = {name: (total / numel if numel else None) for name, (total, numel) in neuron_totals.items()}
        input_rates = {name: (t / n if n else None) for name, (t, n, _) in layer_totals.items()}
        return dict(
            energy_mj=sum(layer["energy_mj"] for layer in layers),
            mac_flops=sum(layer["mac_flops"] for layer in layers),
            sops=sum(layer["sops"] for layer in layers),
            images=images, T=self._T, e_mac_pj=self.e_mac_pj, e_ac_pj=self.e_ac_pj,
            stages=stages, layers=layers, firing_rates=self._table4(rates, input_rates), neurons=rates,
            unmetered=list(self.unmetered))

    def totals(self, sync: bool = True) -> dict[str, float]:
        """Just energy_mj, mac_flops and sops per image (what `test.py --energy` prints)."""
        report = self.report(sync)
        return {key: report[key] for key in ("energy_mj", "mac_flops", "sops")}

    def _table4(self, rates: dict[str, float | None], input_rates: dict[str, float | None]) -> dict[str, Any]:
        """Firing rates per stage, averaged over its blocks, in the layout of QKFormer's Table 4."""
        per_stage: dict[str, dict[str, Any]] = {}
        for name, attn in self._attention:
            block = name.rsplit(".", 1)[0] if "." in name else ""
            kind = ("SSA" if isinstance(attn, SpikingSelfAttention)
                    else "MSSA" if getattr(attn, "multi_scale", False) else "QKTA")
            row: dict[str, float | None] = {}
            for b in ("q", "k", "p", "v"):
                if _join(name, f"{b}_lif") in rates and hasattr(attn, f"{b}_conv"):
                    row[b] = rates[_join(name, f"{b}_lif")]
            if kind == "SSA":
                row["attn_out"] = input_rates.get(_join(name, "proj_conv"))
            else:
                row["attn_mask"] = rates.get(_join(name, "attn_lif"))
                row["masked_k"] = input_rates.get(_join(name, "proj_conv"))
            row["projection"] = rates.get(_join(name, "proj_lif"))
            for key, lif in (("mlp1", "fc1_lif"), ("mlp2", "fc2_lif")):
                if _join(block, "mlp", lif) in rates:
                    row[key] = rates[_join(block, "mlp", lif)]
            entry = per_stage.setdefault(_stage_of(name), {"attention": kind, "blocks": 0, "rows": []})
            entry["blocks"] += 1
            entry["rows"].append(row)
        table: dict[str, Any] = {}
        for stage, entry in per_stage.items():
            out: dict[str, Any] = {"attention": entry["attention"], "blocks": entry["blocks"]}
            for key, _ in RATE_ROWS:
                values = [r[key] for r in entry["rows"] if r.get(key) is not None]
                if any(key in r for r in entry["rows"]):
                    out[key] = sum(values) / len(values) if values else None
            table[stage] = out
        return table


# ---------------------------------------------------------------------- formatting

def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_totals(totals: dict[str, Any]) -> str:
    """One line: energy per image, MACs and SOPs per image."""
    line = (f"energy {totals['energy_mj']:.4g} mJ/image  (MACs {_si(totals['mac_flops'])}, "
            f"SOPs {_si(totals['sops'])} per image")
    if "e_mac_pj" in totals:
        line += f"; E_MAC {totals['e_mac_pj']:g} pJ, E_AC {totals['e_ac_pj']:g} pJ"
    return line + ")"


def format_report(report: dict[str, Any]) -> str:
    """The report as readable tables: layers, stages and total, and the firing rates (QKFormer Table 4)."""
    lines = []
    title = f"{report['model']}: " if report.get("model") else ""
    ssa = ("" if "batch_coupled_ssa" not in report
           else f", SSA {'batch-coupled' if report['batch_coupled_ssa'] else 'per sample'}")
    lines.append(f"{title}energy per image over {report['images']} images, T={report['T']}{ssa}, "
                 f"E_MAC {report['e_mac_pj']:g} pJ, E_AC {report['e_ac_pj']:g} pJ")
    width = max([len(layer["name"]) for layer in report["layers"]] + [len("layer")])
    header = f"{'layer':<{width}}  {'kind':<9}  {'in rate':>7}  {'FLOPs/step':>10}  {'MACs/SOPs':>10}  {'mJ':>10}"
    lines += ["", header, "-" * len(header)]
    for layer in report["layers"]:
        ops = layer["mac_flops"] if layer["kind"] == "MAC" else layer["sops"]
        lines.append(f"{layer['name']:<{width}}  {layer['kind']:<9}  {_rate(layer['firing_rate']):>7}  "
                     f"{_si(layer['flops']):>10}  {_si(ops):>10}  {layer['energy_mj']:>10.4g}")
    header = f"{'stage':<14}  {'MACs':>10}  {'SOPs':>10}  {'mJ':>10}"
    lines += ["", header, "-" * len(header)]
    for stage, values in list(report["stages"].items()) + [("total", report)]:
        if stage == "total":
            lines.append("-" * len(header))
        lines.append(f"{stage:<14}  {_si(values['mac_flops']):>10}  {_si(values['sops']):>10}  "
                     f"{values['energy_mj']:>10.4g}")
    table = report["firing_rates"]
    if table:
        columns = [f"{stage} ({entry['attention']}, {entry['blocks']})" for stage, entry in table.items()]
        col = max(len(c) for c in columns)
        label = max(len(text) for _, text in RATE_ROWS)
        lines += ["", "firing rates (QKFormer Table 4 layout; mean over the blocks of each stage)",
                  f"{'':<{label}}  " + "  ".join(f"{c:>{col}}" for c in columns)]
        for key, text in RATE_ROWS:
            if any(key in entry for entry in table.values()):
                lines.append(f"{text:<{label}}  " + "  ".join(
                    f"{_rate(entry.get(key)):>{col}}" for entry in table.values()))
    if report.get("unmetered"):
        lines += ["", "not metered (unknown to the energy model): " + ", ".join(report["unmetered"])]
    lines += ["", format_totals(report)]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line

def _split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This program's own options, and the rest: the settings `config.parse_args` reads."""
    from .config import ArgumentParser

    parser = ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--e-mac-pj", "--e_mac_pj", dest="e_mac_pj", type=float, default=E_MAC_PJ)
    parser.add_argument("--e-ac-pj", "--e_ac_pj", dest="e_ac_pj", type=float, default=E_AC_PJ)
    return parser.parse_known_args(list(argv))


USAGE = """usage: python -m msvit.energy --config FILE [--checkpoint PATH] [--batches N] [--json]
                          [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--KEY VALUE ...]

  --checkpoint PATH  weights to measure (random weights when absent)
  --batches N        measure only the first N evaluation batches (default: the whole set)
  --json             print one JSON object instead of tables
  --e-mac-pj, --e-ac-pj  energy of a multiply-accumulate / an accumulate in pJ
"""


def run(cfg: dict[str, Any], batches: int = 0, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
        given: Sequence[str] = ()) -> dict[str, Any]:
    """Build the configured model (architecture and data settings from the checkpoint's saved config when it
    has one, except the keys `given` on the command line that evaluation may change), run the evaluation set
    (or its first `batches` batches) and return the report."""
    from .checkpoint import load_checkpoint, read_checkpoint
    from .config import restore_run_settings
    from .data import build_datasets
    from .distributed import cleanup, init_distributed, main_process_first
    from .errors import ConfigError
    from .models import MODEL_NAMES
    from .console import setup_logging
    from .engine import amp_settings
    from .loaders import build_eval_loader
    from .zoo import create_dataset_model

    if not cfg.get("dataset") or not cfg.get("model"):
        raise ConfigError("no dataset or model configured: pass --config <dataset>/<dataset>.yml")
    if batches < 0:
        raise ConfigError(f"--batches must be 0 (the whole set) or more, got {batches}")
    env = init_distributed()
    setup_logging(env.is_main)
    checkpoint = read_checkpoint(cfg["checkpoint"]) if cfg["checkpoint"] else None
    restore_run_settings(cfg, checkpoint, list(given))
    try:
        model = create_dataset_model(cfg, MODEL_NAMES)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, use_ema=cfg["use_ema"])
        model.to(env.device).eval()
        with main_process_first(env):
            _, val_set = build_datasets(cfg, train=False)
        loader = build_eval_loader(val_set, cfg, env)
        amp = amp_settings(cfg, env.device)
        with torch.no_grad(), EnergyMeter(model, e_mac_pj, e_ac_pj) as meter:
            for i, (inputs, _) in enumerate(loader):
                if batches and i >= batches:
                    break
                with amp.autocast():
                    model(inputs.to(env.device, non_blocking=True))
        report = meter.report()
    finally:
        cleanup()
    return {"model": cfg["model"], "dataset": cfg["dataset"], "checkpoint": cfg["checkpoint"] or None,
            "batch_coupled_ssa": model.config["batch_coupled_ssa"], **report}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from .config import command_line_keys, parse_args
    from .console import print_json, stdout_to_stderr
    from .errors import UserError, user_message

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE)
    try:
        extra, rest = _split_argv(argv)
        cfg = parse_args(rest, None)
        with stdout_to_stderr(cfg["json"]):
            report = run(cfg, extra.batches, extra.e_mac_pj, extra.e_ac_pj, command_line_keys(rest))
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", 0)) == 0:  # the process group is gone by now
        print_json(report) if cfg["json"] else print(format_report(report))
    return report


if __name__ == "__main__":
    main()
