"""The blocks' MLPs: the spiking `MLP` of MSViT, QKFormer and Spikformer (every branch ends in a neuron), and the
membrane-shortcut (pre-activation) `MembraneMLP` that Spikingformer and the Spike-driven Transformer share (every
branch starts with a neuron and ends with a batch norm, so the residual stream carries real values)."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import Neurons, as_settings
from ._time import fold_time, unfold_time

__all__ = ["MLP", "MembraneMLP"]


class MLP(nn.Module):
    """1x1 Conv2d (with bias), BN, LIF, twice: C -> ratio*C -> C."""

    def __init__(self, dim: int, hidden: int, neurons: Neurons = "auto") -> None:
        super().__init__()
        neurons = as_settings(neurons)
        self.fc1_conv = nn.Conv2d(dim, hidden, 1)
        self.fc1_bn = nn.BatchNorm2d(hidden)
        self.fc1_lif = neurons.make()
        self.fc2_conv = nn.Conv2d(hidden, dim, 1)
        self.fc2_bn = nn.BatchNorm2d(dim)
        self.fc2_lif = neurons.make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = self.fc1_lif(unfold_time(self.fc1_bn(self.fc1_conv(fold_time(x))), T))
        return self.fc2_lif(unfold_time(self.fc2_bn(self.fc2_conv(fold_time(x))), T))



class MembraneMLP(nn.Module):
    """`BN(conv(LIF(BN(conv(LIF(x))))))` with 1x1 convs (with bias), C -> hidden -> C: the branch a block adds
    to x. `inner_residual` (the Spike-driven Transformer where hidden == C) adds x to the hidden membrane before
    the second neuron, and that sum's excess over x to the output, as its MS_MLP does. `tokens` (the Spike-driven
    Transformer V2's MS_MLP) runs Conv1d and BatchNorm1d on the tokens `[T*B, C, N]` (the same maths, weights of
    shape `[C', C, 1]`). `tau`, when given, overrides the time constant of `neurons`; `bias=False` (STMixer's FFN)
    builds the convs without bias."""

    def __init__(self, dim: int, hidden: int, neurons: Neurons = "auto", tau: float | None = None,
                 inner_residual: bool = False, tokens: bool = False, bias: bool = True) -> None:
        super().__init__()
        if inner_residual and hidden != dim:
            raise ValueError(f"an inner residual needs hidden == dim, got {hidden} and {dim}")
        neurons = as_settings(neurons, tau)
        self.inner_residual, self.tokens = inner_residual, bool(tokens)
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if tokens else (nn.Conv2d, nn.BatchNorm2d)
        self.fc1_lif = neurons.make()
        self.fc1_conv = conv(dim, hidden, 1, bias=bias)
        self.fc1_bn = norm(hidden)
        self.fc2_lif = neurons.make()
        self.fc2_conv = conv(hidden, dim, 1, bias=bias)
        self.fc2_bn = norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, (T, B) = x.shape, x.shape[:2]
        x = x.flatten(3) if self.tokens else x
        h = self.fc1_bn(self.fc1_conv(self.fc1_lif(x).flatten(0, 1))).unflatten(0, (T, B))
        if self.inner_residual:
            h = h + x
        out = self.fc2_bn(self.fc2_conv(self.fc2_lif(h).flatten(0, 1))).unflatten(0, (T, B))
        return (out + (h - x) if self.inner_residual else out).reshape(shape)
