"""Checking settings: one value against its key's type and choices, resolved settings against their ranges and
each other (`check_config`), and the model's arguments against its constructor (`check_model_kwargs`). A bad
value is a `ConfigError` whose one-line message names the key and the fix.
"""
from __future__ import annotations

import collections.abc
import difflib
from typing import Any, Mapping, get_args, get_origin

import yaml

from ..errors import ConfigError
from ..models._registry import ALL_ARCHS, check_model_arguments, model_class, model_parameters
from .settings import ALIASES, CHOICES, DEFAULTS, MINIMUM, TYPES

__all__ = ["check_config", "check_model_kwargs", "model_arguments", "model_kwargs", "architecture_kwargs",
           "check_value", "accepted_types", "key_suggestion", "yaml_flow", "option_flag"]

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               dict: "a mapping", None: "null"}
_PLURAL_NAMES = {int: "integers", float: "floats", str: "strings"}
_INVALID = object()                 # what _coerce returns for a value of the wrong type


def accepted_types(key: str) -> tuple[Any, ...]:
    """The types that `key` accepts."""
    if key in TYPES:
        return TYPES[key]
    default = DEFAULTS[key]
    return (list[type(default[0])],) if isinstance(default, list) else (type(default),)


def _coerce(value: Any, kind: Any) -> Any:
    """`value` converted to `kind` when it is one (ints to floats, numeric strings to floats,
    0/1 to booleans), else `_INVALID`."""
    if kind is object:
        return value
    if kind is None:
        return None if value is None else _INVALID
    if kind is bool:
        if isinstance(value, bool):
            return value
        return bool(value) if type(value) is int and value in (0, 1) else _INVALID
    if kind is int:
        return value if type(value) is int else _INVALID
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):         # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if kind is dict:
        return value if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _INVALID
    if getattr(kind, "__origin__", None) is list:
        if not isinstance(value, list):
            return _INVALID
        items = [_coerce(item, kind.__args__[0]) for item in value]
        return _INVALID if any(item is _INVALID for item in items) else items
    return value if isinstance(value, kind) else _INVALID


def _type_name(kind: Any) -> str:
    if getattr(kind, "__origin__", None) is list:
        return f"a list of {_PLURAL_NAMES[kind.__args__[0]]}"
    return _TYPE_NAMES[kind]


def check_value(key: str, value: Any, source: str) -> Any:
    """`value` validated and converted for `key`; a ConfigError naming `source` when it does not fit."""
    types = accepted_types(key)
    for kind in types:
        coerced = _coerce(value, kind)
        if coerced is not _INVALID:
            break
    else:
        expected = " or ".join(_type_name(kind) for kind in types)
        raise ConfigError(f"{source}: key {key!r} expects {expected}, got {value!r} "
                          f"({type(value).__name__})")
    if key in CHOICES and coerced is not None:
        coerced = ALIASES.get(key, {}).get(coerced, coerced)
        if coerced not in CHOICES[key]:
            raise ConfigError(f"{source}: key {key!r} must be one of {', '.join(CHOICES[key])}; "
                              f"got {value!r}")
    return coerced


def key_suggestion(name: str, prefix: str = "") -> str:
    """'; did you mean ...?' for the known key closest to `name`, or a pointer to --help."""
    close = difflib.get_close_matches(name, DEFAULTS, n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else "; see --help for the list of keys"


def yaml_flow(value: Any) -> str:
    """`value` as one line of YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def option_flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def check_config(cfg: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> None:
    """Check resolved settings: integer ranges (MINIMUM), the optimizer name, a learning rate for a dataset's
    run, an even batch for mixup, and the model's arguments (`check_model_kwargs`) when `cfg['model']` is a
    registered model; timm's ANN: its arguments and no spiking-only setting on the command line (`config.ann`). `sources` says where each key was set (a file, 'command line --flag') for the message."""
    def where(key: str) -> str:
        return (sources or {}).get(key, "default")

    for key, low in MINIMUM.items():
        if cfg[key] is not None and cfg[key] < low:
            raise ConfigError(f"{where(key)}: {key} must be {low} or more, got {cfg[key]}")
    _check_optimizer(cfg["opt"], where("opt"))
    decay = cfg["layer_decay"]
    if decay is not None and not 0 < decay <= 1:
        raise ConfigError(f"{where('layer_decay')}: layer_decay must be in (0, 1], got {decay:g}: each group's lr "
                          f"is lr x layer_decay^depth; null (or 1) means no decay")
    if cfg["aa_ops"] is not None:
        _check_rand_augment_ops(cfg["aa"], cfg["aa_ops"], where("aa_ops"))
    if not 0 <= cfg["tet_lambda"] <= 1:
        raise ConfigError(f"{where('tet_lambda')}: tet_lambda must be in [0, 1], got {cfg['tet_lambda']:g}: TET "
                          f"weighs its MSE term by tet_lambda and the per-step criterion by 1 - tet_lambda")
    _check_distillation(cfg, where)
    _check_sml(cfg, where)
    total = cfg["epochs"] + cfg["cooldown_epochs"]
    if cfg["start_epoch"] >= total:
        raise ConfigError(f"{where('start_epoch')}: start_epoch {cfg['start_epoch']} leaves nothing to train: the "
                          f"schedule has {total} epochs (epochs + cooldown_epochs); lower --start-epoch")
    # a config without a dataset (no recipe) only builds models; one with a dataset is meant to train
    if cfg["dataset"] is not None and cfg["lr"] is None and cfg["blr"] is None:
        raise ConfigError("lr and blr are both null: set --lr (the learning rate) or --blr (scaled by the "
                          "effective batch / 256)")
    mixing = [key for key in ("mixup", "cutmix") if cfg[key] > 0]
    mixing += ["cutmix_minmax"] if cfg["cutmix_minmax"] is not None else []
    if mixing and cfg["batch_size"] % 2:
        on = ", ".join(f"{key} {yaml_flow(cfg[key])} from {where(key)}" for key in mixing)
        off = " ".join(f"{option_flag(key)} {'null' if key == 'cutmix_minmax' else 0}" for key in mixing)
        raise ConfigError(f"{where('batch_size')}: batch_size {cfg['batch_size']} is odd, but mixup pairs the "
                          f"samples of a batch ({on}): use an even --batch-size, or {off}")
    if cfg["model"] in ALL_ARCHS:
        check_model_kwargs(cfg["model"], *model_arguments(cfg))
    else:  # timm's ANN (msvit.config.ann)
        from .ann import ann_arguments, check_ann_kwargs, is_ann, refuse_spiking_settings

        if is_ann(cfg["model"]):
            refuse_spiking_settings(cfg, sources)
            check_ann_kwargs(cfg["model"], *ann_arguments(cfg))


def _check_sml(cfg: Mapping[str, Any], where: Any) -> None:
    """Surrogate module learning's weights in range; its side outputs and TET's per-step logits do not compose."""
    bad = [key for key, wrong in (("sml_lambda", not 0 <= cfg["sml_lambda"] <= 1),
                                  ("sml_alpha", cfg["sml_alpha"] < 0),
                                  ("sml_temperature", not cfg["sml_temperature"] > 0)) if wrong]
    if bad:
        key = bad[0]
        raise ConfigError(f"{where(key)}: {key} {cfg[key]:g} is out of range: sml_lambda in [0, 1], sml_alpha 0 or "
                          f"more, sml_temperature positive")
    if cfg["tet"] and cfg["model_kwargs"].get("sml"):
        raise ConfigError(f"{where('tet')}: tet with model_kwargs.sml: the side branches give one logit per sample "
                          f"(they average the time steps), TET scores each step's; drop --tet or set sml false")


# the Spike-driven Transformer V2 release's teacher names and the timm names of the same architecture and data
TEACHER_NAMES = {"caformer_b36_in21ft1k": "caformer_b36.sail_in22k_ft_in1k"}


def _check_distillation(cfg: Mapping[str, Any], where: Any) -> None:
    """alpha in [0, 1], tau positive; hard and soft need a teacher that timm knows (a typo gets the closest name)."""
    alpha, tau, kind = cfg["distillation_alpha"], cfg["distillation_tau"], cfg["distillation_type"]
    if not 0 <= alpha <= 1:
        raise ConfigError(f"{where('distillation_alpha')}: distillation_alpha must be in [0, 1], got {alpha:g}: the "
                          f"loss is (1 - alpha) x the criterion + alpha x the distillation term")
    if not tau > 0:
        raise ConfigError(f"{where('distillation_tau')}: distillation_tau must be positive, got {tau:g}")
    if kind == "none":
        return
    name = cfg["teacher_model"]
    if not name:
        raise ConfigError(f"{where('distillation_type')}: distillation_type {kind} needs a teacher: set "
                          f"--teacher-model (a timm model name, e.g. caformer_b36.sail_in22k_ft_in1k), or "
                          f"--distillation-type none")
    import timm

    if not timm.is_model(name):
        close = TEACHER_NAMES.get(name) or next(iter(difflib.get_close_matches(
            name, timm.list_models() + timm.list_pretrained(), n=1)), None)
        hint = f"did you mean {close!r}? " if close else ""
        raise ConfigError(f"{where('teacher_model')}: teacher_model {name!r} is not a timm model; {hint}"
                          f"timm.list_models() and timm.list_pretrained() list the names")


def _check_rand_augment_ops(policy: str | None, ops: list[str], source: str) -> None:
    from timm.data.auto_augment import NAME_TO_OP

    if not (policy or "").startswith("rand"):
        raise ConfigError(f"{source}: aa_ops chooses RandAugment's operations, but aa is {policy!r}: set aa to a "
                          f"rand-... policy, or aa_ops to null")
    unknown = [op for op in ops if op not in NAME_TO_OP]
    if unknown or not ops:
        raise ConfigError(f"{source}: aa_ops {ops!r}: {'unknown operations ' + ', '.join(unknown) if unknown else 'empty'}"
                          f"; timm's RandAugment knows {', '.join(NAME_TO_OP)}")


def _check_optimizer(name: str, source: str) -> None:
    from timm import optim

    if not hasattr(optim, "list_optimizers"):  # timm before 1.0.12: create_optimizer_v2 checks it
        return
    known = optim.list_optimizers()
    base = name.lower().split("_")[-1]  # create_optimizer_v2 also takes lookahead_<name>
    if base not in known:
        close = difflib.get_close_matches(base, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{source}: unknown optimizer {name!r}; {hint}timm.optim.list_optimizers() lists "
                          f"the names")


def _argument_type(hint: Any) -> Any:
    """The `_coerce` kind of a constructor annotation (a Sequence[X] is given as a list)."""
    if get_origin(hint) in (collections.abc.Sequence, list, tuple):
        return list[get_args(hint)[0]]
    return hint if hint in _TYPE_NAMES else object


def check_model_kwargs(model: str, kwargs: Mapping[str, Any],
                       labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`kwargs` of `timm.create_model(model, **kwargs)` checked against the constructor of the registered
    `model` (names, non-null values of the annotated types, then `registry.check_model_arguments`) and converted
    (YAML's 1e-1 is a string; tuples become lists). `labels` say how the user spelt each key, e.g.
    'model_kwargs.embed_dim' or 'time_step'; a ConfigError names them, and arguments the user did not set
    as the model's defaults."""
    params, hints = model_parameters(model)  # ConfigError for an unknown model
    labels = {key: (labels or {}).get(key, key) for key in kwargs}
    defaults = {**{k: p.default for k, p in params.items() if p.default is not p.empty}, **ALL_ARCHS[model]}
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = labels[key]
        if value is None and ":" in key:  # YAML reads {embed_dim:48} as the key 'embed_dim:48', no value
            arg, _, given = key.partition(":")
            raise ConfigError(f"{name} has no value: YAML needs a space after the colon, as in {{{arg}: {given}}}")
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its arguments: {', '.join(params)}"
            raise ConfigError(f"{name} is not an argument of {model}; {hint}")
        if value is None:
            example = yaml_flow(defaults[key]) if key in defaults else "VALUE"
            raise ConfigError(f"{name} is null: give it a value, as in {{{key}: {example}}} "
                              f"(YAML needs a space after the colon)")
        kind = _argument_type(hints[key])
        coerced = _coerce(list(value) if isinstance(value, tuple) else value, kind)
        if coerced is _INVALID:
            raise ConfigError(f"{name} expects {_type_name(kind)}, got {value!r} ({type(value).__name__})")
        checked[key] = coerced
    check_model_arguments(model, {**defaults, **checked}, labels)
    return checked


def model_arguments(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """`model_kwargs(cfg)` and, for each of them, the setting it comes from ('time_step', 'dim',
    'model_kwargs.embed_dim'), which `check_model_kwargs` names in its messages."""
    kwargs: dict[str, Any] = {"T": cfg["time_step"], "neuron_backend": cfg["neuron_backend"],
                              "batch_coupled_ssa": cfg["batch_coupled_ssa"]}
    labels = {"T": "time_step", "neuron_backend": "neuron_backend", "batch_coupled_ssa": "batch_coupled_ssa"}
    if cfg["num_classes"] is not None:
        kwargs["num_classes"], labels["num_classes"] = cfg["num_classes"], "num_classes"
    for legacy, name in (("dim", "embed_dim"), ("num_heads", "num_heads"), ("mlp_ratio", "mlp_ratio")):
        if cfg[legacy] is not None:
            kwargs[name], labels[name] = cfg[legacy], legacy
    sized = cfg["model"] in ALL_ARCHS and getattr(model_class(cfg["model"]), "size_dependent", False)
    if sized and cfg["img_size"] is not None:  # STMixer: parameters sized by the input, so built at the data's
        kwargs["img_size"], labels["img_size"] = cfg["img_size"], "img_size"
    kwargs.update(cfg["model_kwargs"])
    labels.update({key: f"model_kwargs.{key}" for key in cfg["model_kwargs"]})
    return kwargs, labels


def architecture_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments that make `cfg`'s model another network than the registered one: model_kwargs and the legacy
    dim/num_heads/mlp_ratio, without the run's own (T, num_classes, the neuron backend, the SSA setting)."""
    kwargs, labels = model_arguments(cfg)
    run_keys = ("time_step", "num_classes", "neuron_backend", "batch_coupled_ssa")
    return {key: value for key, value in kwargs.items() if labels[key] not in run_keys}


def model_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `timm.create_model(cfg['model'], **kwargs)`: num_classes (when
    set), T, neuron_backend, batch_coupled_ssa, the legacy dim/num_heads/mlp_ratio when set, then
    cfg['model_kwargs']."""
    return model_arguments(cfg)[0]
