"""Every attention of the five families, over one base (`AttentionBase`: the spiking q/k/v/p branches and the
output projection), so energy and maps read any of them the same way:

- `TokenAttention`: QKFormer's QK token attention (QKTA) or, with `multi_scale`, MSViT's MSSA;
- `SpikingSelfAttention`: Spikformer's SSA (per sample or batch-coupled, as the releases run it; the membrane
  form is Spikingformer's);
- `SpikeDrivenSelfAttention`: the Spike-driven Transformer's SDSA, with its DVS erosion;
- `RepConvSelfAttention`: the Spike-driven Transformer V2's attention, SSA-like with RepConv q/k/v/proj (not over
  `AttentionBase`: its branches are convolutions over the token grid, not Conv1d over the tokens).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..neurons import Neurons, as_settings
from ._time import fold_time, unfold_time
from .conv import RepConv

__all__ = ["AttentionBase", "TokenAttention", "SpikingSelfAttention", "SpikeDrivenSelfAttention",
           "RepConvSelfAttention", "SSA_SCALE", "MASK_THRESHOLD", "erode"]

# SSA multiplies Q(K^T V) by this constant in both releases, whatever the head width (the default `scale`).
SSA_SCALE = 0.125
MASK_THRESHOLD = 0.5  # the release's talking_heads_lif


class AttentionBase(nn.Module):
    """Shared parts: the spiking branches named `{b}_conv/{b}_bn/{b}_lif` and the output projection.

    `batch_coupled` makes the output neuron `proj_lif` integrate along the flattened `[T*B, C, N]` sequence,
    time-major then sample, as the authors' SSA does (QKFormer issue #14): its membrane carries from each
    sample to the next one of the batch. Otherwise it runs per sample on `[T, B, C, N]`, like every other neuron.

    `membrane=True` is the pre-activation form of Spikingformer and the Spike-driven Transformer, whose
    residual stream carries real values: a neuron `shortcut_lif` turns the input into spikes first, and the
    output is the projection's batch norm, with no neuron. `neurons` makes every neuron (`NeuronSettings`, or a
    backend name for the releases' neurons); the attention neuron `attn_lif` keeps `attn_threshold`.
    """

    def __init__(self, dim: int, num_heads: int, branches: dict[str, int], attn_threshold: float,
                 neurons: Neurons, batch_coupled: bool = False, qkv_bias: bool = False,
                 membrane: bool = False) -> None:
        super().__init__()
        neurons = as_settings(neurons)
        self.batch_coupled = bool(batch_coupled)
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.membrane = dim, num_heads, membrane
        self.branch_names = tuple(branches)
        if membrane:
            self.shortcut_lif = neurons.make()
        for name, kernel in branches.items():
            self.add_module(f"{name}_conv", nn.Conv1d(dim, dim, kernel, padding=kernel // 2, bias=qkv_bias))
            self.add_module(f"{name}_bn", nn.BatchNorm1d(dim))
            self.add_module(f"{name}_lif", neurons.make())
        self.attn_lif = neurons.make(v_threshold=attn_threshold)
        self.proj_conv = nn.Conv1d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm1d(dim)
        if not membrane:
            self.proj_lif = neurons.make()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The input `[T, B, C, H, W]` as the branches' tokens `[T*B, C, N]` (spikes, in the membrane form)."""
        return fold_time((self.shortcut_lif(x) if self.membrane else x).flatten(3))

    # False: one Conv1d call per branch (the straightforward reference path)
    fuse_projections = True

    def branch(self, name: str, tokens: torch.Tensor, T: int) -> torch.Tensor:
        """Spikes `[T, B, C, N]` of branch `name` on `tokens` `[T*B, C, N]`."""
        y = getattr(self, f"{name}_bn")(getattr(self, f"{name}_conv")(tokens))
        return getattr(self, f"{name}_lif")(unfold_time(y, T))

    def branches(self, names: Sequence[str], tokens: torch.Tensor, T: int) -> list[torch.Tensor]:
        """Spikes of several 1x1 branches over the same tokens. Fused, their convolutions run as one
        Conv1d with the weights stacked (one pass over the input instead of one per branch); the
        parameters stay separate, so state_dicts are unchanged."""
        if not self.fuse_projections:
            return [self.branch(name, tokens, T) for name in names]
        convs = [getattr(self, f"{name}_conv") for name in names]
        bias = torch.cat([conv.bias for conv in convs]) if convs[0].bias is not None else None
        stacked = nn.functional.conv1d(tokens, torch.cat([conv.weight for conv in convs]), bias).split(self.dim, dim=1)
        return [getattr(self, f"{name}_lif")(unfold_time(getattr(self, f"{name}_bn")(y), T))
                for name, y in zip(names, stacked)]

    def project(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Output projection of `[T, B, C, N]` back to `shape` `[T, B, C, H, W]`."""
        y = self.proj_bn(self.proj_conv(fold_time(x)))  # [T*B, C, N], sample b of step t at row t*B + b
        if self.membrane:
            return y.reshape(shape)
        return self.proj_lif(y if self.batch_coupled else unfold_time(y, shape[0])).reshape(shape)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, N] -> [T, B, heads, C/heads, N] (heads take contiguous channel groups)."""
        T, B, C, N = x.shape
        return x.reshape(T, B, self.num_heads, C // self.num_heads, N)


class TokenAttention(AttentionBase):
    """QK token attention (QKTA, QKFormer) or, with `multi_scale=True`, MSViT's MSSA.

    Per head and token the Q spikes are counted over the head's channels; MSSA adds the count of
    a third branch P, a kernel-3 Conv1d along the raster token sequence (receptive fields 1 and 3
    fused before one neuron). The attention neuron turns the count into a binary mask
    `[T, B, heads, 1, N]` that gates K; no softmax, no scaling, no V.
    """

    def __init__(self, dim: int, num_heads: int, attn_threshold: float, multi_scale: bool,
                 neurons: Neurons = "auto") -> None:
        branches = {"q": 1, "k": 1, **({"p": 3} if multi_scale else {})}
        super().__init__(dim, num_heads, branches, attn_threshold, neurons)
        self.multi_scale = multi_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        tokens = self.tokens(x)  # [T*B, C, N]
        q, k = (self.split_heads(spikes) for spikes in self.branches(("q", "k"), tokens, T))
        count = q.sum(3, keepdim=True)
        if self.multi_scale:
            count = count + self.split_heads(self.branch("p", tokens, T)).sum(3, keepdim=True)
        mask = self.attn_lif(count)  # [T, B, heads, 1, N]
        return self.project((mask * k).flatten(2, 3), x.shape)

    def extra_repr(self) -> str:
        return f"{'MSSA' if self.multi_scale else 'QKTA'}, heads={self.num_heads}"


class SpikingSelfAttention(AttentionBase):
    """Spikformer's SSA: LIF(Q (K^T V) * scale) per head, then the output projection.

    `batch_coupled=True` is the authors' release: the output neuron runs along the `T*B` sequence (see
    `AttentionBase`), so a sample's output depends on the samples before it in the batch. `scale` (0.125 in
    QKFormer, MSViT and most Spikformer models; 0.25 in Spikformer's CIFAR10-DVS model) and `qkv_bias` (biased
    q/k/v projections, as in Spikformer's CIFAR model) serve the baselines.
    """

    def __init__(self, dim: int, num_heads: int, attn_threshold: float,
                 neurons: Neurons = "auto", batch_coupled: bool = True, scale: float = SSA_SCALE,
                 qkv_bias: bool = False, membrane: bool = False) -> None:
        super().__init__(dim, num_heads, {"q": 1, "k": 1, "v": 1}, attn_threshold, neurons, batch_coupled,
                         qkv_bias, membrane)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        tokens = self.tokens(x)
        q, k, v = (self.split_heads(spikes) for spikes in self.branches(("q", "k", "v"), tokens, T))
        # [T, B, h, d, N]: K^T V is k @ v^T over tokens, then Q (K^T V) per token
        kv = k @ v.transpose(-1, -2)  # [T, B, h, d, d]
        attn = kv.transpose(-1, -2) @ q  # [T, B, h, d, N]
        out = self.attn_lif(attn * self.scale)
        return self.project(out.flatten(2, 3), x.shape)

    def extra_repr(self) -> str:
        scale = "" if self.scale == SSA_SCALE else f", scale={self.scale:g}"
        if self.membrane:
            return f"SSA, heads={self.num_heads}{scale}, membrane shortcut (no output neuron)"
        return (f"SSA, heads={self.num_heads}{scale}, output neuron "
                f"{'batch-coupled' if self.batch_coupled else 'per sample'}")



def erode(x: torch.Tensor) -> torch.Tensor:
    """The release's `Erode`: a 3x3 max-pool (stride 1, padding 1) over the last two dimensions of a 5-D tensor."""
    return nn.functional.max_pool3d(x, (1, 3, 3), 1, (0, 1, 1))


def _erode_heads(x: torch.Tensor) -> torch.Tensor:
    """`erode` of `[T, B, h, d, N]` in the release's `[T, B, h, N, d]` layout: the same values either way (a
    square pool), but the gradient of tied maxima goes to the first in the release's order."""
    return erode(x.transpose(-1, -2)).transpose(-1, -2)


class SpikeDrivenSelfAttention(AttentionBase):
    """SDSA: `x + BN(proj(Q * LIF_0.5(sum_tokens K*V)))` less the `x`, which the block adds (membrane shortcut)."""

    def __init__(self, dim: int, num_heads: int, neurons: Neurons = "auto", dvs_mode: bool = False) -> None:
        super().__init__(dim, num_heads, {"q": 1, "k": 1, "v": 1}, MASK_THRESHOLD, neurons, membrane=True)
        self.dvs_mode = bool(dvs_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        q, k, v = self.branches(("q", "k", "v"), self.tokens(x), T)  # [T, B, C, N]
        if self.dvs_mode:
            k, v = (erode(s.reshape(T, B, C, H, W)).flatten(3) for s in (k, v))
        q, k, v = (self.split_heads(s) for s in (q, k, v))  # [T, B, h, d, N]
        kv = _erode_heads(k * v) if self.dvs_mode else k * v
        mask = self.attn_lif(kv.sum(-1, keepdim=True))  # [T, B, h, d, 1]: which channels pass, per head
        y = _erode_heads(q * mask) if self.dvs_mode else q * mask
        return self.project(y.flatten(2, 3), x.shape)

    def extra_repr(self) -> str:
        return f"SDSA, heads={self.num_heads}" + (", dvs_mode (eroded)" if self.dvs_mode else "")


class RepConvSelfAttention(nn.Module):
    """The Spike-driven Transformer V2's attention (its MS_Attention_RepConv_qkv_id), the branch a block adds:
    `S = head_lif(x)`; Q, K, V = LIF(BN(RepConv(S))); `A = attn_lif(Q (K^T V) * scale)` per head, with threshold
    0.5 and scale 0.125 whatever the head width; out = BN(RepConv(A)), no output neuron. q/k/v/proj are each
    `Sequential(RepConv, BatchNorm2d)` (`q_conv.0.body...`, `q_conv.1`), as released; every neuron per sample."""

    def __init__(self, dim: int, num_heads: int, neurons: Neurons = "auto", scale: float = SSA_SCALE,
                 attn_threshold: float = MASK_THRESHOLD) -> None:
        super().__init__()
        neurons = as_settings(neurons)
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.scale = dim, num_heads, float(scale)
        self.head_lif = neurons.make()
        for name in ("q", "k", "v"):
            self.add_module(f"{name}_conv", nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim)))
            self.add_module(f"{name}_lif", neurons.make())
        self.attn_lif = neurons.make(v_threshold=attn_threshold)
        self.proj_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes `[T, B, C, H, W]` -> `[T, B, heads, N, C/heads]` (heads take contiguous channel groups)."""
        T, B, C = x.shape[:3]
        return x.flatten(3).transpose(-1, -2).reshape(T, B, -1, self.num_heads, C // self.num_heads).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, T = x.shape, x.shape[0]
        s = fold_time(self.head_lif(x))
        q, k, v = (self.heads(getattr(self, f"{b}_lif")(unfold_time(getattr(self, f"{b}_conv")(s), T)))
                   for b in ("q", "k", "v"))
        attn = (q @ (k.transpose(-2, -1) @ v)) * self.scale  # [T, B, h, N, d]
        out = self.attn_lif(attn.transpose(3, 4).reshape(shape[0], shape[1], shape[2], -1)).reshape(shape)
        return unfold_time(self.proj_conv(fold_time(out)), T)

    def extra_repr(self) -> str:
        return f"RepConv SSA, heads={self.num_heads}, scale={self.scale:g}, no output neuron"
