"""MSViT (Hua et al., IJCAI 2025): QKFormer's hierarchical spiking transformer with multi-scale spiking attention
(MSSA) as its token attention, registered with timm. `SpikingTransformer` is the one hierarchical class; QKFormer
(`qkformer.py`) is the same class with QK token attention and its own widths.

After `import msvit`, `timm.create_model('msvit_10_384', T=4, num_classes=1000)` builds a model.
Smaller members of a family come from `embed_dim`, `depths`, `num_heads` and `img_size`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ..data.transforms import eval_crop_pct
from ..errors import ConfigError
from ..layers import STEMS, Block, SpikingSelfAttention, TokenAttention
from ..neurons import TAU, NeuronSettings, check_neuron_arguments, validate_backend
from ._network import SpikingNetwork
from ._timm import (argument_namer, build_registered, check_timm_arguments, classifier_head,
                    override_batch_norms, pretrained_config, square_size, stage_group_matcher, unwrapped)

__all__ = ["SpikingTransformer", "MSVIT_ARCHS", "check_arguments", "create_hierarchical", "hierarchical_configs",
           "CIFAR_SHAPE", "IMAGENET_SHAPE", "DVS_SHAPE"]

TOKEN_ATTENTIONS = ("mssa", "qkta")
# the lowest value of the integer arguments
_MINIMUM = {"img_size": 1, "in_chans": 1, "T": 1, "embed_dim": 1, "num_heads": 1, "num_classes": 0}


def _embed_dim_step(ratios: Sequence[float], heads: int) -> int | None:
    """The smallest embed_dim whose stage widths (embed_dim x ratio, truncated) are all multiples of `heads`."""
    return next((m for m in range(1, 1 << 16)
                 if all(int(m * r) >= 1 and int(m * r) % heads == 0 for r in ratios)), None)


def check_arguments(args: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
    """Check a complete set of SpikingTransformer arguments (choices, ranges, stage widths divisible by
    num_heads, the neuron backend, timm's extra arguments); raise ConfigError. `labels` name the arguments the
    user set, as they spelt them ('model_kwargs.embed_dim'); the others are reported as the model's defaults.
    Without `labels` every argument goes by its own name. timm's arguments may be None or absent (not set)."""
    named = argument_namer(args, labels)
    args = {**args, "img_size": square_size(args["img_size"], named("img_size"))}
    check_timm_arguments(args, named)

    if args["stem"] not in STEMS:
        raise ConfigError(f"{named('stem')} is not a stem; choose one of {', '.join(STEMS)}")
    if args["token_attention"] not in TOKEN_ATTENTIONS:
        raise ConfigError(f"{named('token_attention')} is not a token attention; choose one of "
                          f"{', '.join(TOKEN_ATTENTIONS)}")
    for key, low in _MINIMUM.items():
        if args[key] < low:
            raise ConfigError(f"{named(key)} must be {low} or more")
    for key in ("mlp_ratio", "attn_threshold"):
        if args[key] <= 0:
            raise ConfigError(f"{named(key)} must be positive")
    if not 0 <= (args["drop_path_rate"] or 0.0) < 1:
        raise ConfigError(f"{named('drop_path_rate')} must be at least 0 and below 1")
    depths, ratios, heads = args["depths"], args["width_ratios"], args["num_heads"]
    if len(depths) != len(ratios) or len(depths) < 2:
        raise ConfigError(f"{named('depths')} and {named('width_ratios')} must have the same length, at least 2")
    if min(depths) < 0 or min(ratios) <= 0:
        raise ConfigError(f"{named('depths')} must be 0 or more and {named('width_ratios')} positive")
    widths = [int(args["embed_dim"] * r) for r in ratios]
    if any(w < 1 or w % heads for w in widths):
        step = _embed_dim_step(ratios, heads)
        gcd = math.gcd(*widths)
        fixes = ([f"an embed_dim that is a multiple of {step}"] if step else []) + (
            [f"a num_heads that divides {gcd}"] if gcd else [])
        raise ConfigError(f"{named('embed_dim')} gives stage widths {', '.join(map(str, widths))}, not all "
                          f"divisible by {named('num_heads')}; use {', or '.join(fixes)}")
    check_neuron_arguments(args, named)
    validate_backend(args["neuron_backend"])


class SpikingTransformer(SpikingNetwork):
    """Stem, then stages of spiking blocks separated by downsampling patch embeddings, then a linear head.

    All stages but the last use token attention (`token_attention='mssa'` for MSViT, `'qkta'` for
    QKFormer); the last uses spiking self-attention. Stage widths are `embed_dim * width_ratios`.
    Input: `[B, C, H, W]` images (repeated over `T` time steps) or `[B, T, C, H, W]` event frames.
    Every forward starts and ends with all neurons at rest, so calls are independent.

    timm's contract (`msvit.models._timm`): `drop_rate` (dropout before the head), `global_pool`, `bn_momentum`
    and `bn_eps`, `drop_block_rate` (None or 0 only) as arguments, None meaning "not set"; `forward_features`;
    as a backbone, one feature map per stage (`feature_info`, `forward_intermediates`, features_only=True).

    `batch_coupled_ssa=True` (the default) reproduces the authors' release, whose SSA output neuron
    integrates along the flattened T*B sequence, so a sample's output depends on the other samples of its
    batch (QKFormer issue #14); `False` runs that neuron per sample, like every other neuron.
    """

    def __init__(self, *, stem: str, img_size: int | Sequence[int] = 224, in_chans: int = 3,
                 num_classes: int = 1000, T: int = 4, embed_dim: int = 384, depths: Sequence[int] = (1, 2, 7),
                 num_heads: int = 6, mlp_ratio: float = 4.0,
                 width_ratios: Sequence[float] = (0.5, 0.5, 1.0), token_attention: str = "mssa",
                 attn_threshold: float = 1.0, drop_path_rate: float = 0.0,
                 neuron_backend: str = "auto", batch_coupled_ssa: bool = True,
                 neuron: str = "lif", tau: float = TAU, v_threshold: float = 1.0, surrogate: str = "sigmoid",
                 surrogate_alpha: float = 4.0, surrogate_gamma: float = 2.5, surrogate_region: float = 1.0,
                 detach_reset: bool = True,
                 drop_rate: float = 0.0, global_pool: str = "avg", drop_block_rate: float | None = None,
                 bn_momentum: float | None = None, bn_eps: float | None = None) -> None:
        super().__init__()
        drop_path_rate = 0.0 if drop_path_rate is None else drop_path_rate
        drop_rate = 0.0 if drop_rate is None else drop_rate
        global_pool = "avg" if global_pool is None else global_pool
        self.config = dict(stem=stem, img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                           T=T, embed_dim=embed_dim, depths=tuple(depths), num_heads=num_heads,
                           mlp_ratio=mlp_ratio, width_ratios=tuple(width_ratios),
                           token_attention=token_attention, attn_threshold=attn_threshold,
                           drop_path_rate=drop_path_rate, neuron_backend=neuron_backend,
                           batch_coupled_ssa=bool(batch_coupled_ssa), neuron=neuron, tau=tau,
                           v_threshold=v_threshold, surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                           surrogate_gamma=surrogate_gamma, surrogate_region=surrogate_region,
                           detach_reset=detach_reset, drop_rate=drop_rate,
                           global_pool=global_pool, drop_block_rate=drop_block_rate, bn_momentum=bn_momentum,
                           bn_eps=bn_eps)
        check_arguments(self.config)
        self.config["img_size"] = img_size = square_size(img_size)
        self.T, self.num_classes, self.img_size, self.in_chans = T, num_classes, img_size, in_chans
        self.drop_rate, self.global_pool = drop_rate, global_pool
        self.dims = [int(embed_dim * r) for r in width_ratios]
        self.num_features = self.dims[-1]
        self.neurons = NeuronSettings.from_config(self.config)
        self._build_stages()
        self.num_stages = len(depths)
        self.head_drop = nn.Dropout(drop_rate)  # no parameters: state_dicts are the release's
        self.head = classifier_head(self.num_features, num_classes)
        override_batch_norms(self, bn_momentum, bn_eps)

    def _build_stages(self) -> None:
        """`patch_embed{i}` and `stage{i}` per stage, and `feature_info`."""
        cfg, neurons = self.config, self.neurons
        depths, heads, threshold = cfg["depths"], cfg["num_heads"], cfg["attn_threshold"]
        make_stem, make_downsample = STEMS[cfg["stem"]]
        # on the CPU: also under a meta device
        drop_rates = torch.linspace(0, cfg["drop_path_rate"], sum(depths), device="cpu").tolist()
        self.feature_info, reduction = [], 1
        for i, (dim, depth) in enumerate(zip(self.dims, depths)):
            embed = (make_stem(self.in_chans, dim, neurons) if i == 0
                     else make_downsample(self.dims[i - 1], dim, neurons))
            reduction *= 2 ** sum(embed.pooled)  # each max-pool 3/2 halves H and W
            self.feature_info.append(dict(num_chs=dim, reduction=reduction,
                                          module=f"stage{i + 1}.{depth - 1}" if depth else f"patch_embed{i + 1}"))
            last = i == len(depths) - 1
            blocks = []
            for j in range(depth):
                if last:
                    attn = SpikingSelfAttention(dim, heads, threshold, neurons, cfg["batch_coupled_ssa"])
                else:
                    attn = TokenAttention(dim, heads, threshold, cfg["token_attention"] == "mssa", neurons)
                blocks.append(Block(attn, dim, cfg["mlp_ratio"], drop_rates[sum(depths[:i]) + j], neurons))
            self.add_module(f"patch_embed{i + 1}", embed)
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))

    def units(self) -> list[nn.Module]:
        """Per stage, its patch embedding then its blocks."""
        return [unit for group in self.feature_groups() for unit in group]

    def feature_groups(self) -> list[list[nn.Module]]:
        """One feature map per stage: its patch embedding and its blocks."""
        return [[getattr(self, f"patch_embed{i}"), *getattr(self, f"stage{i}")] for i in range(1, self.num_stages + 1)]

    def keep_feature_groups(self, count: int) -> None:
        """Keep the first `count` stages (timm's `prune_intermediate_layers`)."""
        for i in range(count + 1, self.num_stages + 1):
            delattr(self, f"patch_embed{i}")
            delattr(self, f"stage{i}")
        self.num_stages, self.dims = count, self.dims[:count]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm (layer-wise lr decay): the stem, then per stage its downsampling
        embedding and blocks (coarse: one group per stage); the head last."""
        return stage_group_matcher(coarse)


CIFAR_SHAPE = dict(stem="cifar", img_size=32, in_chans=3, num_classes=10, T=4, embed_dim=384,
                   depths=(1, 1, 2), num_heads=8, mlp_ratio=4.0)
IMAGENET_SHAPE = dict(stem="imagenet", img_size=224, in_chans=3, num_classes=1000, T=4, depths=(1, 2, 7))
# The shapes of the hierarchical models per input, shared with QKFormer (`qkformer.py`).
# DVS defaults are the DVS128 Gesture model (11 classes, mlp 4); CIFAR10-DVS uses num_classes=10, mlp_ratio=1.
DVS_SHAPE = dict(stem="dvs", img_size=128, in_chans=2, num_classes=11, T=16, embed_dim=256, depths=(1, 1),
                 num_heads=16, mlp_ratio=4.0, width_ratios=(0.5, 1.0), attn_threshold=0.5)


def hierarchical_configs(archs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """timm's default configs of `SpikingTransformer` models (a family module's `default_cfgs`)."""
    return generate_default_cfgs({name: pretrained_config(arch, "patch_embed1.proj_conv",
                                                          cifar_interpolation="bilinear")
                                  for name, arch in archs.items()})


def create_hierarchical(variant: str, arch: Mapping[str, Any], pretrained: bool, **kwargs: Any) -> nn.Module:
    """Build the registered `SpikingTransformer` model `variant` of architecture `arch` (with features_only=True,
    timm's FeatureGetterNet over it: one feature map per stage)."""
    model = build_registered(SpikingTransformer, variant, arch, pretrained, backbone=True, **kwargs)
    if arch["stem"] == "imagenet":  # the releases' evaluation crop: the whole short side above 224
        net = unwrapped(model)
        net.pretrained_cfg["crop_pct"] = model.pretrained_cfg["crop_pct"] = eval_crop_pct(net.img_size)
    return model


_MSVIT = dict(token_attention="mssa", attn_threshold=1.0)   # the release drops the 0.5 it is given
_WIDTHS = dict(width_ratios=(0.5, 0.5, 1.0))  # the second downsample keeps the width

MSVIT_ARCHS: dict[str, dict[str, Any]] = {
    "msvit_cifar_4_384": {**CIFAR_SHAPE, **_MSVIT, **_WIDTHS},
    "msvit_10_384": {**IMAGENET_SHAPE, **_MSVIT, **_WIDTHS, "embed_dim": 384, "num_heads": 6},
    "msvit_10_512": {**IMAGENET_SHAPE, **_MSVIT, **_WIDTHS, "embed_dim": 512, "num_heads": 8},
    "msvit_10_768": {**IMAGENET_SHAPE, **_MSVIT, **_WIDTHS, "embed_dim": 768, "num_heads": 12},
    "msvit_dvs_2_256": {**DVS_SHAPE, "token_attention": "mssa"},
}

default_cfgs = hierarchical_configs(MSVIT_ARCHS)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SpikingTransformer:
    return create_hierarchical(variant, MSVIT_ARCHS[variant], pretrained, **kwargs)


@register_model
def msvit_cifar_4_384(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """MSViT 4-384 for CIFAR-10/100 (7,558,762 parameters at 10 classes)."""
    return _create("msvit_cifar_4_384", pretrained, **kwargs)


@register_model
def msvit_10_384(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """MSViT-10-384 for ImageNet-1K (17.69M parameters, 80.09% published)."""
    return _create("msvit_10_384", pretrained, **kwargs)


@register_model
def msvit_10_512(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """MSViT-10-512 for ImageNet-1K (31.23M parameters, 82.96% published)."""
    return _create("msvit_10_512", pretrained, **kwargs)


@register_model
def msvit_10_768(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """MSViT-10-768 for ImageNet-1K (69.80M parameters, 85.06% published)."""
    return _create("msvit_10_768", pretrained, **kwargs)


@register_model
def msvit_dvs_2_256(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """MSViT 2-256 for DVS128 Gesture (default) and CIFAR10-DVS (num_classes=10, mlp_ratio=1)."""
    return _create("msvit_dvs_2_256", pretrained, **kwargs)
