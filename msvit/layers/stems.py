"""The stems: the images (or event frames) to the first stage's spikes.

- `PatchEmbed`, the spiking patch embedding with a deformed shortcut (QKFormer's SPEDS) of MSViT and QKFormer, in
  its cifar, imagenet and dvs forms (`STEMS`: a stem and the downsampling between stages);
- `LayerStem`, the one-stage families' stems, one class for all three: a sequence of named layers, each a string
  of operations over conv 3x3 (no bias), batch norm, LIF and max-pool 3/2, then an optional position-embedding
  layer added to its own input. The order of the operations is what tells the families apart:
  - Spikformer's SPS: `CBL` layers with `P` after the neuron (pooling spikes), and a `CBL` embedding added to
    the pooled spikes (outputs count 0-2);
  - Spikingformer's tokenizer: `CB`, then `L[P]CB` layers (a real-valued output, no embedding);
  - the Spike-driven Transformer's MS_SPS: three `CBL[P]` layers, a `CB[P]` layer, and an `LCB` embedding added
    at membrane level;
- `ProtectedStem`, STMixer's IPSPS: five strided conv-BN layers with neurons between them (no max-pool), and an
  information-protection shortcut, a strided conv + BN on the raw image, concatenated to it (a real-valued output).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..neurons import Neurons, as_settings
from ._time import fold_time, unfold_time

__all__ = ["PatchEmbed", "STEMS", "batch_norm_of_copies", "StemLayer", "LayerStem", "pooled_layers", "ProtectedStem"]


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
                 shortcut_stride: int, neurons: Neurons = "auto") -> None:
        super().__init__()
        neurons = as_settings(neurons)
        self.names = [name for name, *_ in layers]
        self.pooled = [pool for *_, pool in layers]
        for name, c_in, c_out, _ in layers:
            self.add_module(f"{name}_conv", nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))
            self.add_module(f"{name}_bn", nn.BatchNorm2d(c_out))
            self.add_module(f"{name}_lif", neurons.make())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.shortcut_from = shortcut_from
        res_in = layers[0][1] if shortcut_from == -1 else layers[shortcut_from][2]
        self.proj_res_conv = nn.Conv2d(res_in, layers[-1][2], 1, shortcut_stride, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(layers[-1][2])
        self.proj_res_lif = neurons.make()

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
                y = bn(conv(fold_time(x)))
                y = unfold_time(self.pool(y) if pooled else y, T)
            x = getattr(self, f"{name}_lif")(y)
            if i == self.shortcut_from:
                tap = x
        shortcut = self.proj_res_bn(self.proj_res_conv(fold_time(tap)))
        return x + self.proj_res_lif(unfold_time(shortcut, T))


def cifar_stem(in_chans: int, width: int, neurons: Neurons) -> PatchEmbed:
    """32x32 -> 32x32: conv in->w/2, conv w/2->w; shortcut 1x1 from the first layer."""
    return PatchEmbed([("proj", in_chans, width // 2, False), ("proj1", width // 2, width, False)],
                      shortcut_from=0, shortcut_stride=1, neurons=neurons)


def cifar_downsample(c_in: int, c_out: int, neurons: Neurons) -> PatchEmbed:
    """Halves H and W: conv, then conv + max-pool; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj3", c_in, c_out, False), ("proj4", c_out, c_out, True)],
                      shortcut_from=-1, shortcut_stride=2, neurons=neurons)


def imagenet_stem(in_chans: int, width: int, neurons: Neurons) -> PatchEmbed:
    """224 -> 56: conv + pool, conv + pool, conv; shortcut 1x1/2 from the first layer."""
    return PatchEmbed([("proj", in_chans, width // 2, True), ("proj1", width // 2, width, True),
                       ("proj2", width, width, False)],
                      shortcut_from=0, shortcut_stride=2, neurons=neurons)


def imagenet_downsample(c_in: int, c_out: int, neurons: Neurons) -> PatchEmbed:
    """Halves H and W: conv + max-pool, conv; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj3", c_in, c_out, True), ("proj4", c_out, c_out, False)],
                      shortcut_from=-1, shortcut_stride=2, neurons=neurons)


def dvs_stem(in_chans: int, width: int, neurons: Neurons) -> PatchEmbed:
    """128 -> 16: four convs (the last three pooled); shortcut 1x1/4 from the second layer."""
    return PatchEmbed([("proj", in_chans, width // 8, False), ("proj1", width // 8, width // 4, True),
                       ("proj2", width // 4, width // 2, True), ("proj3", width // 2, width, True)],
                      shortcut_from=1, shortcut_stride=4, neurons=neurons)


def dvs_downsample(c_in: int, c_out: int, neurons: Neurons) -> PatchEmbed:
    """Halves H and W: conv, then conv + max-pool; shortcut 1x1/2 from the input."""
    return PatchEmbed([("proj", c_in, c_out, False), ("proj4", c_out, c_out, True)],
                      shortcut_from=-1, shortcut_stride=2, neurons=neurons)


STEMS = {"cifar": (cifar_stem, cifar_downsample),
         "imagenet": (imagenet_stem, imagenet_downsample),
         "dvs": (dvs_stem, dvs_downsample)}



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

    def __init__(self, layers: Sequence[StemLayer], embed: StemLayer | None = None,
                 neurons: Neurons = "auto") -> None:
        super().__init__()
        neurons = as_settings(neurons)
        self.layers = tuple(layers)
        self.embed = embed
        for layer in (*layers, *([embed] if embed else [])):
            if set(layer.ops) - _OPS or "C" not in layer.ops:
                raise ValueError(f"stem layer ops {layer.ops!r}: use C, B, L and P, and a C")
            self.add_module(layer.conv, nn.Conv2d(layer.c_in, layer.c_out, 3, 1, 1, bias=False))
            if "B" in layer.ops:
                self.add_module(layer.bn, nn.BatchNorm2d(layer.c_out))
            if "L" in layer.ops:
                self.add_module(layer.lif, neurons.make())
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


class ProtectedStem(nn.Module):
    """STMixer's IPSPS (the release's `SPSV2`) on `[T, B, C, H, W]` -> `[T, B, D, H / 2^d, W / 2^d]`, d =
    `downsample_times` (4 ImageNet, 2 CIFAR).

    Main path: `proj_conv` (3x3, no bias) and `proj_bn` on the input, then `proj{i}_lif`, `proj{i}_conv`, `proj{i}_bn`
    for i = 1..4; widths D/8, D/4, D/2, D, 7D/8 and strides 1, 2, 2, 2, 2 (d = 4) or 1, 1, 1, 2, 2 (d = 2); no
    max-pool; it ends on the batch norm. Shortcut: `short_conv` (kernel = stride = 2^d, no bias) and `short_bn` on the
    raw input, D/8 channels. Output: the shortcut's channels, then the main path's, both real-valued.

    A static image reaches the stem as one image expanded over T (stride 0 along T): both convolutions on it then
    run once per image (`once_per_image`, the default path), not on T identical copies (the reference path).
    """

    once_per_image = True
    NAMES = ("proj", "proj1", "proj2", "proj3", "proj4")

    def __init__(self, in_chans: int, dim: int, downsample_times: int = 4, neurons: Neurons = "auto") -> None:
        super().__init__()
        if downsample_times not in (2, 4):
            raise ValueError(f"downsample_times {downsample_times}: STMixer's stem downsamples 2 or 4 times")
        neurons = as_settings(neurons)
        widths = (in_chans, dim // 8, dim // 4, dim // 2, dim, dim // 8 * 7)
        strides = (1, 2, 2, 2, 2) if downsample_times == 4 else (1, 1, 1, 2, 2)
        self.reduction = 2 ** downsample_times
        for i, (name, stride) in enumerate(zip(self.NAMES, strides)):
            if i:
                self.add_module(f"{name}_lif", neurons.make())
            self.add_module(f"{name}_conv", nn.Conv2d(widths[i], widths[i + 1], 3, stride, 1, bias=False))
            self.add_module(f"{name}_bn", nn.BatchNorm2d(widths[i + 1]))
        self.short_conv = nn.Conv2d(in_chans, dim // 8, self.reduction, self.reduction, bias=False)
        self.short_bn = nn.BatchNorm2d(dim // 8)

    def _on_input(self, conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`bn(conv(x))` on the stem's input, once per image where it is one image over T."""
        T = x.shape[0]
        if self.once_per_image and x.stride(0) == 0 and not isinstance(bn, nn.SyncBatchNorm):
            y = batch_norm_of_copies(bn, conv(x[0]), T)
            return y.expand(T, *y.shape)
        return unfold_time(bn(conv(fold_time(x))), T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        short = self._on_input(self.short_conv, self.short_bn, x)
        y = self._on_input(self.proj_conv, self.proj_bn, x)
        for name in self.NAMES[1:]:
            spikes = getattr(self, f"{name}_lif")(y)
            y = unfold_time(getattr(self, f"{name}_bn")(getattr(self, f"{name}_conv")(fold_time(spikes))), T)
        return torch.cat([short, y], dim=2)
