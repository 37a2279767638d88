"""Every registered model of the package, by name: its class, its architecture arguments and their check.
MSViT and QKFormer are `msvit.models.SpikingTransformer` (`ARCHS`); the baselines are one class per family
(`msvit.baselines`)."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, get_type_hints

from torch import nn

from .baselines import BASELINE_ARCHS, BASELINE_CLASSES
from .baselines.base import check_arguments as check_baseline_arguments, constructor_parameters
from .errors import ConfigError
from .models import ARCHS, SpikingTransformer, check_arguments

__all__ = ["ALL_ARCHS", "ALL_MODEL_NAMES", "BASELINE_NAMES", "model_class", "model_parameters",
           "check_model_arguments"]

ALL_ARCHS: dict[str, dict[str, Any]] = {**ARCHS, **BASELINE_ARCHS}
ALL_MODEL_NAMES = tuple(ALL_ARCHS)
BASELINE_NAMES = tuple(BASELINE_ARCHS)


def model_class(name: str) -> type[nn.Module]:
    """The class that the registered model `name` builds (ConfigError for an unknown name)."""
    if name in ARCHS:
        return SpikingTransformer
    if name in BASELINE_CLASSES:
        return BASELINE_CLASSES[name]
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(ALL_MODEL_NAMES)}")


def check_model_arguments(name: str, args: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
    """Check a complete set of constructor arguments of the registered model `name` (ConfigError)."""
    cls = model_class(name)
    if cls is SpikingTransformer:
        check_arguments(args, labels)
    else:
        check_baseline_arguments(cls, args, labels)


def model_parameters(name: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The constructor arguments of the registered model `name`, and their type hints."""
    cls = model_class(name)
    if cls is SpikingTransformer:
        return dict(inspect.signature(cls).parameters), get_type_hints(cls.__init__)
    return constructor_parameters(cls)

