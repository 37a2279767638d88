"""Spikingformer (Zhou et al., 2023; zhouchenlin2096/Spikingformer): Spikformer with every shortcut moved before
the neurons. Its tokenizer ends in a batch norm, every branch starts with a neuron and ends with a batch norm,
the residual stream carries real values, and the head reads it with no neuron before it. The DVS releases use
tau 1.5 in every neuron.

The attention is `SpikingSelfAttention(membrane=True)` (its input neuron is the release's `proj_lif`), the MLP
`MembraneMLP` (the release's `mlp1_*`/`mlp2_*`, renamed `fc1_*`/`fc2_*` on load as for QKFormer). The CIFAR
tokenizer's `block{i}_*` names become the ImageNet release's `proj{i}_*`. The never-used LayerNorms
`norm1`/`norm2` are left out and dropped by name on load.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn

from ..layers import Block, LayerStem, MembraneMLP, SpikingSelfAttention, StemLayer, pooled_layers
from ._one_stage import OneStageTransformer, baseline_configs, create_baseline

__all__ = ["Spikingformer", "SPIKINGFORMER_ARCHS"]


class Spikingformer(OneStageTransformer):
    """Spikingformer-`depth`-`embed_dim`. `pooling_stat`: which of the tokenizer's four spiking layers max-pool
    their spikes before the convolution ('1111' ImageNet and DVS, '0011' CIFAR); `tau`: 1.5 on the DVS sets."""

    RELEASE_RENAMES = ((r"^patch_embed\.block0_", "patch_embed.proj_"), (r"^patch_embed\.block(\d)_", r"patch_embed.proj\1_"))
    DEAD_KEYS = (r"\.norm[12]\.",)
    head_reads_spikes = False  # the head reads the real-valued stream: msvit.energy charges it as MACs

    def build_stem(self) -> LayerStem:
        d, c = self.embed_dim, self.in_chans
        widths = [(d // 8, d // 4), (d // 4, d // 2), (d // 2, d), (d, d)]
        ops = pooled_layers(["LCB"] * 4, self.config["pooling_stat"], [1] * 4)  # the pool between LIF and conv
        layers = [StemLayer("proj_conv", "proj_bn", "", c, d // 8, "CB")]
        layers += [StemLayer(f"proj{i}_conv", f"proj{i}_bn", f"proj{i}_lif", *w, op)
                   for i, (w, op) in enumerate(zip(widths, ops), start=1)]
        return LayerStem(layers, None, self.neurons)

    def build_block(self, drop_path: float) -> nn.Module:
        cfg, neurons = self.config, self.neurons
        dim = cfg["embed_dim"]
        attn = SpikingSelfAttention(dim, cfg["num_heads"], 0.5, neurons, batch_coupled=False, membrane=True)
        mlp = MembraneMLP(dim, int(dim * cfg["mlp_ratio"]), neurons)
        return Block(attn, dim, cfg["mlp_ratio"], drop_path, neurons, mlp=mlp)


_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, num_heads=8, pooling_stat="1111")
SPIKINGFORMER_ARCHS: dict[str, dict[str, Any]] = {
    "spikingformer_8_384": {**_IMAGENET, "embed_dim": 384, "depth": 8},
    "spikingformer_8_512": {**_IMAGENET, "embed_dim": 512, "depth": 8},
    "spikingformer_8_768": {**_IMAGENET, "embed_dim": 768, "depth": 8},
    "spikingformer_cifar_4_384": dict(img_size=32, in_chans=3, num_classes=10, T=4, embed_dim=384, depth=4,
                                      num_heads=12, pooling_stat="0011"),
    "spikingformer_dvs_2_256": dict(img_size=128, in_chans=2, num_classes=11, T=16, embed_dim=256, depth=2,
                                    num_heads=16, pooling_stat="1111", tau=1.5),
}

default_cfgs = baseline_configs(SPIKINGFORMER_ARCHS)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> Spikingformer:
    return create_baseline(Spikingformer, variant, SPIKINGFORMER_ARCHS[variant], pretrained, **kwargs)


@register_model
def spikingformer_8_384(pretrained: bool = False, **kwargs: Any) -> Spikingformer:
    """Spikingformer-8-384 for ImageNet-1K (16,816,024 parameters; 72.45% published)."""
    return _create("spikingformer_8_384", pretrained, **kwargs)


@register_model
def spikingformer_8_512(pretrained: bool = False, **kwargs: Any) -> Spikingformer:
    """Spikingformer-8-512 for ImageNet-1K (29,689,384 parameters; 74.79% published)."""
    return _create("spikingformer_8_512", pretrained, **kwargs)


@register_model
def spikingformer_8_768(pretrained: bool = False, **kwargs: Any) -> Spikingformer:
    """Spikingformer-8-768 for ImageNet-1K (66,338,632 parameters; 75.85% published; released checkpoint)."""
    return _create("spikingformer_8_768", pretrained, **kwargs)


@register_model
def spikingformer_cifar_4_384(pretrained: bool = False, **kwargs: Any) -> Spikingformer:
    """Spikingformer-4-384 for CIFAR-10 (12 heads) and CIFAR-100 (num_classes=100, num_heads=8)."""
    return _create("spikingformer_cifar_4_384", pretrained, **kwargs)


@register_model
def spikingformer_dvs_2_256(pretrained: bool = False, **kwargs: Any) -> Spikingformer:
    """Spikingformer-2-256 (tau 1.5) for DVS128 Gesture (default) and CIFAR10-DVS (num_classes=10)."""
    return _create("spikingformer_dvs_2_256", pretrained, **kwargs)
