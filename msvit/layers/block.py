"""The transformer block every family stacks: x + attn(x), then x + mlp(x), with stochastic depth."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import Neurons
from .mlp import MLP

__all__ = ["Block", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth on `[T, B, ...]` tensors: one keep/drop draw per sample, shared by all time steps."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask_shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        mask = x.new_empty(mask_shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"



class Block(nn.Module):
    """x + attn(x), then x + mlp(x). With the spiking `MLP` (the default) both branches end in a neuron, so x
    carries small counts; a given `mlp` (the membrane-shortcut families') may make x real-valued."""

    def __init__(self, attn: nn.Module, dim: int, mlp_ratio: float, drop_path: float = 0.0,
                 neurons: Neurons = "auto", mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = MLP(dim, int(dim * mlp_ratio), neurons) if mlp is None else mlp
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))
