"""STMixer's token mixing (Deng et al., NeurIPS 2024; brain-intelligence-lab/STMixer_demo, `models/STMixer.py`):

- `TokenMixing`, the release's STM: per head, one learned N x N matrix over the token axis, applied to each of the
  head's C / heads channels (`y[c, n] = sum_m W_h[n, m] x[c, m]`); input-independent, no bias. The matrices tie a
  module to one token count N (one image size): another N is refused in one line.
- `SpikingTokenMixer`, the release's TokenMixer, the branch an encoder block adds to its real-valued stream:
  `BN(conv1x1(LIF(STM(LIF(BN(conv1x1(LIF(x))))))))`, convs without bias. It starts with a neuron and ends with a
  batch norm, as the membrane-shortcut MLP does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..neurons import Neurons, as_settings

__all__ = ["TokenMixing", "SpikingTokenMixer"]


class TokenMixing(nn.Module):
    """`num_heads` learned `num_tokens x num_tokens` matrices (`weight`, `[heads, N, N]`) over the last axis of
    `[..., C, N]`, head h mixing channels h C/heads .. (h+1) C/heads - 1. Initialised as the release's
    `nn.Linear(N, N)`s: Kaiming normal, fan out, ReLU gain (std sqrt(2 / N))."""

    def __init__(self, dim: int, num_tokens: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_tokens, self.num_heads = dim, num_tokens, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, num_tokens, num_tokens))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / self.num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., C, N]` -> `[..., C, N]`."""
        C, N = x.shape[-2:]
        if N != self.num_tokens:
            raise ValueError(f"STMixer's token mixing is built for {self.num_tokens} tokens and got {N}: the model "
                             f"is tied to its img_size; build it at the input's size")
        heads = x.reshape(*x.shape[:-2], self.num_heads, C // self.num_heads, N)
        return torch.einsum("...hcm,hnm->...hcn", heads, self.weight).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tokens={self.num_tokens}, num_heads={self.num_heads}"


class SpikingTokenMixer(nn.Module):
    """STMixer's token mixer on `[T, B, C, H, W]` (N = H W tokens): `fc1_lif`, `fc1_conv` (Conv1d 1x1, no bias),
    `fc1_bn`, `stm_lif`, `stm` (`TokenMixing`), `fc2_lif`, `fc2_conv`, `fc2_bn`; the output is the batch norm's,
    real-valued, of the input's shape."""

    def __init__(self, dim: int, num_tokens: int, num_heads: int, neurons: Neurons = "auto") -> None:
        super().__init__()
        neurons = as_settings(neurons)
        self.dim, self.num_heads = dim, num_heads
        self.fc1_lif = neurons.make()
        self.fc1_conv = nn.Conv1d(dim, dim, 1, bias=False)
        self.fc1_bn = nn.BatchNorm1d(dim)
        self.stm_lif = neurons.make()
        self.stm = TokenMixing(dim, num_tokens, num_heads)
        self.fc2_lif = neurons.make()
        self.fc2_conv = nn.Conv1d(dim, dim, 1, bias=False)
        self.fc2_bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, (T, B) = x.shape, x.shape[:2]
        x = x.flatten(3)  # [T, B, C, N]
        h = self.fc1_bn(self.fc1_conv(self.fc1_lif(x).flatten(0, 1))).unflatten(0, (T, B))
        mixed = self.stm(self.stm_lif(h))
        out = self.fc2_bn(self.fc2_conv(self.fc2_lif(mixed).flatten(0, 1))).unflatten(0, (T, B))
        return out.reshape(shape)
