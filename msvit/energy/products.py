"""The attention products that `msvit.energy` charges, per attention kind: which neuron's spikes drive each, and
its dense operation count per image and time step as a function of that neuron's elements per image and step.
The product's accumulates are that count times the neuron's firing rate, the rule of the papers (energy.md)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..layers import AttentionBase, SpikeDrivenSelfAttention, SpikingSelfAttention, TokenAttention

__all__ = ["attention_products"]

Product = tuple[str, nn.Module, Callable[[int], int]]  # (name, driving neuron, dense count from its elements)


def attention_products(attn: AttentionBase) -> list[Product]:
    """The products of `attn` (QKTA/MSSA, SSA, or the Spike-driven Transformer's SDSA)."""
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
    if isinstance(attn, SpikingSelfAttention):
        # K^T V and Q (K^T V): N x C x d each, d = C / heads; the spikes of K resp. Q count
        d = dim // heads
        return [(product, getattr(attn, f"{b}_lif"), lambda per: (per // dim) * dim * d)
                for b, product in (("k", "k_t_v"), ("q", "q_kv"))]
    raise TypeError(f"no energy rule for the attention {type(attn).__name__}")
