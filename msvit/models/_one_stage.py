"""What the three baseline families share: one stage of blocks over a stem (`patch_embed`, `block.{i}`, `head`,
the releases' names), their argument checks, their timm configs and registration, and the loading of the
releases' state_dicts (renamed keys, reshaped 1x1 weights, the never-used parameters dropped by name)."""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping, Sequence, get_type_hints

import torch
from torch import nn
from timm.models import generate_default_cfgs

from ..errors import ConfigError
from ..layers import LayerStem
from ..neurons import TAU, NeuronSettings, check_neuron_arguments, validate_backend
from ._network import SpikingNetwork
from ._timm import (argument_namer, build_registered, check_ranges, check_timm_arguments, classifier_head,
                    override_batch_norms, pretrained_config, square_size)

__all__ = ["OneStageTransformer", "check_arguments", "constructor_parameters", "create_baseline", "baseline_configs"]

_MINIMUM = {"img_size": 1, "in_chans": 1, "T": 1, "embed_dim": 1, "depth": 0, "num_heads": 1, "num_classes": 0}


def check_arguments(cls: type, args: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
    """Check a complete set of arguments of the baseline class `cls` (ranges, the width divisible by num_heads,
    the neuron settings, the pooling bits, the neuron backend, timm's extra arguments); raise ConfigError. `labels` as in
    `msvit.models.check_arguments`."""
    named = argument_namer(args, labels)
    args = {**args, "img_size": square_size(args["img_size"], named("img_size"))}
    check_timm_arguments(args, named)
    check_ranges(args, named, _MINIMUM)
    if args["embed_dim"] % args["num_heads"] or args["embed_dim"] % 8:
        raise ConfigError(f"{named('embed_dim')} must be a multiple of 8 (the stem's first width is embed_dim/8) "
                          f"and of {named('num_heads')}")
    check_neuron_arguments(args, named)
    bits = args["pooling_stat"]
    if not (isinstance(bits, str) and len(bits) == 4 and set(bits) <= {"0", "1"}):
        raise ConfigError(f"{named('pooling_stat')} must be four bits, one per stem layer, '1' where it max-pools "
                          f"(e.g. '1111' for ImageNet, '0011' for CIFAR)")
    if args["batch_coupled_ssa"]:
        raise ConfigError(f"{named('batch_coupled_ssa')}: none of the baseline releases couples the samples of a "
                          f"batch; set batch_coupled_ssa false (the baselines' recipes do)")
    validate_backend(args["neuron_backend"])
    cls.check_family_arguments(args, named)


def constructor_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The keyword arguments a baseline class takes (its own, then `OneStageTransformer`'s) and their type hints."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for klass in reversed([k for k in cls.__mro__ if issubclass(k, OneStageTransformer)]):
        if "__init__" in vars(klass):
            params.update((name, p) for name, p in inspect.signature(klass.__init__).parameters.items()
                          if name != "self" and p.kind is p.KEYWORD_ONLY)
            hints.update(get_type_hints(klass.__init__))
    return params, hints


class OneStageTransformer(SpikingNetwork):
    """A stem `patch_embed`, then `depth` blocks `block.{i}` at width `embed_dim`, then the linear `head`.

    A family subclass gives its stem and blocks (`build_stem`, `build_block`), may add arguments (stored in
    `config`), and says how the releases' state_dicts map onto its own (`RELEASE_RENAMES`, `DEAD_KEYS`).
    Every neuron integrates per sample: none of these releases couples the samples of a batch.
    As a backbone (`feature_info`, `forward_intermediates`, features_only=True): one feature map per block, at
    the stem's stride.
    """

    # (pattern, replacement) on the releases' keys, and the keys of parameters they build but never use
    RELEASE_RENAMES: Sequence[tuple[str, str]] = ()
    DEAD_KEYS: Sequence[str] = ()
    head_reads_spikes = True  # spikes or spike counts reach the head (msvit.energy: accumulates, not MACs)

    def __init__(self, *, img_size: int | Sequence[int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 T: int = 4, embed_dim: int = 512, depth: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0,
                 pooling_stat: str = "1111", tau: float = TAU, drop_path_rate: float = 0.0,
                 neuron_backend: str = "auto", batch_coupled_ssa: bool = False, neuron: str = "lif",
                 v_threshold: float = 1.0, surrogate: str = "sigmoid", surrogate_alpha: float = 4.0,
                 surrogate_gamma: float = 2.5, surrogate_region: float = 1.0, detach_reset: bool = True,
                 drop_rate: float = 0.0, global_pool: str = "avg", drop_block_rate: float | None = None,
                 bn_momentum: float | None = None, bn_eps: float | None = None, **family: Any) -> None:
        unknown = sorted(set(family) - set(constructor_parameters(type(self))[0]))
        if unknown:  # `family` holds the subclass's own arguments only
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        super().__init__()
        self.config = dict(img_size=img_size, in_chans=in_chans, num_classes=num_classes, T=T, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, pooling_stat=pooling_stat,
                           tau=tau, drop_path_rate=drop_path_rate or 0.0, neuron_backend=neuron_backend,
                           batch_coupled_ssa=batch_coupled_ssa, neuron=neuron, v_threshold=v_threshold,
                           surrogate=surrogate, surrogate_alpha=surrogate_alpha, surrogate_gamma=surrogate_gamma,
                           surrogate_region=surrogate_region, detach_reset=detach_reset,
                           drop_rate=drop_rate or 0.0, global_pool="avg" if global_pool is None else global_pool,
                           drop_block_rate=drop_block_rate, bn_momentum=bn_momentum, bn_eps=bn_eps, **family)
        check_arguments(type(self), self.config)
        self.neurons = NeuronSettings.from_config(self.config)  # every neuron's (the attention masks': 0.5)
        self.config["img_size"] = self.img_size = square_size(img_size)
        self.T, self.num_classes, self.in_chans = T, num_classes, in_chans
        self.drop_rate, self.global_pool = self.config["drop_rate"], self.config["global_pool"]
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = self.build_stem()
        rates = torch.linspace(0, self.config["drop_path_rate"], depth, device="cpu").tolist()
        self.block = nn.ModuleList([self.build_block(rate) for rate in rates])
        stride = self.stem_stride()
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f"block.{i}") for i in range(depth)]
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = classifier_head(self.num_features, num_classes)
        self.init_weights()
        override_batch_norms(self, bn_momentum, bn_eps)

    @classmethod
    def check_family_arguments(cls, args: Mapping[str, Any], named: Callable[[str], str]) -> None:
        """Checks of the family's own arguments (ConfigError)."""

    def build_stem(self) -> LayerStem:
        raise NotImplementedError

    def build_block(self, drop_path: float) -> nn.Module:
        raise NotImplementedError

    def stem_stride(self) -> int:
        """How much the stem shrinks H and W (a `LayerStem`: each max-pool 3/2 halves them)."""
        return 2 ** sum(layer.ops.count("P") for layer in self.patch_embed.layers)

    def init_weights(self) -> None:
        """The release's initialisation (the default: PyTorch's, with the head's from `classifier_head`)."""

    def units(self) -> list[nn.Module]:
        return [self.patch_embed, *self.block]

    def feature_groups(self) -> list[list[nn.Module]]:
        """One feature map per block: the stem and the first block, then each further block."""
        return [[self.patch_embed, block] if i == 0 else [block] for i, block in enumerate(self.block)]

    def keep_feature_groups(self, count: int) -> None:
        """Keep the first `count` blocks (timm's `prune_intermediate_layers`)."""
        self.block = self.block[:count]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm (layer-wise lr decay): the stem, each block, the head last."""
        return dict(stem=r"^patch_embed\.", blocks=r"^block\.(\d+)\.")

    def adapt_release_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A release's state_dict in this model's names and shapes: `RELEASE_RENAMES` applied, the `DEAD_KEYS`
        dropped, and a weight reshaped where only unit dimensions differ (an nn.Linear `[C, C']` or a 1x1 Conv2d
        `[C, C', 1, 1]` of the release that is a Conv1d `[C, C', 1]` here, or the reverse). Our own state_dicts
        pass unchanged."""
        target = self.state_dict()
        out = {}
        for key, value in state.items():
            for pattern, repl in self.RELEASE_RENAMES:
                key = re.sub(pattern, repl, key)
            if any(re.search(dead, key) for dead in self.DEAD_KEYS):
                continue
            shape = target[key].shape if key in target else None
            if (shape is not None and value.shape != shape and value.numel() == target[key].numel()
                    and [d for d in value.shape if d != 1] == [d for d in shape if d != 1]):
                value = value.reshape(shape)
            out[key] = value
        return out


def create_baseline(cls: type[OneStageTransformer], variant: str, arch: Mapping[str, Any], pretrained: bool,
                    **kwargs: Any) -> nn.Module:
    """timm's builder for a registered baseline `variant` (its `arch` arguments, then the caller's); with
    features_only=True, timm's FeatureGetterNet over it (one feature map per block)."""
    return build_registered(cls, variant, arch, pretrained, backbone=True, **kwargs)


def baseline_configs(archs: Mapping[str, Mapping[str, Any]], imagenet_crop_pct: float = 1.0) -> dict[str, Any]:
    """timm's pretrained configs of a family's registered `archs` (the releases evaluate ImageNet at crop_pct 1.0,
    SDT at 0.95)."""
    return generate_default_cfgs({name: pretrained_config(arch, "patch_embed.proj_conv", imagenet_crop_pct)
                                  for name, arch in archs.items()})
