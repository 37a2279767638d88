"""The attention products that `msvit.energy` charges, per attention kind: which neuron's spikes drive each, and
its dense operation count per image and time step as a function of that neuron's elements per image and step.
The product's accumulates are that count times the neuron's firing rate, the rule of the papers (energy.md). Also the
dense count of a convolution (`conv_flops`), which every rule starts from."""
from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from ..layers import (AttentionBase, RepConvSelfAttention, SpikeDrivenSelfAttention, SpikingSelfAttention,
                      TokenAttention)

__all__ = ["attention_products", "conv_flops"]


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


Product = tuple[str, nn.Module, Callable[[int], int]]  # (name, driving neuron, dense count from its elements)


def attention_products(attn: AttentionBase | RepConvSelfAttention) -> list[Product]:
    """The products of `attn` (QKTA/MSSA, SSA, the Spike-driven Transformer's SDSA, or V2's RepConv SSA)."""
    dim, heads = attn.dim, attn.num_heads
    if isinstance(attn, TokenAttention):
        # channel sums of Q (and P): one addition per spike, C x N per image and step
        products: list[Product] = [(f"{b}_channel_sum", getattr(attn, f"{b}_lif"), lambda per: per)
                                   for b in ("q", "p") if hasattr(attn, f"{b}_lif")]
        # mask product A * K: the mask [T, B, heads, 1, N] broadcast over the head's channels
        return products + [("mask_k", attn.attn_lif, lambda per: dim * (per // heads))]
    if isinstance(attn, SpikeDrivenSelfAttention):
        # sum over tokens of K * V: an addition where a K spike meets a V spike, N x C per image and step at
        # K's rate; the channel mask applied to Q: N x C at Q's rate (an upper bound of a select)
        return [("k_v_sum", attn.k_lif, lambda per: per), ("q_mask", attn.q_lif, lambda per: per)]
    if isinstance(attn, (SpikingSelfAttention, RepConvSelfAttention)):
        # K^T V and Q (K^T V): N x C x d each, d = C / heads; the spikes of K resp. Q count
        d = dim // heads
        return [(product, getattr(attn, f"{b}_lif"), lambda per: (per // dim) * dim * d)
                for b, product in (("k", "k_t_v"), ("q", "q_kv"))]
    raise TypeError(f"no energy rule for the attention {type(attn).__name__}")
