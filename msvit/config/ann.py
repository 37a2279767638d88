"""timm's ANN models in the same loop: which names are ANNs, the settings that only a spiking model reads, and the
model's arguments checked against its timm constructor.

A model name that timm knows and this package does not register (`deit_tiny_patch16_224`, `resnet18`, ...) is an
ANN: no T, no spikes. It trains and evaluates through the same recipes; the data's `img_size` and `num_classes` feed
its constructor. The spiking-only settings (`SPIKING_ONLY`) are refused when given on the command line and said to
have no effect, in one line, when a recipe sets them; the run then records their neutral values (T 1, no coupling,
no TET, no firing watch). Event data (DVS) is refused: an ANN takes images.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Mapping

from ..errors import ConfigError
from ..models._registry import ALL_ARCHS, ALL_MODEL_NAMES
from .settings import DEFAULTS

__all__ = ["is_ann", "unknown_model_name", "SPIKING_ONLY", "refuse_spiking_settings", "ann_run_settings",
           "ann_arguments", "check_ann_kwargs", "ann_class", "ANN_WORDS"]

ANN_WORDS = "an ANN (timm): no T, no spikes"
# the settings only a spiking model reads, with the value an ANN's run records for each
SPIKING_ONLY: dict[str, Any] = {"time_step": 1, "batch_coupled_ssa": False, "neuron_backend": "auto", "tet": False,
                                "tet_means": DEFAULTS["tet_means"], "tet_lambda": DEFAULTS["tet_lambda"],
                                "watch_firing": False, "pack_saved_spikes": False, "energy": False,
                                "compare_ssa_coupling": False}
_EVENT_DATASETS = ("cifar10_dvs", "dvs128_gesture")


def is_ann(name: Any) -> bool:
    """True for a model name that timm knows and this package does not register (its pretrained tag allowed)."""
    if not isinstance(name, str) or name in ALL_ARCHS:
        return False
    import timm

    return timm.is_model(name)


def unknown_model_name(name: str, where: str = "model") -> ConfigError:
    """The error for a name that is neither ours nor timm's: the closest of ours, else the closest timm name."""
    close = difflib.get_close_matches(str(name), ALL_MODEL_NAMES, n=1, cutoff=0.6)
    if close:
        return ConfigError(f"{where} {name!r} is not a registered model; did you mean '{close[0]}'?")
    import timm

    other = difflib.get_close_matches(str(name), timm.list_models(), n=1, cutoff=0.8)
    hint = (f"did you mean timm's ANN '{other[0]}'?" if other else
            "python -m msvit.zoo lists the registered models, a folder's model.py those that suit it, "
            "timm.list_models() the ANNs")
    return ConfigError(f"{where} {name!r} is not a registered model nor a timm model; {hint}")


def refuse_spiking_settings(cfg: Mapping[str, Any], sources: Mapping[str, str] | None) -> None:
    """For an ANN (`cfg['model']`), a ConfigError for a spiking-only setting given on the command line; the data
    must be images."""
    name = cfg["model"]
    for key in SPIKING_ONLY:
        source = (sources or {}).get(key, "")
        if source.startswith("command line"):
            flag = source.removeprefix("command line").strip() or f"--{key.replace('_', '-')}"
            energy = ("; its energy is its MACs x 4.6 pJ (msvit.energy.ann.ann_energy)" if key == "energy" else "")
            raise ConfigError(f"{source}: {name} is {ANN_WORDS}; {key} is a spiking model's setting and has no "
                              f"effect on it: drop {flag}{energy}")
    dataset = str(cfg.get("dataset") or "").lower().replace("-", "_")
    if dataset in _EVENT_DATASETS:
        raise ConfigError(f"model {name} is {ANN_WORDS}, and dataset {cfg['dataset']} gives event frames over T: "
                          f"train an ANN on an image dataset (digits, cifar10, cifar100, imagenet)")


def ann_run_settings(cfg: dict[str, Any]) -> str:
    """Set the spiking-only settings of an ANN's run to their neutral values; returns the run header's line that
    says what the model is and which of the recipe's settings have no effect on it."""
    ignored = [f"{key} {_flow(cfg[key])}" for key, neutral in SPIKING_ONLY.items()
               if cfg.get(key) not in (neutral, DEFAULTS[key])]
    cfg.update(SPIKING_ONLY)
    cls = ann_class(cfg["model"]).__name__
    line = ANN_WORDS.replace("(timm)", f"(timm's {cls})")
    if ignored:
        line += f"; no effect on it: {', '.join(ignored)} (from {cfg.get('config') or 'the settings'})"
    return line


def _flow(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@functools.lru_cache(maxsize=None)
def ann_class(name: str) -> type:
    """The class of timm's model `name`, built once with its defaults on the meta device (no memory, no download)."""
    import timm
    import torch

    with torch.device("meta"):
        return type(timm.create_model(name, pretrained=False))


def _constructor(name: str) -> tuple[dict[str, inspect.Parameter], bool]:
    params = dict(inspect.signature(ann_class(name).__init__).parameters)
    params.pop("self", None)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: p for k, p in params.items() if p.kind is not p.VAR_KEYWORD}, takes_any


def ann_arguments(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The keyword arguments of an ANN's `timm.create_model` from `cfg`, each with the setting it comes from: the
    data's num_classes and img_size (when its constructor takes one), the legacy dim/num_heads/mlp_ratio, then
    model_kwargs (an img_size there must be the data's)."""
    params, takes_any = _constructor(cfg["model"])
    kwargs: dict[str, Any] = {}
    labels: dict[str, str] = {}
    if cfg.get("num_classes") is not None:
        kwargs["num_classes"], labels["num_classes"] = cfg["num_classes"], "num_classes"
    if cfg.get("img_size") is not None and ("img_size" in params or takes_any):
        kwargs["img_size"], labels["img_size"] = cfg["img_size"], "img_size"
    for legacy, arg in (("dim", "embed_dim"), ("num_heads", "num_heads"), ("mlp_ratio", "mlp_ratio")):
        if cfg.get(legacy) is not None:
            kwargs[arg], labels[arg] = cfg[legacy], legacy
    given = dict(cfg.get("model_kwargs") or {})
    if "img_size" in kwargs and given.get("img_size", kwargs["img_size"]) != kwargs["img_size"]:
        raise ConfigError(f"model_kwargs.img_size {given['img_size']} differs from img_size {kwargs['img_size']}, "
                          f"the data's input size: set --img-size {given['img_size']} and drop "
                          f"model_kwargs.img_size")
    kwargs.update(given)
    labels.update({key: f"model_kwargs.{key}" for key in given})
    return kwargs, labels


def check_ann_kwargs(name: str, kwargs: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`kwargs` checked against the constructor of timm's model `name`: unknown names (with the closest), then
    one build on the meta device, whose failure (an assertion, a bad value) becomes a one-line ConfigError."""
    params, takes_any = _constructor(name)
    labels = {key: (labels or {}).get(key, key) for key in kwargs}
    cls = ann_class(name).__name__
    for key in kwargs:
        if key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
            raise ConfigError(f"{labels[key]}: the loop builds {name} without timm's pretrained weights; to start "
                              f"from weights, use --finetune PATH")
        if key not in params and not takes_any:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its arguments: {', '.join(params)}"
            raise ConfigError(f"{labels[key]} is not an argument of {name} (timm's {cls}); {hint}")
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, IndexError) as exc:
        given = ", ".join(f"{labels[k]} {_flow(v)}" for k, v in kwargs.items())
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"timm's {cls} cannot build {name} with {given}: {reason}") from None
    return dict(kwargs)
