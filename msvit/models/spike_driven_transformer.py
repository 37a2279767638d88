"""The Spike-driven Transformer, v1 (Yao et al., NeurIPS 2023; BICLab/Spike-Driven-Transformer): the MS_SPS stem
(its position embedding added at membrane level), one stage of membrane-shortcut blocks of spike-driven
self-attention (SDSA) and `MembraneMLP`, then the mean over tokens, a neuron, the linear head, the mean over time.

SDSA gates Q with a binary channel mask per head, `LIF_0.5(sum over tokens of K*V)`: no matrix product, no scale.
`dvs_mode` (the CIFAR10-DVS release) erodes K and V with a 3x3 spatial max-pool, and K*V and Q*mask with the
same pool laid over (token index, channel within the head), a quirk kept as the release runs it.

The release's q/k/v/proj are 1x1 Conv2d on `[T*B, C, H, W]`; here they are the Conv1d of the shared attention
on `[T*B, C, N]` (the same maths), and their `[C, C, 1, 1]` weights load after a reshape. `talking_heads`
(a Conv1d the release builds, counts and never uses) is left out and dropped by name on load.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from ..layers import Block, LayerStem, MembraneMLP, SpikeDrivenSelfAttention, StemLayer, pooled_layers
from ..neurons import reset_neurons
from ._one_stage import OneStageTransformer, baseline_configs, create_baseline
from ._timm import pool_features

__all__ = ["SpikeDrivenTransformer", "SDT_ARCHS"]

class SpikeDrivenTransformer(OneStageTransformer):
    """Spike-driven Transformer-`depth`-`embed_dim`. `pooling_stat`: which of MS_SPS's four layers max-pool
    ('1111' ImageNet, '0011' CIFAR and CIFAR10-DVS at 64x64, '0111' DVS128 Gesture); `dvs_mode`: SDSA's erosion."""

    DEAD_KEYS = (r"\.attn\.talking_heads\.",)

    def __init__(self, *, dvs_mode: bool = False, **kwargs: Any) -> None:
        super().__init__(dvs_mode=bool(dvs_mode), **kwargs)
        self.head_lif = self.neurons.make()

    def build_stem(self) -> LayerStem:
        d, c = self.embed_dim, self.in_chans
        widths = [(c, d // 8), (d // 8, d // 4), (d // 4, d // 2), (d // 2, d)]
        # layers 0-2 pool their spikes; layer 3 has no neuron and pools its membrane
        ops = pooled_layers(["CBL", "CBL", "CBL", "CB"], self.config["pooling_stat"], [3, 3, 3, 2])
        names = ["", "1", "2", "3"]
        layers = [StemLayer(f"proj_conv{n}", f"proj_bn{n}", f"proj_lif{n}", *w, op)
                  for n, w, op in zip(names, widths, ops)]
        embed = StemLayer("rpe_conv", "rpe_bn", "proj_lif3", d, d, "LCB")
        return LayerStem(layers, embed, self.neurons)

    def build_block(self, drop_path: float) -> nn.Module:
        cfg, neurons = self.config, self.neurons
        dim, hidden = cfg["embed_dim"], int(cfg["embed_dim"] * cfg["mlp_ratio"])
        attn = SpikeDrivenSelfAttention(dim, cfg["num_heads"], neurons, cfg["dvs_mode"])
        mlp = MembraneMLP(dim, hidden, neurons, inner_residual=hidden == dim)
        return Block(attn, dim, cfg["mlp_ratio"], drop_path, neurons, mlp=mlp)

    def init_weights(self) -> None:
        # the release: truncated normal (std 0.02) on every convolution, zero biases; PyTorch's default head
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.head, nn.Linear):
            self.head.reset_parameters()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if isinstance(self.head, nn.Linear):
            self.head.reset_parameters()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`[B, T, C, H, W]` features -> the mean over tokens per step, the head neuron, dropout, the head, the
        mean over time (`[B, num_classes]`; `per_step_logits`: `[B, T, num_classes]`). `pre_logits`: the
        head neuron's spikes averaged over time (per step with `per_step_logits`). With global_pool '' the head
        neuron and the head run at every position and step: `[B, T, H, W, num_classes]`, as for the others."""
        pooled = pool_features(x, self.global_pool, per_step=True)  # [B, T, ...]
        try:
            spikes = self.head_lif(pooled.transpose(0, 1)).transpose(0, 1)
        finally:
            reset_neurons(self.head_lif)
        spikes = self.head_drop(spikes)
        per_step = self.per_step_logits or not self.global_pool
        if pre_logits:
            return spikes if per_step else spikes.mean(1)
        logits = self.head(spikes.movedim(2, -1) if not self.global_pool and self.num_classes > 0 else spikes)
        return logits if per_step else logits.mean(1)


_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, num_heads=8, pooling_stat="1111")
SDT_ARCHS: dict[str, dict[str, Any]] = {
    "sdt_8_384": {**_IMAGENET, "embed_dim": 384, "depth": 8},
    "sdt_6_512": {**_IMAGENET, "embed_dim": 512, "depth": 6},
    "sdt_8_512": {**_IMAGENET, "embed_dim": 512, "depth": 8},
    "sdt_10_512": {**_IMAGENET, "embed_dim": 512, "depth": 10},
    "sdt_8_768": {**_IMAGENET, "embed_dim": 768, "depth": 8},
    "sdt_cifar_2_512": dict(img_size=32, in_chans=3, num_classes=10, T=4, embed_dim=512, depth=2, num_heads=8,
                            pooling_stat="0011"),
    "sdt_dvs_2_256": dict(img_size=128, in_chans=2, num_classes=11, T=16, embed_dim=256, depth=2, num_heads=8,
                          pooling_stat="0111"),
}
SDT_CROP_PCT = 0.95  # the release evaluates ImageNet at crop_pct 0.95

default_cfgs = baseline_configs(SDT_ARCHS, SDT_CROP_PCT)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SpikeDrivenTransformer:
    return create_baseline(SpikeDrivenTransformer, variant, SDT_ARCHS[variant], pretrained, **kwargs)


@register_model
def sdt_8_384(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-8-384 for ImageNet-1K (16,816,024 parameters; 72.28% published)."""
    return _create("sdt_8_384", pretrained, **kwargs)


@register_model
def sdt_6_512(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-6-512 for ImageNet-1K (74.11% published)."""
    return _create("sdt_6_512", pretrained, **kwargs)


@register_model
def sdt_8_512(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-8-512 for ImageNet-1K (74.57% published)."""
    return _create("sdt_8_512", pretrained, **kwargs)


@register_model
def sdt_10_512(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-10-512 for ImageNet-1K (74.66% published)."""
    return _create("sdt_10_512", pretrained, **kwargs)


@register_model
def sdt_8_768(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-8-768 for ImageNet-1K (77.07% published, a 288x288 test)."""
    return _create("sdt_8_768", pretrained, **kwargs)


@register_model
def sdt_cifar_2_512(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-2-512 for CIFAR-10 and CIFAR-100 (num_classes=100)."""
    return _create("sdt_cifar_2_512", pretrained, **kwargs)


@register_model
def sdt_dvs_2_256(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-2-256 for DVS128 Gesture (default); CIFAR10-DVS: num_classes=10,
    pooling_stat='0011', dvs_mode=True, img_size=64, T=10 (its zoo entry)."""
    return _create("sdt_dvs_2_256", pretrained, **kwargs)
