"""The counting half of `msvit.energy`: `EnergyMeter` hooks a model's layers and neurons and accumulates, on the
device, the sums that the report (`msvit.energy.report`) turns into operations, energy and firing rates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..layers import MLP, AttentionBase, LayerStem, MembraneMLP, PatchEmbed
from ..neurons import LIF
from .conv_rules import CONV_LAYERS, plan_conv_layer
from .products import attention_products, conv_flops
from .readings import Readings, stage_of
from .report import build_report, neuron_rates

__all__ = ["EnergyMeter", "conv_flops", "E_MAC_PJ", "E_AC_PJ"]

E_MAC_PJ = 4.6  # pJ per multiply-accumulate (45 nm)
E_AC_PJ = 0.9   # pJ per accumulate


def _dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor as a 0-d tensor on its device."""
    return t.detach().sum(dtype=_dtype(t.device))


def _step_sums(t: torch.Tensor, T: int, B: int) -> torch.Tensor | None:
    """Sums per time step `[T]` of a time-major tensor (`[T, B, ...]`, or `[T*B, ...]` with step t first); None
    when its leading dimension is not T x B. Each sample's step is summed in float32 (a float64 sum is an order
    of magnitude slower on CPUs), which is exact while a sample's step sums to under 2^24: the values are 0/1
    spikes or small counts, so every order of summation gives the same exact total."""
    if T < 1 or B < 1 or t.shape[0] not in (T, T * B) or t.numel() % (T * B):
        return None
    per_sample = t.detach().reshape(T, B, -1).sum(2, dtype=torch.float32)
    return per_sample.sum(1, dtype=_dtype(t.device))


class _Acc:
    """Running totals over every metered call (all images): the sum of the observed tensor's elements (device
    tensors: `steps`, its sums per time step `[T]`, where the tensor has a time axis, else `total`), their
    count, the operations derived from them, and the FLOPs per image and step."""

    __slots__ = ("total", "numel", "ops", "flops", "steps")

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.numel = 0
        self.ops: torch.Tensor | float = 0.0
        self.flops = 0
        self.steps: torch.Tensor | None = None

    def add(self, numel: int, flops: int, ops: torch.Tensor | float = 0.0, total: torch.Tensor | float = 0.0,
            steps: torch.Tensor | None = None) -> None:
        """One call's count of elements and FLOPs, its operations, and its sum: `steps` where the tensor has
        them (its total is their sum), else `total`. Zeros launch nothing."""
        self.numel += numel
        self.flops = flops
        if not isinstance(ops, float) or ops:
            self.ops = self.ops + ops
        if steps is not None:
            self.steps = steps if self.steps is None else self.steps + steps
        elif not isinstance(total, float) or total:
            self.total = self.total + total


@dataclass
class _Layer:
    name: str
    stage: str
    kind: str  # MAC, AC or attention
    acc: _Acc = field(default_factory=_Acc)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class EnergyMeter:
    """Opt-in energy and firing accounting for a spiking transformer (or any of its blocks).

        with EnergyMeter(model) as meter:
            for images, _ in loader:
                model(images)
        report = meter.report()      # the dict `python -m msvit.energy --json` prints
        print(format_report(report))

    Hooks are registered on entering the block and removed on leaving it; the model's outputs are
    unchanged. Counts accumulate over every forward inside the block (and over repeated blocks) until
    `reset()`. `model` is a `SpikingTransformer` (input `[B, C, H, W]` or `[B, T, C, H, W]`) or a module
    taking time-major `[T, B, ...]` input (a block, an attention). The first convolution of the first
    patch embedding is the one dense-input (MAC) layer. `neurons_only` hooks the neurons alone: `firing()`
    then works and `report()` does not (what training's firing watch uses: the least work per batch).
    """

    def __init__(self, model: nn.Module, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
                 neurons_only: bool = False) -> None:
        self.model = model
        self.e_mac_pj, self.e_ac_pj = float(e_mac_pj), float(e_ac_pj)
        self.neurons_only = neurons_only
        self._handles: list[Any] = []
        self._hooks: list[tuple[nn.Module, str, Callable]] = []  # (module, 'pre' | 'post', hook)
        self.layers: dict[str, _Layer] = {}
        self.neurons: dict[str, _Acc] = {}
        self.attention: list[tuple[str, nn.Module]] = []  # (name, an AttentionBase: QKTA/MSSA, SSA, SDSA)
        self.unmetered: list[str] = []
        self._T = self._B = 0
        self._static_images = False  # the model's input is [B, C, H, W] images, the same at every step
        self._images = 0
        self._device: torch.device | None = None
        self._plan()

    # ------------------------------------------------------------------ set-up

    def _layer(self, name: str, kind: str) -> _Acc:
        layer = self.layers[name] = _Layer(name, stage_of(name), kind)
        return layer.acc

    def _plan(self) -> None:
        """Decide the layers and hooks, in forward order, from the module tree."""
        model = self.model
        self._hooks.append((model, "pre", self._on_input))
        lif_deps: dict[int, list[tuple[_Acc, Callable[[int], int]]]] = {}
        self.attention = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionBase)]
        if not self.neurons_only:
            lif_deps = self._plan_layers()
        for name, m in model.named_modules():
            if isinstance(m, LIF):
                acc = self.neurons[name] = _Acc()
                self._hooks.append((m, "post", self._lif_hook(acc, lif_deps.get(id(m), []))))

    def _plan_layers(self) -> dict[int, list[tuple[_Acc, Callable[[int], int]]]]:
        """The layers that cost energy and their hooks; returns the counts that neurons' hooks add
        (attention products), by id of the neuron."""
        model = self.model
        first_dense = True
        planned: set[int] = set()
        lif_deps: dict[int, list[tuple[_Acc, Callable[[int], int]]]] = {}
        for name, m in model.named_modules():
            if isinstance(m, (PatchEmbed, LayerStem)):
                conv_names = ([f"{n}_conv" for n in m.names] + ["proj_res_conv"] if isinstance(m, PatchEmbed)
                              else [layer.conv for layer in (*m.layers, *([m.embed] if m.embed else []))])
                for conv_name in conv_names:
                    conv = getattr(m, conv_name)
                    planned.add(id(conv))
                    full = _join(name, conv_name)
                    if first_dense:
                        first_dense = False
                        self._hooks.append((conv, "pre", self._dense_hook(self._layer(full, "MAC"))))
                    else:
                        self._hooks.append((conv, "pre", self._conv_hook(self._layer(full, "AC"))))
            elif isinstance(m, AttentionBase):
                branches = [b for b in ("q", "k", "p", "v") if hasattr(m, f"{b}_conv")]
                convs = [(getattr(m, f"{b}_conv"), self._layer(_join(name, f"{b}_conv"), "AC")) for b in branches]
                planned.update(id(c) for c, _ in convs)
                if m.membrane:  # the branches read the spikes of the shortcut neuron, not the block's input
                    self._hooks.append((m.shortcut_lif, "post", lambda lif, args, out, convs=convs:
                                        self._branches(convs, out)))
                else:
                    self._hooks.append((m, "pre", lambda attn, args, convs=convs: self._branches(convs, args[0])))
                for product, lif, flops_of in attention_products(m):
                    acc = self._layer(_join(name, product), "attention")
                    lif_deps.setdefault(id(lif), []).append((acc, flops_of))
                planned.add(id(m.proj_conv))
                self._hooks.append((m.proj_conv, "pre", self._conv_hook(self._layer(_join(name, "proj_conv"),
                                                                                    "AC"))))
            elif isinstance(m, CONV_LAYERS):  # the Spike-driven Transformer V2's (`conv_rules`)
                first_dense = plan_conv_layer(self, name, m, planned, lif_deps, first_dense)
            elif isinstance(m, (MLP, MembraneMLP)):
                for conv_name in ("fc1_conv", "fc2_conv"):
                    conv = getattr(m, conv_name)
                    planned.add(id(conv))
                    self._hooks.append((conv, "pre", self._conv_hook(self._layer(_join(name, conv_name), "AC"))))
        for head_name in ("head", "head_kd"):  # head_kd: V2's distillation head, on the same spikes
            head = getattr(model, head_name, None)
            if isinstance(head, nn.Linear):
                planned.add(id(head))
                # a head that reads the real-valued stream (Spikingformer's, no neuron before it) multiplies
                dense = not getattr(model, "head_reads_spikes", True)
                acc = self._layer(head_name, "MAC" if dense else "AC")
                self._hooks.append((head, "pre", self._head_hook(acc, dense)))
        self.unmetered = [name for name, m in model.named_modules()
                          if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in planned]
        return lif_deps

    # ------------------------------------------------------------------ hooks (no host synchronisation)

    def _on_input(self, model: nn.Module, args: tuple) -> None:
        x = args[0]
        if hasattr(model, "time_major"):  # SpikingTransformer: [B, C, H, W] images or [B, T, C, H, W] frames
            B, T = x.shape[0], (model.T if x.dim() == 4 else x.shape[1])
        else:  # a block or attention: [T, B, ...]
            T, B = x.shape[0], x.shape[1]
        if self._images and int(T) != self._T:
            raise RuntimeError(f"EnergyMeter measured T={self._T} and now sees T={int(T)}: reset() it first")
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
            acc.add(0, flops, ops=float(flops * samples))
        return hook

    def _sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The total of a time-major tensor and its sums per step (one reduction where it has steps)."""
        steps = _step_sums(x, self._T, self._B)
        return (_sum(x) if steps is None else steps.sum()), steps

    def _conv_hook(self, acc: _Acc) -> Callable:
        def hook(conv: nn.Module, args: tuple) -> None:
            x = args[0]  # [T*B, C_in, *size]
            (s, steps), n = self._sums(x), x.numel()
            flops = conv_flops(conv, x.shape[2:])
            # sum over samples of fr x FLOPs = sum(x) x FLOPs / (elements per sample)
            acc.add(n, flops, ops=s * (flops * x.shape[0] / n), total=s, steps=steps)
        return hook

    def _branches(self, convs: list[tuple[nn.Module, _Acc]], x: torch.Tensor) -> None:
        """Count the branch convolutions of an attention on their common input `x` `[T, B, C, H, W]`."""
        (s, steps), n = self._sums(x), x.numel()
        per = self._per_sample(n)
        for conv, acc in convs:
            flops = conv_flops(conv, (per // conv.in_channels,))
            acc.add(n, flops, ops=s * (flops / per), total=s, steps=steps)

    def _head_hook(self, acc: _Acc, dense: bool) -> Callable:
        def hook(head: nn.Linear, args: tuple) -> None:
            x = args[0]  # [B, in] averaged over tokens and time, or [B, T, in] per step (SDT's, TET's)
            s, n = _sum(x), x.numel()
            flops, rows = head.in_features * head.out_features, n // head.in_features
            if dense:  # in x out multiply-accumulates per row
                acc.add(n, flops, ops=float(flops * rows), total=s)
                return
            # fr x T x in x out per image, fr = s / n: rows are images (the mean over T), or images x steps
            steps = self._T if x.dim() == 2 else 1
            acc.add(n, flops, ops=s * (steps * flops * rows / n), total=s)
        return hook

    def _lif_hook(self, acc: _Acc, deps: list[tuple[_Acc, Callable[[int], int]]]) -> Callable:
        def hook(lif: nn.Module, args: tuple, out: torch.Tensor) -> None:
            n, steps = out.numel(), _step_sums(out, self._T, self._B)  # [T, B, ...], or [T*B, ...] when coupled
            per = self._per_sample(n)
            acc.add(n, per, total=_sum(out) if steps is None else 0.0, steps=steps)
            if deps:
                s = _sum(out) if steps is None else steps.sum()
                for dep, flops_of in deps:
                    flops = flops_of(per)
                    dep.add(n, flops, ops=s * (flops / per), total=s if steps is None else 0.0, steps=steps)
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

    def read(self, sync: bool = True) -> Readings:
        """Everything accumulated, on the host in one transfer (summed over processes with `sync` in a process
        group: a collective call)."""
        accs = [layer.acc for layer in self.layers.values()] + list(self.neurons.values())
        device = self._device
        if device is None:
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        dtype = _dtype(device)
        sync = sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        T = self._T
        if sync:  # a process that saw no batch knows no T: agree on the layout first
            agreed = torch.tensor([T], device=device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            T = int(agreed.item())
        values: list[torch.Tensor | float] = [float(self._images)]
        for acc in accs:
            values += [acc.total if acc.steps is None else acc.total + acc.steps.sum(), float(acc.numel), acc.ops,
                       float(acc.steps is not None)]
            values += [0.0] * T if acc.steps is None else list(acc.steps.unbind())
        tensor_idx = [i for i, v in enumerate(values) if torch.is_tensor(v)]
        vec = torch.tensor([0.0 if torch.is_tensor(v) else float(v) for v in values], dtype=dtype, device=device)
        if tensor_idx:
            vec[tensor_idx] = torch.stack([values[i].to(device, dtype) for i in tensor_idx])
        if sync:
            dist.all_reduce(vec)
        flat = vec.tolist()
        entries = []
        for i in range(len(accs)):
            at = 1 + i * (4 + T)
            steps = flat[at + 4:at + 4 + T] if flat[at + 3] else None  # where any process saw steps
            entries.append((flat[at], int(round(flat[at + 1])), flat[at + 2], steps))
        layers = dict(zip(self.layers, entries[:len(self.layers)]))
        neurons = {name: (total, numel, steps) for name, (total, numel, _, steps)
                   in zip(self.neurons, entries[len(self.layers):])}
        return Readings(int(round(flat[0])), T, layers, neurons)

    def report(self, sync: bool = True) -> dict[str, Any]:
        """Energy, operations and firing rates per image: see `msvit.energy.report.build_report`."""
        if self.neurons_only:
            raise RuntimeError("this EnergyMeter hooks the neurons only (neurons_only=True): use firing()")
        return build_report(self, self.read(sync))

    def firing(self, sync: bool = True) -> dict[str, Any]:
        """Firing rates only: see `msvit.energy.report.neuron_rates`."""
        return neuron_rates(self.read(sync))
