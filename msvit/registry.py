"""Every registered model of the package, by name: its class, its architecture arguments and their check.
MSViT and QKFormer are `msvit.models.SpikingTransformer` (`ARCHS`); the baselines are one class per family
(`msvit.baselines`)."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, get_type_hints

from torch import nn

from .baselines import BASELINE_ARCHS, BASELINE_CLASSES
from .baselines.base import check_arguments as check_baseline_arguments, constructor_parameters
from .errors import ConfigError
from .models import ARCHS, SpikingTransformer, check_arguments

__all__ = ["ALL_ARCHS", "ALL_MODEL_NAMES", "BASELINE_NAMES", "model_class", "model_parameters",
           "check_model_arguments", "closest_model", "unknown_model"]

ALL_ARCHS: dict[str, dict[str, Any]] = {**ARCHS, **BASELINE_ARCHS}
ALL_MODEL_NAMES = tuple(ALL_ARCHS)
BASELINE_NAMES = tuple(BASELINE_ARCHS)


def closest_model(name: str) -> str | None:
    """The registered model name closest to `name` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(name), ALL_MODEL_NAMES, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_model(name: str, where: str = "model") -> ConfigError:
    """The error for a model name that is not registered: the closest name, or where to find the list."""
    close = closest_model(name)
    hint = (f"did you mean '{close}'?" if close
            else "python -m msvit.zoo lists the registered models, a folder's model.py those that suit it")
    return ConfigError(f"{where} {name!r} is not a registered model; {hint}")


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

