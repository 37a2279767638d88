"""The baselines' stems, one class for all three: a sequence of named layers, each a string of operations
over conv 3x3 (no bias), batch norm, LIF and max-pool 3/2, then an optional position-embedding layer added to
its own input. The order of the operations is what tells the families apart:

- Spikformer's SPS: `CBL` layers with `P` after the neuron (pooling spikes), and a `CBL` embedding added to
  the pooled spikes (outputs count 0-2);
- Spikingformer's tokenizer: `CB`, then `L[P]CB` layers (a real-valued output, no embedding);
- the Spike-driven Transformer's MS_SPS: three `CBL[P]` layers, a `CB[P]` layer, and an `LCB` embedding added
  at membrane level.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..layers import batch_norm_of_copies
from ..neurons import LIF, TAU

__all__ = ["StemLayer", "LayerStem", "pooled_layers"]

_OPS = set("CBLP")


class StemLayer(NamedTuple):
    conv: str   # the attribute names, as the release spells them
    bn: str
    lif: str
    c_in: int
    c_out: int
    ops: str    # over C (conv), B (batch norm), L (LIF), P (max-pool), in order


def pooled_layers(ops: Sequence[str], pooling_stat: str, pool_at: Sequence[int]) -> list[str]:
    """`ops[i]` with a `P` inserted at `pool_at[i]` where `pooling_stat[i]` is '1' (the releases' bit string
    of which layers pool, e.g. SDT's '0011' for CIFAR)."""
    return [op[:at] + "P" + op[at:] if bit == "1" else op for op, bit, at in zip(ops, pooling_stat, pool_at)]


class LayerStem(nn.Module):
    """`layers` in order, then `x + embed(x)` where `embed` is given (the releases' relative position embedding).

    A static image reaches the stem as one image expanded over T (stride 0 along T): a first layer that starts
    with conv and batch norm (and a pool before any neuron) then runs them once per image (`once_per_image`, the
    default path) rather than on T identical copies (the reference path); its neuron still integrates all T steps.
    """

    once_per_image = True

    def __init__(self, layers: Sequence[StemLayer], embed: StemLayer | None = None, neuron_backend: str = "auto",
                 tau: float = TAU) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.embed = embed
        for layer in (*layers, *([embed] if embed else [])):
            if set(layer.ops) - _OPS or "C" not in layer.ops:
                raise ValueError(f"stem layer ops {layer.ops!r}: use C, B, L and P, and a C")
            self.add_module(layer.conv, nn.Conv2d(layer.c_in, layer.c_out, 3, 1, 1, bias=False))
            if "B" in layer.ops:
                self.add_module(layer.bn, nn.BatchNorm2d(layer.c_out))
            if "L" in layer.ops:
                self.add_module(layer.lif, LIF(backend=neuron_backend, tau=tau))
        self.pool = nn.MaxPool2d(3, 2, 1)

    def _op(self, layer: StemLayer, op: str) -> nn.Module:
        return self.pool if op == "P" else getattr(self, {"C": layer.conv, "B": layer.bn, "L": layer.lif}[op])

    def run(self, layer: StemLayer, x: torch.Tensor, first: bool = False) -> torch.Tensor:
        """One layer on `[T, B, C, H, W]`."""
        T, ops = x.shape[0], layer.ops
        if (first and self.once_per_image and ops.startswith("CB") and x.stride(0) == 0
                and not isinstance(getattr(self, layer.bn), nn.SyncBatchNorm)):
            # the same image at every step (SyncBatchNorm, which reduces across processes, takes the copies)
            y = batch_norm_of_copies(getattr(self, layer.bn), getattr(self, layer.conv)(x[0]), T)
            ops = ops[2:]
            if ops.startswith("P"):
                y, ops = self.pool(y), ops[1:]
            x = y.expand(T, *y.shape)
        for op in ops:
            module = self._op(layer, op)
            if op == "L":
                x = module(x)
            else:
                y = module(x.flatten(0, 1))
                x = y.reshape(T, y.shape[0] // T, *y.shape[1:])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.run(layer, x, first=i == 0)
        return x if self.embed is None else x + self.run(self.embed, x)

    def extra_repr(self) -> str:
        layers = " ".join(layer.ops for layer in self.layers)
        return f"layers {layers}" + (f", embedding {self.embed.ops} + identity" if self.embed else "")
