"""STMixer, the Spiking Token Mixer (Deng et al., NeurIPS 2024; brain-intelligence-lab/STMixer_demo,
`models/STMixer.py` and `models/spiking_layer.py` at 38a0786): a former built only from convolutions, fully
connected layers and residual additions, with no spike x spike product and no max-pool.

    patch_embed  the IPSPS stem (`ProtectedStem`): five conv-BN layers with neurons between them, strided 2^d
                 (d = 4 ImageNet, 2 CIFAR), plus a strided conv-BN shortcut on the raw image; real-valued
    block.{i}    x + TokenMixer(x), then x + FFN(x), pre-activation (every branch starts with a neuron and ends with
                 a batch norm): TokenMixer = LIF, conv1x1, BN, LIF, STM (one learned N x N matrix per head over the
                 tokens), LIF, conv1x1, BN; FFN = LIF, conv1x1 (C -> 4C), BN, LIF, conv1x1, BN; no bias anywhere
    head         the mean over tokens and time of the real-valued stream -> Linear (no neuron before it)

The neuron is the release's `LIFSpike` (`mem = 0.5 mem + x`, spike where `mem >= 1`, hard reset `mem (1 - spike)`
not detached, Dspike gamma 2.5 on `mem - 1` within +-1), which is our LIF with tau 2 and threshold 0.5 (our v is
their mem / 2) and Dspike gamma 5 on a region of 0.5 (their gamma acts on `mem - 1 = 2 (v - 0.5)`): the family's
defaults, equal in forward and backward (docs/neurons.md). The release's current code resets hard; until
2025-07-17 it reset softly (`mem - spike`), which changes nothing at T=1, the ImageNet setting.

The STM matrices tie a model to one token count (`img_size / 2^d` squared): another `img_size` builds its own
N x N, and weights of another token count are refused on load, naming both counts.

`sml=True` adds the release's surrogate module learning: ANN side branches `sml{i}` (`layers.surrogate_module`)
after the stem and after every second block, whose keys are the release's. In training the model returns
the tuple (main, side 1, ...) for `training.sml.SMLLoss`; in evaluation the main logits alone, the same as the
model without side branches and the same backbone weights. A model without them loads an SML checkpoint by
dropping its `sml{i}.*` keys: they are training-only parameters.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
from timm.models import register_model
from torch import nn

from ..errors import ConfigError
from ..layers import Block, MembraneMLP, ProtectedStem, SpikingTokenMixer
from ..layers.surrogate_module import SurrogateModule, side_branch_layers
from ._checkpoint import CheckpointError
from ._one_stage import OneStageTransformer, baseline_configs, create_baseline
from ._timm import override_batch_norms

__all__ = ["STMixer", "STMIXER_ARCHS", "release_renames"]

# the release's LIFSpike, in our neuron settings (docs/neurons.md)
NEURON_DEFAULTS = dict(v_threshold=0.5, surrogate="dspike", surrogate_gamma=5.0, surrogate_region=0.5,
                       detach_reset=False)


def release_renames() -> tuple[tuple[str, str], ...]:
    """The release's keys -> ours: the stem's `nn.Sequential` indices (conv, BN, LIF per layer), its shortcut, the
    token mixer's and FFN's `fc{1,2}.{1,2}` (conv, BN after the leading LIF)."""
    stem = [(rf"^patch_embd\.proj_conv\.{3 * i + j}\.", f"patch_embed.{name}_{part}.")
            for i, name in enumerate(ProtectedStem.NAMES) for j, part in ((0, "conv"), (1, "bn"))]
    return (*stem, (r"^patch_embd\.short_proj1\.0\.", "patch_embed.short_conv."),
            (r"^patch_embd\.short_proj1\.1\.", "patch_embed.short_bn."),
            (r"^block\.(\d+)\.token_mix\.fc([12])\.1\.", r"block.\1.attn.fc\2_conv."),
            (r"^block\.(\d+)\.token_mix\.fc([12])\.2\.", r"block.\1.attn.fc\2_bn."),
            (r"^block\.(\d+)\.channel_mix\.fc([12])\.1\.", r"block.\1.mlp.fc\2_conv."),
            (r"^block\.(\d+)\.channel_mix\.fc([12])\.2\.", r"block.\1.mlp.fc\2_bn."))


_STM_KEY = re.compile(r"^block\.(\d+)\.token_mix\.attn\.linear_mix\.(\d+)\.weight$")
_SIDE_KEY = re.compile(r"^sml\d+\.")


class STMixer(OneStageTransformer):
    """STMixer-`depth`-`embed_dim`: `downsample_times` 4 (ImageNet, 224 -> 14x14 tokens) or 2 (CIFAR, 32 -> 8x8);
    `num_heads` STM matrices per block. Neuron defaults: the release's neuron (`NEURON_DEFAULTS`); T defaults to 1,
    the release's. `pooling_stat` must stay '0000': the stem has no max-pool."""

    # its STM matrices are sized by img_size: a dataset folder builds it at the data's img_size
    size_dependent = True
    RELEASE_RENAMES = release_renames()
    head_reads_spikes = False  # the head reads the real-valued stream: msvit.energy charges it as MACs

    def __init__(self, *, T: int = 1, downsample_times: int = 4, pooling_stat: str = "0000",
                 v_threshold: float = 0.5, surrogate: str = "dspike", surrogate_gamma: float = 5.0,
                 surrogate_region: float = 0.5, detach_reset: bool = False, sml: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(T=T, downsample_times=downsample_times, pooling_stat=pooling_stat, v_threshold=v_threshold,
                         surrogate=surrogate, surrogate_gamma=surrogate_gamma, surrogate_region=surrogate_region,
                         detach_reset=detach_reset, sml=bool(sml), **kwargs)
        self.sml = bool(sml)
        layers = side_branch_layers(self.config["depth"]) if self.sml else []
        self.side_branch_count = len(layers)
        for i, count in enumerate(layers):
            setattr(self, f"sml{i + 1}", SurrogateModule(self.embed_dim, self.embed_dim, self.num_tokens,
                                                         self.num_classes, self.config["num_heads"], count))
        if self.sml:
            override_batch_norms(self.side_branches(), kwargs.get("bn_momentum"), kwargs.get("bn_eps"))

    @classmethod
    def check_family_arguments(cls, args: Mapping[str, Any], named: Callable[[str], str]) -> None:
        if args["downsample_times"] not in (2, 4):
            raise ConfigError(f"{named('downsample_times')}: STMixer's stem downsamples 2 (CIFAR) or 4 (ImageNet) "
                              f"times")
        if args["pooling_stat"] != "0000":
            raise ConfigError(f"{named('pooling_stat')}: STMixer's stem has no max-pool; leave it '0000'")
        size, stride = args["img_size"], 2 ** args["downsample_times"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        if size % stride:
            raise ConfigError(f"{named('img_size')} must be a multiple of {stride} (2^downsample_times: the stem's "
                              f"stride)")
        if args.get("sml") and not 2 <= args["depth"] <= 11:
            raise ConfigError(f"{named('sml')}: the release defines surrogate module learning's side branches for "
                              f"depth 2 to 11, not {args['depth']}; set sml false")

    @property
    def num_tokens(self) -> int:
        """N, the token count the STM matrices are built for: (img_size / 2^downsample_times) squared."""
        return (self.img_size // self.stem_stride()) ** 2

    def stem_stride(self) -> int:
        return 2 ** self.config["downsample_times"]

    def build_stem(self) -> ProtectedStem:
        return ProtectedStem(self.in_chans, self.embed_dim, self.config["downsample_times"], self.neurons)

    def build_block(self, drop_path: float) -> nn.Module:
        cfg, dim = self.config, self.embed_dim
        mixer = SpikingTokenMixer(dim, self.num_tokens, cfg["num_heads"], self.neurons)
        mlp = MembraneMLP(dim, int(dim * cfg["mlp_ratio"]), self.neurons, tokens=True, bias=False)
        return Block(mixer, dim, cfg["mlp_ratio"], drop_path, self.neurons, mlp=mlp)

    def init_weights(self) -> None:
        """The release's: Kaiming normal (fan out, ReLU) convolutions, STM matrices likewise, PyTorch's Linear head."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(self.head, nn.Linear):
            self.head.reset_parameters()

    def side_branches(self) -> nn.ModuleList:
        """The side branches `sml1`, `sml2`, ... in order (empty without sml)."""
        return nn.ModuleList([getattr(self, f"sml{i + 1}") for i in range(self.side_branch_count)])

    def training_only_parameters(self) -> int:
        """The side branches' parameter count: what training adds to the evaluated network."""
        return sum(p.numel() for p in self.side_branches().parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The logits; in training with sml, the tuple (main, side 1, ...): side branch i reads the stream after
        the stem (i = 0) or after block 2i - 1."""
        if not (self.sml and self.training):
            return super().forward(x)
        count, blocks = self.side_branch_count, list(self.block)
        groups = [[self.patch_embed]] + [blocks[2 * i - 2:2 * i] for i in range(1, count)] + [blocks[2 * count - 2:]]
        features, taken = self.run_units(x, groups, set(range(count)))
        return (self.forward_head(features), *(branch(t) for branch, t in zip(self.side_branches(), taken)))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head, and new side-branch heads, for `num_classes`."""
        super().reset_classifier(num_classes, global_pool)
        for branch in self.side_branches():
            branch.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def adapt_release_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The release's layout in ours (its per-head `linear_mix.{h}` stacked into one `stm.weight`; the side
        branches' `sml{i}.*` kept as they are, or dropped by a model without them), and the refusal of STM
        matrices of another token count or head count, in one line naming both."""
        state, heads = dict(state), {}
        if not self.sml:  # training-only parameters: the evaluated network is the backbone
            state = {key: value for key, value in state.items() if not _SIDE_KEY.match(key)}
        for key in [k for k in state if _STM_KEY.match(k)]:
            block, head = map(int, _STM_KEY.match(key).groups())
            heads.setdefault(block, {})[head] = state.pop(key)
        for block, mats in heads.items():
            state[f"block.{block}.attn.stm.weight"] = torch.stack([mats[h] for h in sorted(mats)])
        out = super().adapt_release_state_dict(state)
        for key, value in out.items():
            if key.endswith(".attn.stm.weight"):
                self._check_stm(key, value)
        return out

    def _check_stm(self, key: str, value: torch.Tensor) -> None:
        n, heads = self.num_tokens, self.config["num_heads"]
        if value.dim() != 3 or value.shape[1] != value.shape[2]:
            raise CheckpointError(f"{key} of shape {tuple(value.shape)} is not a stack of square STM matrices")
        if value.shape[-1] != n:
            side = int(round(value.shape[-1] ** 0.5))
            raise CheckpointError(
                f"checkpoint's STM mixes {value.shape[-1]} tokens ({side}x{side}) but this model mixes {n} "
                f"(img_size {self.img_size}): STMixer is tied to one token count; build it with img_size "
                f"{side * self.stem_stride()}")
        if value.shape[0] != heads:
            raise CheckpointError(f"checkpoint's STM has {value.shape[0]} heads but this model {heads}: build it "
                                  f"with num_heads={value.shape[0]}")


_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=1, mlp_ratio=4.0, downsample_times=4,
                 pooling_stat="0000")
_CIFAR = dict(img_size=32, in_chans=3, num_classes=10, T=1, mlp_ratio=4.0, downsample_times=2, pooling_stat="0000",
              embed_dim=384, num_heads=16)
STMIXER_ARCHS: dict[str, dict[str, Any]] = {
    # heads not released; 16, the release's only setting (train_timm.py) (8 and 12 also divide 768)
    "stmixer_8_768": {**_IMAGENET, "embed_dim": 768, "depth": 8, "num_heads": 16},
    "stmixer_cifar_4_384": {**_CIFAR, "depth": 4},
    "stmixer_cifar_10_384": {**_CIFAR, "depth": 10},
}
# the release evaluates ImageNet at crop_pct 1.0 (its imagenet.yml)
default_cfgs = baseline_configs(STMIXER_ARCHS)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> STMixer:
    return create_baseline(STMixer, variant, STMIXER_ARCHS[variant], pretrained, **kwargs)


@register_model
def stmixer_8_768(pretrained: bool = False, **kwargs: Any) -> STMixer:
    """STMixer-8-768 for ImageNet-1K, T=1 (61,167,432 parameters with its default 16 heads; 8 heads 58,708,808,
    12 heads 59,938,120; 76.68% published, released checkpoint)."""
    return _create("stmixer_8_768", pretrained, **kwargs)


@register_model
def stmixer_cifar_4_384(pretrained: bool = False, **kwargs: Any) -> STMixer:
    """STMixer-4-384-16, the paper's CIFAR ablation model (8,258,324 parameters with num_classes=100)."""
    return _create("stmixer_cifar_4_384", pretrained, **kwargs)


@register_model
def stmixer_cifar_10_384(pretrained: bool = False, **kwargs: Any) -> STMixer:
    """STMixer-10-384-16, the release's `train_timm.py` model (17,531,156 parameters with num_classes=100)."""
    return _create("stmixer_cifar_10_384", pretrained, **kwargs)
