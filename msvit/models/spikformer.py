"""Spikformer (Zhou et al., ICLR 2023; ZK-Zhou/spikformer): the SPS stem, then one stage of SEW blocks (spike +
spike) of spiking self-attention and the spiking MLP, mean over tokens and time, a linear head.

Its blocks are MSViT's and QKFormer's last-stage blocks with the SSA run per sample (no batch coupling), at the
release's scale (0.125; 0.25 on CIFAR10-DVS) and, on CIFAR, with biased q/k/v projections. The release's CIFAR
model writes its projections as nn.Linear layers on `[T*B, N, C]`: the same maths as our 1x1 convolutions, whose
weights its state_dicts give after a reshape. The LayerNorms `norm1`/`norm2` (and, on CIFAR10-DVS, `pos_embed`
and `norm`) are built by the release but never used; they are left out here and dropped by name on load.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from timm.models import register_model
from torch import nn

from ..errors import ConfigError
from ..layers import SSA_SCALE, Block, LayerStem, SpikingSelfAttention, StemLayer, pooled_layers
from ._one_stage import OneStageTransformer, baseline_configs, create_baseline

__all__ = ["Spikformer", "SPIKFORMER_ARCHS"]


class Spikformer(OneStageTransformer):
    """Spikformer-`depth`-`embed_dim`. `pooling_stat`: which of the stem's four layers max-pool their spikes
    ('1111' ImageNet and CIFAR10-DVS, '0011' CIFAR); `attn_scale`: the SSA's constant; `qkv_bias`: biased q/k/v
    projections (the CIFAR release). Input `[B, C, H, W]` images over T steps, or `[B, T, C, H, W]` frames."""

    RELEASE_RENAMES = ((r"_linear\.", "_conv."),)  # the CIFAR release's nn.Linear projections
    DEAD_KEYS = (r"\.norm[12]\.", r"^pos_embed$", r"^norm\.")

    def __init__(self, *, attn_scale: float = SSA_SCALE, qkv_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(attn_scale=attn_scale, qkv_bias=bool(qkv_bias), **kwargs)

    @classmethod
    def check_family_arguments(cls, args: Mapping[str, Any], named: Callable[[str], str]) -> None:
        if args["attn_scale"] <= 0:
            raise ConfigError(f"{named('attn_scale')} must be positive")

    def build_stem(self) -> LayerStem:
        d, c = self.embed_dim, self.in_chans
        widths = [(c, d // 8), (d // 8, d // 4), (d // 4, d // 2), (d // 2, d)]
        ops = pooled_layers(["CBL"] * 4, self.config["pooling_stat"], [3] * 4)  # the pool after the neuron
        names = ["", "1", "2", "3"]
        layers = [StemLayer(f"proj_conv{n}", f"proj_bn{n}", f"proj_lif{n}", *w, op)
                  for n, w, op in zip(names, widths, ops)]
        embed = StemLayer("rpe_conv", "rpe_bn", "rpe_lif", d, d, "CBL")
        return LayerStem(layers, embed, self.neurons)

    def build_block(self, drop_path: float) -> nn.Module:
        cfg = self.config
        attn = SpikingSelfAttention(cfg["embed_dim"], cfg["num_heads"], 0.5, self.neurons,
                                    batch_coupled=False, scale=cfg["attn_scale"], qkv_bias=cfg["qkv_bias"])
        return Block(attn, cfg["embed_dim"], cfg["mlp_ratio"], drop_path, self.neurons)

    def init_weights(self) -> None:
        # the release initialises its nn.Linear layers (truncated normal, std 0.02, zero bias): the head, and on
        # CIFAR (the biased-q/k/v release) every projection, which are 1x1 convolutions here
        if not self.config["qkv_bias"]:
            return
        for module in self.block.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)


_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, num_heads=8, pooling_stat="1111")
SPIKFORMER_ARCHS: dict[str, dict[str, Any]] = {
    "spikformer_8_384": {**_IMAGENET, "embed_dim": 384, "depth": 8},
    "spikformer_8_512": {**_IMAGENET, "embed_dim": 512, "depth": 8},
    "spikformer_8_768": {**_IMAGENET, "embed_dim": 768, "depth": 8},
    "spikformer_cifar_4_384": dict(img_size=32, in_chans=3, num_classes=10, T=4, embed_dim=384, depth=4,
                                   num_heads=12, pooling_stat="0011", qkv_bias=True),
    "spikformer_dvs_2_256": dict(img_size=128, in_chans=2, num_classes=10, T=16, embed_dim=256, depth=2,
                                 num_heads=16, pooling_stat="1111", attn_scale=0.25),
}

default_cfgs = baseline_configs(SPIKFORMER_ARCHS)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> Spikformer:
    return create_baseline(Spikformer, variant, SPIKFORMER_ARCHS[variant], pretrained, **kwargs)


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """Spikformer-8-384 for ImageNet-1K (16,816,024 parameters; 70.24% published)."""
    return _create("spikformer_8_384", pretrained, **kwargs)


@register_model
def spikformer_8_512(pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """Spikformer-8-512 for ImageNet-1K (29,689,384 parameters; 73.38% published)."""
    return _create("spikformer_8_512", pretrained, **kwargs)


@register_model
def spikformer_8_768(pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """Spikformer-8-768 for ImageNet-1K (66,338,632 parameters; 74.81% published)."""
    return _create("spikformer_8_768", pretrained, **kwargs)


@register_model
def spikformer_cifar_4_384(pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """Spikformer-4-384 for CIFAR-10 (12 heads, biased q/k/v; 9,324,730 parameters) and CIFAR-100 (num_classes=100)."""
    return _create("spikformer_cifar_4_384", pretrained, **kwargs)


@register_model
def spikformer_dvs_2_256(pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """Spikformer-2-256 for CIFAR10-DVS (128x128 frames, SSA scale 0.25; 2,566,666 parameters)."""
    return _create("spikformer_dvs_2_256", pretrained, **kwargs)
