"""Every registered model of the package, by name: its class, its architecture arguments and their check.
MSViT and QKFormer are `SpikingTransformer` (`ARCHS`); the baselines (Spikformer, Spikingformer, the Spike-driven
Transformer v1 and V2, STMixer) are one class per family (`BASELINE_ARCHS`): V2 (`MetaSpikeFormer`) is not one-stage and has
its own argument check."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, get_type_hints

from torch import nn

from ..errors import ConfigError
from ._one_stage import check_arguments as check_baseline_arguments, constructor_parameters
from .msvit import MSVIT_ARCHS, SpikingTransformer, check_arguments
from .qkformer import QKFORMER_ARCHS
from .spike_driven_transformer import SDT_ARCHS, SpikeDrivenTransformer
from .spikformer import SPIKFORMER_ARCHS, Spikformer
from .spikingformer import SPIKINGFORMER_ARCHS, Spikingformer
from .stmixer import STMIXER_ARCHS, STMixer
from . import spike_driven_transformer_v2 as sdt_v2

__all__ = ["ARCHS", "MODEL_NAMES", "ALL_ARCHS", "ALL_MODEL_NAMES", "BASELINE_ARCHS", "BASELINE_NAMES", "model_class",
           "model_parameters",
           "check_model_arguments", "closest_model", "unknown_model"]

# MSViT and QKFormer: `SpikingTransformer`; the one-stage families (the baselines): a class each
ARCHS: dict[str, dict[str, Any]] = {**MSVIT_ARCHS, **QKFORMER_ARCHS}
MODEL_NAMES = tuple(ARCHS)
BASELINE_CLASSES = {**{name: Spikformer for name in SPIKFORMER_ARCHS},
                    **{name: Spikingformer for name in SPIKINGFORMER_ARCHS},
                    **{name: SpikeDrivenTransformer for name in SDT_ARCHS},
                    **{name: sdt_v2.MetaSpikeFormer for name in sdt_v2.SDT_V2_ARCHS},
                    **{name: STMixer for name in STMIXER_ARCHS}}
BASELINE_ARCHS: dict[str, dict[str, Any]] = {**SPIKFORMER_ARCHS, **SPIKINGFORMER_ARCHS, **SDT_ARCHS,
                                             **sdt_v2.SDT_V2_ARCHS, **STMIXER_ARCHS}
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
    elif cls is sdt_v2.MetaSpikeFormer:
        sdt_v2.check_arguments(args, labels)
    else:
        check_baseline_arguments(cls, args, labels)


def model_parameters(name: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The constructor arguments of the registered model `name`, and their type hints."""
    cls = model_class(name)
    if cls is SpikingTransformer:
        return dict(inspect.signature(cls).parameters), get_type_hints(cls.__init__)
    if cls is sdt_v2.MetaSpikeFormer:
        return sdt_v2.constructor_parameters()
    return constructor_parameters(cls)

