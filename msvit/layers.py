"""Building blocks of the hierarchical spiking transformers (MSViT and QKFormer).

Every module takes and returns `[T, B, C, H, W]`. Convolutions and batch norms
run on the `[T*B, ...]` view; neurons integrate along the leading T axis, except
the output neuron of a batch-coupled SSA, which integrates along T*B as the
authors' release does (see `AttentionBase`).
Attribute names follow the authors' releases (`proj_conv`, `q_bn`, ...), so
their checkpoints load with few renames (see `msvit.checkpoint`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .neurons import LIF, TAU

__all__ = ["PatchEmbed", "AttentionBase", "TokenAttention", "SpikingSelfAttention", "MLP", "Block", "DropPath",
           "SSA_SCALE", "batch_norm_of_copies"]

# SSA multiplies Q(K^T V) by this constant in both releases, whatever the head width (the default `scale`).
SSA_SCALE = 0.125


def _bt(x: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] -> [T*B, ...]"""
    return x.flatten(0, 1)


def _tb(x: torch.Tensor, T: int) -> torch.Tensor:
    """[T*B, ...] -> [T, B, ...]"""
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


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


def batch_norm_of_copies(bn: nn.BatchNorm2d, y: torch.Tensor, copies: int) -> torch.Tensor:
    """`bn` of `copies` identical copies of `y`, computed on `y` alone: the copies' batch mean and (biased)
    variance are `y`'s, so the output is the same; the running variance takes the unbiased variance with the
    copies' count n, var * n / (n - 1), as `bn` on the copies would."""
    if not (bn.training and bn.track_running_stats):
        return bn(y)
    # normalised output and the batch's mean and 1 / sqrt(var + eps), in float32 whatever y's dtype, in one pass
    out, mean, invstd = torch.native_batch_norm(y, bn.weight, bn.bias, None, None, True, 0.0, bn.eps)
    with torch.no_grad():
        n = copies * y.numel() // y.shape[1]
        bn.num_batches_tracked.add_(1)
        weight = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean, weight)
        bn.running_var.lerp_((invstd.pow(-2) - bn.eps) * (n / (n - 1)), weight)
    return out


class PatchEmbed(nn.Module):
    """Spiking patch embedding with a deformed shortcut (QKFormer's SPEDS), configured by layer specs.

    `layers` is a sequence of `(name, in_channels, out_channels, max_pool)`: each is a bias-free
    3x3 conv `{name}_conv`, a batch norm `{name}_bn`, an optional 3x3/2 max-pool and a LIF.
    The shortcut is a bias-free 1x1 conv `proj_res_conv` with stride `shortcut_stride`, a batch norm
    and a LIF, applied to the output of layer `shortcut_from` (-1: the module input). The module
    returns main path + shortcut, two spike tensors, so its output holds counts 0, 1 or 2.

    A static image reaches the stem as one image expanded over T (stride 0 along T): its first
    convolution, batch norm and pool then run once per image (`once_per_image`, the default path) rather
    than on T identical copies (the reference path); the neuron still integrates all T steps.
    """

    once_per_image = True

    def __init__(self, layers: Sequence[tuple[str, int, int, bool]], shortcut_from: int,
                 shortcut_stride: int, neuron_backend: str = "auto") -> None:
        super().__init__()
        self.names = [name for name, *_ in layers]
        self.pooled = [pool for *_, pool in layers]
        for name, c_in, c_out, _ in layers:
            self.add_module(f"{name}_conv", nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))
            self.add_module(f"{name}_bn", nn.BatchNorm2d(c_out))
            self.add_module(f"{name}_lif", LIF(backend=neuron_backend))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.shortcut_from = shortcut_from
        res_in = layers[0][1] if shortcut_from == -1 else layers[shortcut_from][2]
        self.proj_res_conv = nn.Conv2d(res_in, layers[-1][2], 1, shortcut_stride, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(layers[-1][2])
        self.proj_res_lif = LIF(backend=neuron_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        tap = x
        for i, (name, pooled) in enumerate(zip(self.names, self.pooled)):
            conv, bn = getattr(self, f"{name}_conv"), getattr(self, f"{name}_bn")
            # the same image at every step (SyncBatchNorm, which reduces across processes, takes the copies)
            if i == 0 and self.once_per_image and x.stride(0) == 0 and not isinstance(bn, nn.SyncBatchNorm):
                y = batch_norm_of_copies(bn, conv(x[0]), T)
                y = self.pool(y) if pooled else y
                y = y.expand(T, *y.shape)
            else:
                y = bn(conv(_bt(x)))
                y = _tb(self.pool(y) if pooled else y, T)
            x = getattr(self, f"{name}_lif")(y)
            if i == self.shortcut_from:
                tap = x
        shortcut = self.proj_res_bn(self.proj_res_conv(_bt(tap)))
        return x + self.proj_res_lif(_tb(shortcut, T))


def cifar_stem(in_chans: int, width: int, backend: str) -> PatchEmbed:
    """32x32 -> 32x32: conv in->w/2, conv w/2->w; shortcut 1x1 from the first layer."""
    return PatchEmbed([("proj", in_chans, width // 2, False), ("proj1", width // 2, width, False)],
                      shortcut_from=0, shortcut_stride=1, neuron_backend=backend)


def cifar_downsample(c_in: int, c_out: int, backend: str) -> PatchEmbed:
    """Halves H and W: conv, then conv + max-pool; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj3", c_in, c_out, False), ("proj4", c_out, c_out, True)],
                      shortcut_from=-1, shortcut_stride=2, neuron_backend=backend)


def imagenet_stem(in_chans: int, width: int, backend: str) -> PatchEmbed:
    """224 -> 56: conv + pool, conv + pool, conv; shortcut 1x1/2 from the first layer."""
    return PatchEmbed([("proj", in_chans, width // 2, True), ("proj1", width // 2, width, True),
                       ("proj2", width, width, False)],
                      shortcut_from=0, shortcut_stride=2, neuron_backend=backend)


def imagenet_downsample(c_in: int, c_out: int, backend: str) -> PatchEmbed:
    """Halves H and W: conv + max-pool, conv; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj3", c_in, c_out, True), ("proj4", c_out, c_out, False)],
                      shortcut_from=-1, shortcut_stride=2, neuron_backend=backend)


def dvs_stem(in_chans: int, width: int, backend: str) -> PatchEmbed:
    """128 -> 16: four convs (the last three pooled); shortcut 1x1/4 from the second layer."""
    return PatchEmbed([("proj", in_chans, width // 8, False), ("proj1", width // 8, width // 4, True),
                       ("proj2", width // 4, width // 2, True), ("proj3", width // 2, width, True)],
                      shortcut_from=1, shortcut_stride=4, neuron_backend=backend)


def dvs_downsample(c_in: int, c_out: int, backend: str) -> PatchEmbed:
    """Halves H and W: conv, then conv + max-pool; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj", c_in, c_out, False), ("proj4", c_out, c_out, True)],
                      shortcut_from=-1, shortcut_stride=2, neuron_backend=backend)


STEMS = {"cifar": (cifar_stem, cifar_downsample),
         "imagenet": (imagenet_stem, imagenet_downsample),
         "dvs": (dvs_stem, dvs_downsample)}


class AttentionBase(nn.Module):
    """Shared parts: the spiking branches named `{b}_conv/{b}_bn/{b}_lif` and the output projection.

    `batch_coupled` makes the output neuron `proj_lif` integrate along the flattened `[T*B, C, N]` sequence,
    time-major then sample, as the authors' SSA does (QKFormer issue #14): its membrane carries from each
    sample to the next one of the batch. Otherwise it runs per sample on `[T, B, C, N]`, like every other neuron.

    `membrane=True` is the pre-activation form of Spikingformer and the Spike-driven Transformer, whose
    residual stream carries real values: a neuron `shortcut_lif` turns the input into spikes first, and the
    output is the projection's batch norm, with no neuron. `tau` is every neuron's time constant.
    """

    def __init__(self, dim: int, num_heads: int, branches: dict[str, int], attn_threshold: float,
                 backend: str, batch_coupled: bool = False, qkv_bias: bool = False, membrane: bool = False,
                 tau: float = TAU) -> None:
        super().__init__()
        self.batch_coupled = bool(batch_coupled)
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.membrane = dim, num_heads, membrane
        self.branch_names = tuple(branches)
        if membrane:
            self.shortcut_lif = LIF(backend=backend, tau=tau)
        for name, kernel in branches.items():
            self.add_module(f"{name}_conv", nn.Conv1d(dim, dim, kernel, padding=kernel // 2, bias=qkv_bias))
            self.add_module(f"{name}_bn", nn.BatchNorm1d(dim))
            self.add_module(f"{name}_lif", LIF(backend=backend, tau=tau))
        self.attn_lif = LIF(v_threshold=attn_threshold, backend=backend, tau=tau)
        self.proj_conv = nn.Conv1d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm1d(dim)
        if not membrane:
            self.proj_lif = LIF(backend=backend, tau=tau)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The input `[T, B, C, H, W]` as the branches' tokens `[T*B, C, N]` (spikes, in the membrane form)."""
        return _bt((self.shortcut_lif(x) if self.membrane else x).flatten(3))

    # False: one Conv1d call per branch (the straightforward reference path)
    fuse_projections = True

    def branch(self, name: str, tokens: torch.Tensor, T: int) -> torch.Tensor:
        """Spikes `[T, B, C, N]` of branch `name` on `tokens` `[T*B, C, N]`."""
        y = getattr(self, f"{name}_bn")(getattr(self, f"{name}_conv")(tokens))
        return getattr(self, f"{name}_lif")(_tb(y, T))

    def branches(self, names: Sequence[str], tokens: torch.Tensor, T: int) -> list[torch.Tensor]:
        """Spikes of several 1x1 branches over the same tokens. Fused, their convolutions run as one
        Conv1d with the weights stacked (one pass over the input instead of one per branch); the
        parameters stay separate, so state_dicts are unchanged."""
        if not self.fuse_projections:
            return [self.branch(name, tokens, T) for name in names]
        convs = [getattr(self, f"{name}_conv") for name in names]
        bias = torch.cat([conv.bias for conv in convs]) if convs[0].bias is not None else None
        stacked = nn.functional.conv1d(tokens, torch.cat([conv.weight for conv in convs]), bias).split(self.dim, dim=1)
        return [getattr(self, f"{name}_lif")(_tb(getattr(self, f"{name}_bn")(y), T))
                for name, y in zip(names, stacked)]

    def project(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Output projection of `[T, B, C, N]` back to `shape` `[T, B, C, H, W]`."""
        y = self.proj_bn(self.proj_conv(_bt(x)))  # [T*B, C, N], sample b of step t at row t*B + b
        if self.membrane:
            return y.reshape(shape)
        return self.proj_lif(y if self.batch_coupled else _tb(y, shape[0])).reshape(shape)

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
                 neuron_backend: str = "auto") -> None:
        branches = {"q": 1, "k": 1, **({"p": 3} if multi_scale else {})}
        super().__init__(dim, num_heads, branches, attn_threshold, neuron_backend)
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
                 neuron_backend: str = "auto", batch_coupled: bool = True, scale: float = SSA_SCALE,
                 qkv_bias: bool = False, membrane: bool = False, tau: float = TAU) -> None:
        super().__init__(dim, num_heads, {"q": 1, "k": 1, "v": 1}, attn_threshold, neuron_backend, batch_coupled,
                         qkv_bias, membrane, tau)
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


class MLP(nn.Module):
    """1x1 Conv2d (with bias), BN, LIF, twice: C -> ratio*C -> C."""

    def __init__(self, dim: int, hidden: int, neuron_backend: str = "auto", tau: float = TAU) -> None:
        super().__init__()
        self.fc1_conv = nn.Conv2d(dim, hidden, 1)
        self.fc1_bn = nn.BatchNorm2d(hidden)
        self.fc1_lif = LIF(backend=neuron_backend, tau=tau)
        self.fc2_conv = nn.Conv2d(hidden, dim, 1)
        self.fc2_bn = nn.BatchNorm2d(dim)
        self.fc2_lif = LIF(backend=neuron_backend, tau=tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = self.fc1_lif(_tb(self.fc1_bn(self.fc1_conv(_bt(x))), T))
        return self.fc2_lif(_tb(self.fc2_bn(self.fc2_conv(_bt(x))), T))


class Block(nn.Module):
    """x + attn(x), then x + mlp(x). With the spiking `MLP` (the default) both branches end in a neuron, so x
    carries small counts; a given `mlp` (the membrane-shortcut families') may make x real-valued."""

    def __init__(self, attn: nn.Module, dim: int, mlp_ratio: float, drop_path: float = 0.0,
                 neuron_backend: str = "auto", mlp: nn.Module | None = None, tau: float = TAU) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron_backend, tau) if mlp is None else mlp
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))
