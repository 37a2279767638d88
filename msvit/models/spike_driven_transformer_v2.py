"""The Spike-driven Transformer V2 / Meta-SpikeFormer (Yao et al., ICLR 2024; BICLab/Spike-Driven-Transformer-V2,
`classification/models.py` at 35f245f): two conv stages, then two transformer stages, over widths [C0, C1, C2, C3].

    downsample1_1  7x7/2 conv (biased) + BN on the image, no neuron        3 -> C0/2     224 -> 112
    ConvBlock1_1   1 MS_ConvBlock (SepConv, then the 4x conv pair)         C0/2
    downsample1_2  BN(conv3x3/2(LIF(x)))                                   C0/2 -> C0    112 -> 56
    ConvBlock1_2   1 conv block;  downsample2 C0 -> C1 (28);  ConvBlock2_1, ConvBlock2_2
    downsample3    C1 -> C2 (14);  block3: 6 transformer blocks
    downsample4    C2 -> C3, stride 1 (14);  block4: 2 transformer blocks
    head           mean over tokens -> LIF -> Linear (and head_kd) -> mean over T

A transformer block adds to its real-valued stream the RepConv attention `LIF_0.5(Q (K^T V) * 0.125)` and a
Conv1d MLP (ratio 4), each starting with a neuron and ending with a batch norm. `kd=True` adds `head_kd`, a second
Linear on the same spikes: training returns both logits `(head, head_kd)` as the release does (the DeiT-style hard
distillation reads the second), evaluation their mean. T defaults to 1, the release's `self.T = 1`.

The attribute names are the release's, so its checkpoints (`{'model': ...}`) load strictly as they are.
`drop_path_rate` (0 by default) applies stochastic depth; the release builds DropPath but never applies it.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence, get_type_hints

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..errors import ConfigError
from ..layers import Block, MembraneMLP, MSConvBlock, MSDownsampling, RepConvSelfAttention
from ..neurons import TAU, NeuronSettings, check_neuron_arguments, reset_neurons, validate_backend
from ._network import SpikingNetwork
from ._timm import (argument_namer, build_registered, check_ranges, check_timm_arguments, classifier_head,
                    override_batch_norms, pool_features, pretrained_config, square_size)

__all__ = ["MetaSpikeFormer", "SDT_V2_ARCHS", "check_arguments", "constructor_parameters"]

# (name, stage index of its width, blocks); `_UNITS`: the release's units in order (stage 4's downsampling: stride 1)
_CONV_STAGES = (("ConvBlock1_1", 0, 1), ("ConvBlock1_2", 0, 1), ("ConvBlock2_1", 1, 1), ("ConvBlock2_2", 1, 1))
_BLOCKS = (("block3", 2, 6), ("block4", 3, 2))
# the units per stage: a backbone's feature map is each stage's output (strides 4, 8, 16 and 16)
_STAGES = (("downsample1_1", "ConvBlock1_1", "downsample1_2", "ConvBlock1_2"), ("downsample2", "ConvBlock2_1",
           "ConvBlock2_2"), ("downsample3", "block3"), ("downsample4", "block4"))
_UNITS = tuple(name for stage in _STAGES for name in stage)
_STRIDES = (4, 8, 16, 16)


class MetaSpikeFormer(SpikingNetwork):
    """Meta-SpikeFormer over `embed_dim` [C0, C1, C2, C3] (C0 even; C2 and C3 divisible by `num_heads`)."""

    head_reads_spikes = True  # msvit.energy: the head neuron's spikes reach the head (accumulates)

    def __init__(self, *, img_size: int | Sequence[int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 T: int = 1, embed_dim: Sequence[int] = (128, 256, 512, 640), num_heads: int = 8,
                 mlp_ratio: float = 4.0, kd: bool = False, drop_path_rate: float = 0.0, neuron_backend: str = "auto",
                 batch_coupled_ssa: bool = False, neuron: str = "lif", tau: float = TAU, v_threshold: float = 1.0,
                 surrogate: str = "sigmoid", surrogate_alpha: float = 4.0, surrogate_gamma: float = 2.5,
                 surrogate_region: float = 1.0, detach_reset: bool = True, drop_rate: float = 0.0,
                 global_pool: str = "avg", drop_block_rate: float | None = None, bn_momentum: float | None = None,
                 bn_eps: float | None = None) -> None:
        super().__init__()
        self.config = dict(img_size=img_size, in_chans=in_chans, num_classes=num_classes, T=T,
                           embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, kd=kd,
                           drop_path_rate=drop_path_rate or 0.0, neuron_backend=neuron_backend,
                           batch_coupled_ssa=batch_coupled_ssa, neuron=neuron, tau=tau, v_threshold=v_threshold,
                           surrogate=surrogate, surrogate_alpha=surrogate_alpha, surrogate_gamma=surrogate_gamma,
                           surrogate_region=surrogate_region, detach_reset=detach_reset, drop_rate=drop_rate or 0.0,
                           global_pool="avg" if global_pool is None else global_pool,
                           drop_block_rate=drop_block_rate, bn_momentum=bn_momentum, bn_eps=bn_eps)
        check_arguments(self.config)
        self.neurons = neurons = NeuronSettings.from_config(self.config)
        self.config["embed_dim"] = dims = [int(d) for d in embed_dim]
        self.config["img_size"] = self.img_size = square_size(img_size)
        self.T, self.num_classes, self.in_chans, self.kd = T, num_classes, in_chans, bool(kd)
        self.drop_rate, self.global_pool = self.config["drop_rate"], self.config["global_pool"]
        self.num_features = self.embed_dim = dims[3]
        self._build_stages(dims, neurons)
        self.num_stages = len(_STAGES)
        last_units = [f"{stage[-1]}.{len(getattr(self, stage[-1])) - 1}" for stage in _STAGES]
        self.feature_info = [dict(num_chs=dim, reduction=stride, module=unit)
                             for dim, stride, unit in zip(dims, _STRIDES, last_units)]
        self.lif = neurons.make()
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = classifier_head(self.num_features, num_classes)
        if self.kd:
            self.head_kd = classifier_head(self.num_features, num_classes)
        override_batch_norms(self, bn_momentum, bn_eps)

    def _build_stages(self, dims: Sequence[int], neurons: NeuronSettings) -> None:
        """The units in the release's order (so are the state_dict's keys and the forward)."""
        downsampling = {"downsample1_1": (self.in_chans, dims[0] // 2, 7, 2, 3),
                        "downsample1_2": (dims[0] // 2, dims[0]), "downsample2": (dims[0], dims[1]), "downsample3": (dims[1], dims[2]),
                        "downsample4": (dims[2], dims[3], 3, 1)}
        conv_widths = {name: dims[0] // 2 if name == "ConvBlock1_1" else dims[stage] for name, stage, _ in _CONV_STAGES}
        counts = {name: count for name, _, count in (*_CONV_STAGES, *_BLOCKS)}
        blocks = sum(n for *_, n in _BLOCKS)
        rates = iter(torch.linspace(0, self.config["drop_path_rate"], blocks, device="cpu").tolist())
        for name in _UNITS:
            if name in downsampling:
                unit = MSDownsampling(*downsampling[name], first_layer=name == "downsample1_1", neurons=neurons)
            elif name in conv_widths:
                unit = nn.ModuleList([MSConvBlock(conv_widths[name], neurons) for _ in range(counts[name])])
            else:
                dim = dims[dict((n, s) for n, s, _ in _BLOCKS)[name]]
                unit = nn.ModuleList([self._block(dim, next(rates), neurons) for _ in range(counts[name])])
            self.add_module(name, unit)

    def _block(self, dim: int, drop_path: float, neurons: NeuronSettings) -> Block:
        cfg = self.config
        attn = RepConvSelfAttention(dim, cfg["num_heads"], neurons)
        mlp = MembraneMLP(dim, int(dim * cfg["mlp_ratio"]), neurons, tokens=True)
        return Block(attn, dim, cfg["mlp_ratio"], drop_path, neurons, mlp=mlp)

    def units(self) -> list[nn.Module]:
        return [unit for group in self.feature_groups() for unit in group]

    def feature_groups(self) -> list[list[nn.Module]]:
        """One feature map per stage: the stage's downsampling and its conv or transformer blocks, in order."""
        groups = []
        for stage in _STAGES[:self.num_stages]:
            units = [getattr(self, name) for name in stage]
            groups.append([u for unit in units for u in (unit if isinstance(unit, nn.ModuleList) else [unit])])
        return groups

    def keep_feature_groups(self, count: int) -> None:
        """Keep the first `count` stages (timm's `prune_intermediate_layers`)."""
        for stage in _STAGES[count:self.num_stages]:
            for name in stage:
                delattr(self, name)
        self.num_stages = count

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm (layer-wise lr decay): the stem conv, then each downsampling and block in
        order (coarse: each named unit), the heads last."""
        order = []
        for name in (name for name in _UNITS[1:] if hasattr(self, name)):
            unit = getattr(self, name)
            if isinstance(unit, nn.ModuleList) and not coarse:
                order += [rf"^{name}\.{i}\." for i in range(len(unit))]
            else:
                order.append(rf"^{name}\.")
        return dict(stem=r"^downsample1_1\.", blocks=[(pattern, (i,)) for i, pattern in enumerate(order)])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.kd:
            self.head_kd = classifier_head(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Any:
        """`[B, T, C, H, W]` features -> the mean over tokens per step, the head neuron, dropout, the head, the mean
        over time (`[B, num_classes]`; `per_step_logits`: `[B, T, num_classes]`). With `kd`: in training the pair
        (head, head_kd), in evaluation their mean. `pre_logits`: the head neuron's spikes averaged over time."""
        pooled = pool_features(x, self.global_pool, per_step=True)  # [B, T, ...]
        try:
            spikes = self.lif(pooled.transpose(0, 1)).transpose(0, 1)
        finally:
            reset_neurons(self.lif)
        spikes = self.head_drop(spikes)
        per_step = self.per_step_logits or not self.global_pool
        if pre_logits:
            return spikes if per_step else spikes.mean(1)
        heads = [self.head] + ([self.head_kd] if self.kd else [])
        inputs = spikes.movedim(2, -1) if not self.global_pool and self.num_classes > 0 else spikes
        logits = [head(inputs) if per_step else head(inputs).mean(1) for head in heads]
        if not self.kd:
            return logits[0]
        return tuple(logits) if self.training else (logits[0] + logits[1]) / 2


def constructor_parameters() -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The keyword arguments of `MetaSpikeFormer` and their type hints."""
    params = {name: p for name, p in inspect.signature(MetaSpikeFormer.__init__).parameters.items() if name != "self"}
    return params, get_type_hints(MetaSpikeFormer.__init__)


def check_arguments(args: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
    """Check a complete set of `MetaSpikeFormer` arguments; raise ConfigError (`labels` as in the other checks)."""
    named = argument_namer(args, labels)
    args = {**args, "img_size": square_size(args["img_size"], named("img_size"))}
    check_timm_arguments(args, named)
    check_ranges(args, named, dict(img_size=1, in_chans=1, T=1, num_heads=1, num_classes=0))
    dims = args["embed_dim"]
    if not (isinstance(dims, Sequence) and not isinstance(dims, str) and len(dims) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise ConfigError(f"{named('embed_dim')} must be four positive widths [C0, C1, C2, C3], one per stage")
    if dims[0] % 2:
        raise ConfigError(f"{named('embed_dim')}: C0 must be even (the first conv stage is C0/2 wide)")
    if dims[2] % args["num_heads"] or dims[3] % args["num_heads"]:
        raise ConfigError(f"{named('embed_dim')}: the transformer stages' widths C2 and C3 must be multiples of "
                          f"{named('num_heads')}")
    if args["batch_coupled_ssa"]:
        raise ConfigError(f"{named('batch_coupled_ssa')}: none of the baseline releases couples the samples of a "
                          f"batch; set batch_coupled_ssa false (the baselines' recipes do)")
    check_neuron_arguments(args, named)
    validate_backend(args["neuron_backend"])



_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=1, num_heads=8)
SDT_V2_ARCHS: dict[str, dict[str, Any]] = {
    "metaspikformer_8_256": {**_IMAGENET, "embed_dim": [64, 128, 256, 360]},   # the paper's 15M, not in models.py
    "metaspikformer_8_384": {**_IMAGENET, "embed_dim": [96, 192, 384, 480]},
    "metaspikformer_8_512": {**_IMAGENET, "embed_dim": [128, 256, 512, 640]},
    "metaspikformer_8_768": {**_IMAGENET, "embed_dim": [192, 384, 768, 960]},
}
# the release evaluates at Resize 256, CenterCrop 224 (crop_pct 0.875), bicubic, ImageNet statistics
default_cfgs = generate_default_cfgs({name: pretrained_config(arch, "downsample1_1.encode_conv", 0.875)
                                      for name, arch in SDT_V2_ARCHS.items()})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaSpikeFormer:
    return build_registered(MetaSpikeFormer, variant, SDT_V2_ARCHS[variant], pretrained, backbone=True, **kwargs)


@register_model
def metaspikformer_8_256(pretrained: bool = False, **kwargs: Any) -> MetaSpikeFormer:
    """Meta-SpikeFormer, widths [64, 128, 256, 360]: the paper's 15.1M model (74.10% at T=4 with KD)."""
    return _create("metaspikformer_8_256", pretrained, **kwargs)


@register_model
def metaspikformer_8_384(pretrained: bool = False, **kwargs: Any) -> MetaSpikeFormer:
    """Meta-SpikeFormer, widths [96, 192, 384, 480]: the paper's 31.3M model (77.20% at T=4 with KD)."""
    return _create("metaspikformer_8_384", pretrained, **kwargs)


@register_model
def metaspikformer_8_512(pretrained: bool = False, **kwargs: Any) -> MetaSpikeFormer:
    """Meta-SpikeFormer, widths [128, 256, 512, 640]: the paper's 55.4M model (80.00% at T=4 with KD; the released
    checkpoint "55M")."""
    return _create("metaspikformer_8_512", pretrained, **kwargs)


@register_model
def metaspikformer_8_768(pretrained: bool = False, **kwargs: Any) -> MetaSpikeFormer:
    """Meta-SpikeFormer, widths [192, 384, 768, 960] (123.7M; no published result)."""
    return _create("metaspikformer_8_768", pretrained, **kwargs)
