"""What timm's `create_model`, its scripts (train.py, validate.py, benchmark.py) and its optimizer factory
expect of a model, for `msvit.models.SpikingTransformer`: the extra constructor arguments (classifier
dropout, global pooling, batch-norm overrides, the image size as timm records it), the pooling of
`forward_head`, and the parameter grouping that `timm.optim.create_optimizer_v2(layer_decay=...)` reads.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Mapping, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._features import FeatureGetterNet
from torch import nn

from ..errors import ConfigError
from ._checkpoint import release_filter  # the authors' key layouts -> ours, for pretrained=True

__all__ = ["GLOBAL_POOLS", "CIFAR_MEAN", "CIFAR_STD", "square_size", "argument_namer", "check_ranges",
           "check_timm_arguments", "classifier_head", "pool_features", "override_batch_norms", "stage_group_matcher", "input_kind",
           "pretrained_config", "build_registered", "unwrapped"]

# '' keeps the features unpooled; 'fast' is timm's name for its cheaper average pool (benchmark.py's default)
GLOBAL_POOLS = ("avg", "fast", "max", "avgmax", "")


def square_size(value: int | Sequence[int], name: str = "img_size") -> int:
    """`img_size` as one int. timm records it as [H, W] (save_for_hf's config.json, resolve_model_input_args);
    these models take square inputs, so a pair must hold two equal sizes. `name` labels the value in errors."""
    size = value[0] if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1] else value
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, or two equal integers [H, W] (the models take square inputs)")
    return int(size)


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_QUOTED = ("global_pool", "pooling_stat")  # text values that a message quotes, so '' and '011' show as written


def argument_namer(args: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """How a ConfigError names an argument of a model's complete `args`: as the user spelt it (`labels`:
    'model_kwargs.embed_dim', 'time_step') with its value, or as the model's default where `labels` lacks it.
    Without `labels` every argument goes by its own name."""
    def named(key: str) -> str:
        value = list(args[key]) if isinstance(args[key], tuple) else args[key]
        value = repr(value) if isinstance(value, str) and key in _QUOTED else value
        if labels is None or key in labels:
            return f"{(labels or {}).get(key, key)} {value}"
        return f"{key} {value} (the model's default)"
    return named


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_ranges(args: Mapping[str, Any], named: Callable[[str], str], minimum: Mapping[str, int]) -> None:
    """The ranges every family's arguments share: each key of `minimum` at its lowest value or more, a positive
    mlp_ratio, a drop_path_rate in [0, 1) (None: 0); ConfigError naming the argument."""
    for key, low in minimum.items():
        if args[key] < low:
            raise ConfigError(f"{named(key)} must be {low} or more")
    if args["mlp_ratio"] <= 0:
        raise ConfigError(f"{named('mlp_ratio')} must be positive")
    if not 0 <= (args["drop_path_rate"] or 0.0) < 1:
        raise ConfigError(f"{named('drop_path_rate')} must be at least 0 and below 1")


def check_timm_arguments(args: dict[str, Any], named: Callable[[str], str]) -> None:
    """Check the arguments timm's scripts pass (None, or absent, is "not set"); raise ConfigError.
    `named(key)` is how a message names the argument and its value."""
    def given(key: str) -> Any:
        return args.get(key)

    rate = given("drop_rate")
    if rate is not None and not (_number(rate) and 0 <= rate < 1):
        raise ConfigError(f"{named('drop_rate')} must be at least 0 and below 1")
    pool = given("global_pool")
    if pool is not None and pool not in GLOBAL_POOLS:
        raise ConfigError(f"{named('global_pool')} is not a pooling of these models; choose one of "
                          f"{', '.join(repr(p) for p in GLOBAL_POOLS)}")
    block = given("drop_block_rate")
    if block is not None and not (_number(block) and block == 0):
        raise ConfigError(f"{named('drop_block_rate')}: these models have no DropBlock; leave it unset or 0 "
                          f"(drop_path_rate is their stochastic depth)")
    momentum = given("bn_momentum")
    if momentum is not None and not (_number(momentum) and 0 <= momentum <= 1):
        raise ConfigError(f"{named('bn_momentum')} must be between 0 and 1 (PyTorch's BatchNorm momentum)")
    eps = given("bn_eps")
    if eps is not None and not (_number(eps) and eps > 0):
        raise ConfigError(f"{named('bn_eps')} must be positive")


def classifier_head(num_features: int, num_classes: int) -> nn.Module:
    """The linear head (truncated-normal weights, std 0.02, zero bias), or nn.Identity for 0 classes."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(num_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def pool_features(x: torch.Tensor, kind: str, per_step: bool = False) -> torch.Tensor:
    """`[B, T, C, H, W]` -> `[B, C]`: pooled over the tokens (mean, max, or their average), then averaged
    over time (`per_step`: not over time, `[B, T, C]`); `kind` '' returns `x` unchanged."""
    if not kind:
        return x
    tokens = x.flatten(3)
    if kind in ("avg", "fast"):
        pooled = tokens.mean(3)
    elif kind == "max":
        pooled = tokens.amax(3)
    elif kind == "avgmax":
        pooled = 0.5 * (tokens.mean(3) + tokens.amax(3))
    else:
        raise ConfigError(f"global_pool {kind!r} is not a pooling of these models; choose one of "
                          f"{', '.join(repr(p) for p in GLOBAL_POOLS)}")
    return pooled if per_step else pooled.mean(1)


def override_batch_norms(model: nn.Module, momentum: float | None, eps: float | None) -> None:
    """timm's bn_momentum / bn_eps: set them on every batch norm of `model` (None leaves PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if momentum is not None:
                m.momentum = float(momentum)
            if eps is not None:
                m.eps = float(eps)


def stage_group_matcher(coarse: bool = False) -> dict[str, Any]:
    """timm's `group_matcher` for `patch_embed1` (the stem), then per stage i a downsampling `patch_embed{i}`
    and the blocks `stage{i}.{j}`; what no pattern matches (the head) goes last.

    Coarse: one group per stage, its downsampling embedding included. Fine: one group per block, and each
    downsampling embedding its own group just before its stage's first block (the -1 suffix sorts it there).
    A group never splits a block, so all its parameters get one lr scale under layer decay."""
    stem = r"^patch_embed1\."  # matched first, so the patterns below see only the downsamplers
    if coarse:
        return dict(stem=stem, blocks=r"^(?:patch_embed|stage)(\d+)\.")
    return dict(stem=stem, blocks=[(r"^patch_embed(\d+)\.", (-1,)), (r"^stage(\d+)\.(\d+)\.", None)])


def input_kind(arch: Mapping[str, Any]) -> str:
    """'imagenet', 'cifar' or 'dvs': the input a registered architecture's arguments are for. MSViT/QKFormer name
    their stem; the baselines are told by their channels and size."""
    if "stem" in arch:
        return arch["stem"]
    return "dvs" if arch["in_chans"] == 2 else "cifar" if arch["img_size"] <= 64 else "imagenet"


def pretrained_config(arch: Mapping[str, Any], first_conv: str, imagenet_crop_pct: float = 0.875,
                      cifar_interpolation: str = "bicubic") -> dict[str, Any]:
    """timm's pretrained config of a registered architecture: input size, classes, and the normalisation and
    evaluation crop of its input kind (ImageNet statistics, CIFAR's, or none for raw event counts)."""
    kind = input_kind(arch)
    if kind == "cifar":
        norm = dict(mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=1.0, interpolation=cifar_interpolation)
    elif kind == "imagenet":
        norm = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=imagenet_crop_pct,
                    interpolation="bicubic")
    else:  # raw event counts: no normalisation
        norm = dict(mean=(0.0, 0.0), std=(1.0, 1.0), crop_pct=1.0, interpolation="nearest")
    size = arch["img_size"]
    return dict(url="", input_size=(arch["in_chans"], size, size), num_classes=arch["num_classes"],
                classifier="head", first_conv=first_conv, license="mit", **norm)


_BUILDER_TAKES_CACHE_DIR = "cache_dir" in inspect.signature(build_model_with_cfg).parameters


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside timm's features_only wrapper (FeatureGetterNet), or `model` itself."""
    return model.model if isinstance(model, FeatureGetterNet) else model


def _backbone_arguments(kwargs: dict[str, Any]) -> bool | None:
    """Take timm's backbone arguments out of `kwargs` (they are not the constructor's): `out_indices` (default
    None: every feature map) and `feature_cfg` go to features_only's FeatureGetterNet; `per_step_features` is
    returned (None: not given)."""
    kwargs["feature_cfg"] = {"feature_cls": "getter", "out_indices": kwargs.pop("out_indices", None),
                             **(kwargs.pop("feature_cfg", None) or {})}
    return kwargs.pop("per_step_features", None)


def build_registered(cls: type[nn.Module], variant: str, arch: Mapping[str, Any], pretrained: bool,
                     *, backbone: bool = False, **kwargs: Any) -> nn.Module:
    """timm's builder for a registered `variant` (its `arch` arguments, then the caller's), with the pretrained
    config kept in step with what was actually built (e.g. num_classes=100, img_size=64).

    `backbone`: `cls` gives `forward_intermediates` (`SpikingNetwork.feature_groups`), so features_only=True
    returns timm's FeatureGetterNet over the model, its maps at `out_indices` (default: all of them), and
    `per_step_features=True` keeps their T steps (the model's `per_step_features`)."""
    if not _BUILDER_TAKES_CACHE_DIR:
        kwargs.pop("cache_dir", None)  # older timm 1.0.x passes it but does not consume it
    kwargs.setdefault("pretrained_filter_fn", release_filter)
    per_step = _backbone_arguments(kwargs) if backbone else None
    model = build_model_with_cfg(cls, variant, pretrained, **{**arch, **kwargs})
    net = unwrapped(model)
    if per_step is not None:
        net.per_step_features = bool(per_step)
    size = (net.in_chans, net.img_size, net.img_size)
    net.pretrained_cfg.update(num_classes=net.num_classes, input_size=size)
    if net is not model:
        model.pretrained_cfg.update(input_size=size)  # the features' config has no classes
    return model
