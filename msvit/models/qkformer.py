"""QKFormer (Zhou et al., NeurIPS 2024): the hierarchical spiking transformer of `msvit.py` with QK token attention
(QKTA) and a width that doubles at every downsampling, registered with timm, as timm's `deit.py` registers over
`vision_transformer.py`."""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from .msvit import CIFAR_SHAPE, DVS_SHAPE, IMAGENET_SHAPE, SpikingTransformer, create_hierarchical, hierarchical_configs

__all__ = ["QKFORMER_ARCHS"]

_QKFORMER = dict(token_attention="qkta", attn_threshold=0.5)
_WIDTHS = dict(width_ratios=(0.25, 0.5, 1.0))  # every downsample doubles it

QKFORMER_ARCHS: dict[str, dict[str, Any]] = {
    "qkformer_cifar_4_384": {**CIFAR_SHAPE, **_QKFORMER, **_WIDTHS},
    "qkformer_10_384": {**IMAGENET_SHAPE, **_QKFORMER, **_WIDTHS, "embed_dim": 384, "num_heads": 6},
    "qkformer_10_512": {**IMAGENET_SHAPE, **_QKFORMER, **_WIDTHS, "embed_dim": 512, "num_heads": 8},
    "qkformer_10_768": {**IMAGENET_SHAPE, **_QKFORMER, **_WIDTHS, "embed_dim": 768, "num_heads": 12},
    "qkformer_dvs_2_256": {**DVS_SHAPE, "token_attention": "qkta"},
}

default_cfgs = hierarchical_configs(QKFORMER_ARCHS)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SpikingTransformer:
    return create_hierarchical(variant, QKFORMER_ARCHS[variant], pretrained, **kwargs)


@register_model
def qkformer_cifar_4_384(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """QKFormer HST-4-384 for CIFAR-10/100 (6,706,234 parameters at 10 classes)."""
    return _create("qkformer_cifar_4_384", pretrained, **kwargs)


@register_model
def qkformer_10_384(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """QKFormer HST-10-384 for ImageNet-1K (16.47M parameters, 78.80% published)."""
    return _create("qkformer_10_384", pretrained, **kwargs)


@register_model
def qkformer_10_512(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """QKFormer HST-10-512 for ImageNet-1K (29.08M parameters, 82.04% published)."""
    return _create("qkformer_10_512", pretrained, **kwargs)


@register_model
def qkformer_10_768(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """QKFormer HST-10-768 for ImageNet-1K (64.96M parameters, 84.22% published)."""
    return _create("qkformer_10_768", pretrained, **kwargs)


@register_model
def qkformer_dvs_2_256(pretrained: bool = False, **kwargs: Any) -> SpikingTransformer:
    """QKFormer HST-2-256 for DVS128 Gesture (default) and CIFAR10-DVS (num_classes=10, mlp_ratio=1)."""
    return _create("qkformer_dvs_2_256", pretrained, **kwargs)
