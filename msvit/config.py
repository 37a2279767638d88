"""Training and evaluation settings: defaults, YAML recipes, command-line overrides, validation.

Every setting has a default, a --help group and a description in `SETTINGS` (`DEFAULTS` holds the defaults
alone); a dataset folder's YAML recipe sets some of them and the command line (`--key value`) overrides any of
them: DEFAULTS < YAML < command line. Each value is checked against the setting's type (inferred from its
default, or listed in `TYPES`) and, for a few settings, against a list of choices; the resolved settings then
against their ranges and each other (`check_config`), and the model's arguments against its constructor
(`check_model_kwargs`). A bad value is a `ConfigError` whose one-line message names the key and the fix.
"""
from __future__ import annotations

import argparse
import collections.abc
import copy
import difflib
import inspect
import logging
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping, NamedTuple, NoReturn, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError, UserError
from .neurons import BACKENDS

__all__ = ["DEFAULTS", "SETTINGS", "GROUPS", "TYPES", "CHOICES", "MODEL_KEYS", "ConfigError", "ArgumentParser",
           "load_config", "parse_args", "parse_model_kwargs", "check_config", "check_model_kwargs",
           "command_line_keys", "model_arguments", "model_kwargs", "restore_model_settings", "restore_run_settings",
           "save_config"]

# Keys that define the network: test.py and msvit.energy take them from a checkpoint's saved config.
# num_classes is not among them: it belongs to the dataset evaluated, so a checkpoint trained on
# another dataset fails to load with its head keys listed instead of being scored nonsensically.
MODEL_KEYS = ("model", "model_kwargs", "time_step", "dim", "num_heads", "mlp_ratio", "batch_coupled_ssa")
_log = logging.getLogger("msvit")


class Setting(NamedTuple):
    default: Any
    group: str   # one of GROUPS: where --help lists it
    help: str    # one line for --help


GROUPS = ("model", "data", "optimisation", "schedule", "augmentation", "run", "evaluation")
NO_EFFECT = "(legacy: accepted, no effect)"  # keys of the authors' recipes that nothing reads

# Every setting: its default, its --help group and its description, in --help order.
SETTINGS: dict[str, Setting] = {
    "model": Setting(None, "model", "registered model; the folder's model.py lists those that suit its dataset"),
    "model_kwargs": Setting({}, "model", "more model arguments, a YAML mapping checked against the model, e.g. "
                            "{embed_dim: 192, num_heads: 4, depths: [1, 1, 1]}; wins over dim/num_heads/mlp_ratio"),
    "num_classes": Setting(None, "model", "classifier outputs; null: the dataset's class count"),
    "time_step": Setting(4, "model", "T: time steps the network runs each input for (DVS: frames per sample)"),
    "batch_coupled_ssa": Setting(True, "model", "SSA's output neuron integrates along T*B as in the authors' "
                                 "release (true) or per sample (false)"),
    "neuron_backend": Setting("auto", "model", "LIF kernels; auto: CuPy for CUDA inputs when it works, else torch"),
    "dim": Setting(None, "model", "legacy spelling of model_kwargs.embed_dim: feeds the model"),
    "num_heads": Setting(None, "model", "legacy spelling of model_kwargs.num_heads: feeds the model"),
    "mlp_ratio": Setting(None, "model", "legacy spelling of model_kwargs.mlp_ratio: feeds the model"),
    "layer": Setting(None, "model", f"the authors' block count {NO_EFFECT}; blocks come from model_kwargs.depths"),
    "depths": Setting(None, "model", f"the authors' depth {NO_EFFECT}; use model_kwargs.depths"),
    "patch_size": Setting(None, "model", f"the authors' patch size {NO_EFFECT}; the model's stem fixes it"),

    "dataset": Setting(None, "data", "which dataset, split and input pipeline"),
    "data_dir": Setting("", "data", "the dataset's folder"),
    "download": Setting(False, "data", "fetch a missing dataset into data_dir (CIFAR, CIFAR10-DVS)"),
    "verify_data": Setting(True, "data", "check downloaded archives and files against their published MD5 sums"),
    "img_size": Setting(None, "data", "image datasets: input height and width in pixels; null: 224 (digits: 32)"),
    "mean": Setting(None, "data", "per-channel normalisation mean; null: ImageNet's"),
    "std": Setting(None, "data", "per-channel normalisation standard deviation; null: ImageNet's"),
    "crop_pct": Setting(None, "data", "evaluation: centre crop of img_size / crop_pct; null: timm's default"),
    "interpolation": Setting("bicubic", "data", "evaluation: resize interpolation"),
    "workers": Setting(4, "data", "DataLoader worker processes per process; 0: load in the main process"),
    "pin_mem": Setting(True, "data", "page-locked host memory for faster copies to CUDA"),

    "opt": Setting("adamw", "optimisation", "optimizer, any name timm.optim.create_optimizer_v2 takes"),
    "lr": Setting(None, "optimisation", "peak learning rate; null: blr x effective batch / 256"),
    "blr": Setting(None, "optimisation", "base learning rate when lr is null: lr = blr x batch_size x accum_iter "
                   "x processes / 256"),
    "weight_decay": Setting(0.05, "optimisation", "weight decay (not applied to biases and norm parameters)"),
    "opt_eps": Setting(1e-8, "optimisation", "optimizer epsilon (Adam family)"),
    "opt_betas": Setting([0.9, 0.999], "optimisation", "optimizer betas (Adam family)"),
    "momentum": Setting(0.9, "optimisation", "momentum of the optimizers that have one (SGD family)"),
    "clip_grad": Setting(None, "optimisation", "clip the gradient norm to this; null: no clipping"),
    "batch_size": Setting(64, "optimisation", "training batch per process (with the batch-coupled SSA, part of "
                          "the network)"),
    "accum_iter": Setting(1, "optimisation", "batches whose gradients add up to one optimizer update"),
    "smoothing": Setting(0.1, "optimisation", "label smoothing"),
    "amp": Setting(True, "optimisation", "mixed precision on CUDA (CPU runs in float32)"),
    "amp_dtype": Setting("float16", "optimisation", "the mixed-precision type"),
    "model_ema": Setting(False, "optimisation", "also keep and evaluate an exponential moving average of the weights"),
    "model_ema_decay": Setting(0.9998, "optimisation", "decay of that average per update"),
    "sync_bn": Setting(False, "optimisation", "synchronise BatchNorm statistics across CUDA processes"),

    "sched": Setting("cosine", "schedule", "learning-rate schedule: timm's cosine with warmup"),
    "epochs": Setting(300, "schedule", "length of the cosine in epochs; cooldown_epochs follow"),
    "cooldown_epochs": Setting(0, "schedule", "epochs at min_lr after the cosine"),
    "warmup_epochs": Setting(5, "schedule", "epochs of linear warmup from warmup_lr"),
    "warmup_lr": Setting(1e-5, "schedule", "learning rate the warmup starts from"),
    "warmup_prefix": Setting(False, "schedule", "warm up before the cosine starts (true) or over its first "
                             "epochs (false)"),
    "min_lr": Setting(1e-5, "schedule", "learning rate at the end of the cosine and during the cooldown"),
    "sched_on_updates": Setting(False, "schedule", "step the schedule at every optimizer update, not every epoch"),

    "scale": Setting([0.08, 1.0], "augmentation", "random-resized-crop area range"),
    "ratio": Setting([0.75, 1.3333333333], "augmentation", "random-resized-crop aspect-ratio range"),
    "hflip": Setting(0.5, "augmentation", "horizontal flip probability"),
    "color_jitter": Setting(0.0, "augmentation", "colour jitter strength (ignored with aa)"),
    "train_interpolation": Setting("bicubic", "augmentation", "training resize interpolation"),
    "aa": Setting(None, "augmentation", "timm auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1; null: none"),
    "reprob": Setting(0.0, "augmentation", "random-erasing probability"),
    "remode": Setting("pixel", "augmentation", "random-erasing fill"),
    "recount": Setting(1, "augmentation", "random-erasing regions per image"),
    "dvs_aug": Setting(False, "augmentation", "DVS: event-frame augmentation of the training split"),
    "mixup": Setting(0.0, "augmentation", "mixup alpha; 0: off (mixup and cutmix need an even batch_size)"),
    "cutmix": Setting(0.0, "augmentation", "cutmix alpha; 0: off"),
    "cutmix_minmax": Setting(None, "augmentation", "cutmix box size range as image fractions (overrides cutmix)"),
    "mixup_prob": Setting(1.0, "augmentation", "probability that a batch is mixed"),
    "mixup_switch_prob": Setting(0.5, "augmentation", "probability of cutmix instead of mixup when both are on"),
    "mixup_mode": Setting("batch", "augmentation", "mix parameters drawn per batch, pair or element"),
    "mixup_off_epoch": Setting(0, "augmentation", "epoch from which mixup and cutmix stop; 0: never"),

    "experiment": Setting("", "run", "run folder name under output/<dataset>/ when output is empty "
                          "(default: the model's name and the time)"),
    "output": Setting("", "run", "run folder (config.yaml, log.txt, summary.csv, last.pth, best.pth)"),
    "resume": Setting("", "run", "checkpoint to continue, or auto: output's last.pth (a new run when it has none)"),
    "seed": Setting(42, "run", "random seed of initialisation, shuffling and augmentation"),
    "log_interval": Setting(50, "run", "optimizer updates between progress lines (when no progress bar shows)"),
    "checkpoint_interval": Setting(0, "run", "optimizer updates between mid-epoch checkpoints (last.pth); "
                                   "0: at epoch ends only"),
    "channels_last": Setting(False, "run", "channels-last memory format (see docs/benchmarks.md)"),
    "compile": Setting(False, "run", "torch.compile the training forward (test.py: the evaluation forward)"),
    "compile_mode": Setting("default", "run", "torch.compile mode; reduce-overhead adds CUDA graphs on GPU"),
    "grad_checkpointing": Setting(False, "run", "recompute each block's activations in backward instead of storing "
                                                "them: far less memory, about one more forward per step"),
    "pack_saved_spikes": Setting(True, "run", "keep the spikes that layers save for backward as bits: the same "
                                              "step in less memory (docs/benchmarks.md)"),

    "checkpoint": Setting("", "evaluation", "test.py, msvit.energy: the weights to evaluate"),
    "val_batch_size": Setting(None, "evaluation", "evaluation batch per process; null: batch_size"),
    "json": Setting(False, "evaluation", "test.py, msvit.energy: print one JSON object on stdout"),
    "energy": Setting(False, "evaluation", "test.py: also estimate the energy per image"),
    "compare_ssa_coupling": Setting(False, "evaluation", "test.py: evaluate again with the other SSA setting and "
                                    "report both"),
}
DEFAULTS: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}

# The accepted types of the keys whose default is None or that accept several types; every other
# key takes the type of its default (a list default: a list of its first element's type).
# `object` accepts anything, `None` accepts null.
TYPES: dict[str, tuple[Any, ...]] = {
    "dataset": (str, None),
    "model": (str, None),
    "num_classes": (int, None),
    "img_size": (int, None),
    "layer": (object,),
    "depths": (object,),
    "patch_size": (object,),
    "dim": (int, None),
    "num_heads": (int, None),
    "mlp_ratio": (float, None),
    "mean": (list[float], None),
    "std": (list[float], None),
    "crop_pct": (float, None),
    "aa": (str, None),
    "lr": (float, None),
    "blr": (float, None),
    "clip_grad": (float, None),
    "val_batch_size": (int, None),
    "cutmix_minmax": (list[float], None),
}

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("cifar10", "cifar100", "imagenet", "dvs128_gesture", "cifar10_dvs", "digits"),
    "neuron_backend": BACKENDS,
    "amp_dtype": ("float16", "bfloat16"),
    "mixup_mode": ("batch", "pair", "elem"),
    "remode": ("pixel", "const", "rand"),
    "sched": ("cosine",),
    "compile_mode": COMPILE_MODES,
}

# The lowest value of integer settings (null, where allowed, means unset and passes).
MINIMUM: dict[str, int] = {
    "batch_size": 1, "val_batch_size": 1, "accum_iter": 1, "time_step": 1, "num_classes": 1, "img_size": 1,
    "workers": 0, "epochs": 1, "cooldown_epochs": 0, "warmup_epochs": 0, "mixup_off_epoch": 0, "log_interval": 1,
    "checkpoint_interval": 0,
}

# Values of the authors' recipes that mean one of our choices (their timm-style dataset names).
_ALIASES: dict[str, dict[str, str]] = {
    "dataset": {"torch/cifar10": "cifar10", "torch/cifar100": "cifar100"},
}

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               dict: "a mapping", None: "null"}
_PLURAL_NAMES = {int: "integers", float: "floats", str: "strings"}
_INVALID = object()                 # what _coerce returns for a value of the wrong type
_LEGACY_LAUNCH_FLAGS = {"local_rank"}   # torch.distributed.launch's flag; ranks come from the environment
_OPTION = re.compile(r"^--?[A-Za-z]")   # "-1e-3" is a value, "-h" and "--lr" are options


# ---------------------------------------------------------------- validation

def _types(key: str) -> tuple[Any, ...]:
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


def _check(key: str, value: Any, source: str) -> Any:
    """`value` validated and converted for `key`; a ConfigError naming `source` when it does not fit."""
    types = _types(key)
    for kind in types:
        coerced = _coerce(value, kind)
        if coerced is not _INVALID:
            break
    else:
        expected = " or ".join(_type_name(kind) for kind in types)
        raise ConfigError(f"{source}: key {key!r} expects {expected}, got {value!r} "
                          f"({type(value).__name__})")
    if key in CHOICES and coerced is not None:
        coerced = _ALIASES.get(key, {}).get(coerced, coerced)
        if coerced not in CHOICES[key]:
            raise ConfigError(f"{source}: key {key!r} must be one of {', '.join(CHOICES[key])}; "
                              f"got {value!r}")
    return coerced


def _suggestion(name: str, prefix: str = "") -> str:
    """'; did you mean ...?' for the known key closest to `name`, or a pointer to --help."""
    close = difflib.get_close_matches(name, DEFAULTS, n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else "; see --help for the list of keys"


def _flow(value: Any) -> str:
    """`value` as one line of YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def check_config(cfg: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> None:
    """Check resolved settings: integer ranges (MINIMUM), the optimizer name, a learning rate for a dataset's
    run, an even batch for mixup, and the model's arguments (`check_model_kwargs`) when `cfg['model']` is a
    registered model. `sources` says where each key was set (a file, 'command line --flag') for the message."""
    def where(key: str) -> str:
        return (sources or {}).get(key, "default")

    for key, low in MINIMUM.items():
        if cfg[key] is not None and cfg[key] < low:
            raise ConfigError(f"{where(key)}: {key} must be {low} or more, got {cfg[key]}")
    _check_optimizer(cfg["opt"], where("opt"))
    # a config without a dataset (no recipe) only builds models; one with a dataset is meant to train
    if cfg["dataset"] is not None and cfg["lr"] is None and cfg["blr"] is None:
        raise ConfigError("lr and blr are both null: set --lr (the learning rate) or --blr (scaled by the "
                          "effective batch / 256)")
    mixing = [key for key in ("mixup", "cutmix") if cfg[key] > 0]
    mixing += ["cutmix_minmax"] if cfg["cutmix_minmax"] is not None else []
    if mixing and cfg["batch_size"] % 2:
        on = ", ".join(f"{key} {_flow(cfg[key])} from {where(key)}" for key in mixing)
        off = " ".join(f"{_flag(key)} {'null' if key == 'cutmix_minmax' else 0}" for key in mixing)
        raise ConfigError(f"{where('batch_size')}: batch_size {cfg['batch_size']} is odd, but mixup pairs the "
                          f"samples of a batch ({on}): use an even --batch-size, or {off}")
    from .models import ARCHS

    if cfg["model"] in ARCHS:
        check_model_kwargs(cfg["model"], *model_arguments(cfg))


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
    `model` (names, non-null values of the annotated types, then `models.check_arguments`) and converted
    (YAML's 1e-1 is a string; tuples become lists). `labels` say how the user spelt each key, e.g.
    'model_kwargs.embed_dim' or 'time_step'; a ConfigError names them, and arguments the user did not set
    as the model's defaults."""
    from .models import ARCHS, SpikingTransformer, check_arguments

    if model not in ARCHS:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(ARCHS)}")
    labels = {key: (labels or {}).get(key, key) for key in kwargs}
    params = inspect.signature(SpikingTransformer).parameters
    hints = get_type_hints(SpikingTransformer.__init__)
    defaults = {**{k: p.default for k, p in params.items() if p.default is not p.empty}, **ARCHS[model]}
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
            example = _flow(defaults[key]) if key in defaults else "VALUE"
            raise ConfigError(f"{name} is null: give it a value, as in {{{key}: {example}}} "
                              f"(YAML needs a space after the colon)")
        kind = _argument_type(hints[key])
        coerced = _coerce(list(value) if isinstance(value, tuple) else value, kind)
        if coerced is _INVALID:
            raise ConfigError(f"{name} expects {_type_name(kind)}, got {value!r} ({type(value).__name__})")
        checked[key] = coerced
    check_arguments({**defaults, **checked}, labels)
    return checked


# ---------------------------------------------------------------- YAML files

class _Loader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings of one YAML recipe, validated: only the keys it sets, values converted to
    their key's type. Raises ConfigError for a missing or malformed file, an unknown key or a bad value."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: could not parse YAML ({problem})") from None
    if data is None:                    # an empty file sets nothing
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of key: value, "
                          f"got {type(data).__name__}")
    config = {}
    for key, value in data.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown key {str(key)!r} in {path}{_suggestion(str(key))}")
        config[key] = _check(key, value, str(path))
    return config


# ---------------------------------------------------------------- command line

def _split_options(argv: list[str]) -> list[tuple[str, str, list[str]]]:
    """`argv` as (option as typed, key with underscores, value tokens) triples."""
    options: list[tuple[str, str, list[str]]] = []
    for token in argv:
        if _OPTION.match(token):
            flag, eq, value = token.partition("=")
            options.append((flag, flag.lstrip("-").replace("-", "_"), [value] if eq else []))
        elif options:
            options[-1][2].append(token)
        else:
            raise ConfigError(f"unexpected argument {token!r}; settings are given as --key value")
    return options


def _parse_value(text: str) -> Any:
    """`text` read as a YAML value; the text itself when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _option_value(flag: str, key: str, tokens: list[str]) -> Any:
    """The validated value of `--key tokens...`."""
    source = f"command line {flag}"
    types = _types(key)
    if not tokens:
        if bool in types:               # a bare boolean flag switches it on
            return True
        raise ConfigError(f"{source}: option needs a value")
    if any(getattr(kind, "__origin__", None) is list for kind in types):
        # --mean 0.5 0.5 0.5, --mean 0.5,0.5,0.5, --mean "[0.5, 0.5, 0.5]" and --mean null
        value = _parse_value(tokens[0]) if len(tokens) == 1 else [_parse_value(t) for t in tokens]
        if value is not None and not isinstance(value, list):
            value = _parse_value(f"[{tokens[0]}]")
    elif len(tokens) == 1:
        value = _parse_value(tokens[0])
    else:
        raise ConfigError(f"{source}: option takes one value, got {len(tokens)}: {' '.join(tokens)} "
                          f"(quote a value that holds spaces)")
    try:
        return _check(key, value, source)
    except ConfigError:
        if str in types and len(tokens) == 1:   # --experiment 2024, --data-dir ~ : plain text
            return _check(key, tokens[0], source)
        raise


def parse_model_kwargs(text: str, flag: str = "--model-kwargs") -> dict[str, Any]:
    """The value of `flag TEXT` read as train.py reads --model-kwargs: a YAML mapping (JSON is valid YAML)."""
    return _option_value(flag, "model_kwargs", [text])


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the msvit CLIs: a bad argument raises UserError, which `errors.cli_entry` prints as one
    `error: ...` line with exit code 2 (argparse itself prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _print_help(config_path: str | None) -> None:
    """The keys by group, each with its value after the recipe `config_path` and its description."""
    from .runfolder import NETWORK_KEYS

    values = {**DEFAULTS, **(load_config(config_path) if config_path is not None else {})}
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
    print(f"usage: {prog} [--config FILE] [--KEY VALUE ...]")
    print(f"\n  --config FILE  the YAML recipe (default: {config_path or 'none'})")
    recipe = f"after the recipe, {Path(config_path).name}" if config_path else "without a recipe"
    print("\n" + textwrap.fill(
        "Every key can be set in the recipe and overridden here as --key value or --key=value (dashes and "
        "underscores are equivalent, values are read as YAML, a bare boolean flag means true). The values shown "
        f"are the defaults {recipe}. A resumed run keeps {', '.join(NETWORK_KEYS)}: they define the network and "
        "the data split.", width=110))
    shown = {key: _flow(value) for key, value in values.items()}
    key_width = max(map(len, DEFAULTS)) + 2
    value_width = min(max(map(len, shown.values())), 24)
    for group in GROUPS:
        print(f"\n{group}:")
        for key, setting in SETTINGS.items():
            if setting.group == group:
                choices = f" ({'/'.join(CHOICES[key])})" if key in CHOICES else ""
                print(f"  {_flag(key):<{key_width}}  {shown[key]:<{value_width}}  {setting.help}{choices}")


def command_line_keys(argv: list[str] | None = None) -> list[str]:
    """The keys that `argv` (default sys.argv[1:]) sets, in order, as `parse_args` reads them (no `config`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keys = [key for _, key, _ in _split_options(argv) if key in DEFAULTS]
    return list(dict.fromkeys(keys))


def parse_args(argv: list[str] | None = None,
               default_config: str | Path | None = None) -> dict[str, Any]:
    """The settings of a train.py / test.py run: DEFAULTS, then the YAML of `--config FILE`
    (default `default_config`), then the `--key value` overrides of `argv` (default sys.argv[1:]).

    Returns every key of DEFAULTS plus `config`, the YAML path used (None without one).
    `--help` prints the keys with their values after the recipe and exits 0; a bad option or setting
    (see `check_config`) raises ConfigError.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = None if default_config is None else str(default_config)
    if "-h" in argv or "--help" in argv:
        try:
            given = [tokens[0] for _, key, tokens in _split_options(argv) if key == "config" and len(tokens) == 1]
        except ConfigError:
            given = []
        _print_help(given[-1] if given else config_path)
        raise SystemExit(0)
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for flag, key, tokens in _split_options(argv):
        if key in _LEGACY_LAUNCH_FLAGS:
            continue
        if key == "config":
            if len(tokens) != 1:
                raise ConfigError(f"command line {flag}: option takes one file name")
            config_path = tokens[0]
        elif key in DEFAULTS:
            overrides[key] = _option_value(flag, key, tokens)
            sources[key] = f"command line {flag}"
        else:
            raise ConfigError(f"unknown option {flag!r}{_suggestion(key, prefix='--')}")
    cfg = copy.deepcopy(DEFAULTS)
    if config_path is not None:
        recipe = load_config(config_path)
        cfg.update(recipe)
        sources = {**dict.fromkeys(recipe, config_path), **sources}
    cfg.update(overrides)
    cfg["config"] = config_path
    check_config(cfg, sources)
    return cfg


# ---------------------------------------------------------------- using a config

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
    kwargs.update(cfg["model_kwargs"])
    labels.update({key: f"model_kwargs.{key}" for key in cfg["model_kwargs"]})
    return kwargs, labels


def model_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `timm.create_model(cfg['model'], **kwargs)`: num_classes (when
    set), T, neuron_backend, batch_coupled_ssa, the legacy dim/num_heads/mlp_ratio when set, then
    cfg['model_kwargs']."""
    return model_arguments(cfg)[0]


def restore_model_settings(cfg: dict[str, Any], checkpoint: Any, keys: tuple[str, ...] = MODEL_KEYS) -> None:
    """Set `keys` of `cfg` from the config saved in one of our checkpoints (the authors' carry none).

    A checkpoint of ours saved before `batch_coupled_ssa` existed was trained with per-sample SSA, so it
    gets False, said in one log line.
    """
    saved = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(saved, Mapping):
        return
    requested = cfg.get("batch_coupled_ssa")
    cfg.update({k: saved[k] for k in keys if k in saved})
    if "batch_coupled_ssa" not in keys:
        return
    if "batch_coupled_ssa" not in saved:
        cfg["batch_coupled_ssa"] = False
        _log.info("the checkpoint predates the batch_coupled_ssa setting: its SSA output neuron ran per sample, "
                  "so it runs per sample here (batch_coupled_ssa false)")
    elif saved["batch_coupled_ssa"] != requested:
        _log.info("batch_coupled_ssa %s, as the checkpoint was trained (the recipe or command line says %s); "
                  "test.py --compare-ssa-coupling evaluates both", str(saved["batch_coupled_ssa"]).lower(),
                  str(requested).lower())


# what evaluation may change from the run's settings when the command line says so; the rest of MODEL_KEYS is the
# trained network. DATA_KEYS come from the run too unless given: the folder it read, its resolution, its workers.
EVAL_MAY_CHANGE = ("time_step",)
DATA_KEYS = ("data_dir", "verify_data", "workers", "pin_mem", "val_batch_size", "img_size", "mean", "std",
             "crop_pct", "interpolation")


def restore_run_settings(cfg: dict[str, Any], checkpoint: Any, given: tuple[str, ...] | list[str] = ()) -> None:
    """Take the network (MODEL_KEYS) and the data settings (DATA_KEYS) from the config saved in one of our
    checkpoints, except the keys `given` on the command line that evaluation may change."""
    keys = [k for k in MODEL_KEYS if not (k in given and k in EVAL_MAY_CHANGE)]
    restore_model_settings(cfg, checkpoint, keys=tuple(keys))
    restore_model_settings(cfg, checkpoint, keys=tuple(k for k in DATA_KEYS if k not in given))


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the keys of DEFAULTS in `cfg` to `path` as YAML, in DEFAULTS order, atomically
    (a temporary file, then os.replace). `load_config(path)` reads them back unchanged."""
    path = Path(path)
    header = f"# resolved settings (recipe: {cfg.get('config') or 'none'})\n"
    body = yaml.safe_dump({key: cfg[key] for key in DEFAULTS if key in cfg},
                          sort_keys=False, default_flow_style=None)
    tmp = path.with_name(f".{path.name}.tmp")  # open() honours the umask: readable by the group, as last.pth is
    try:
        with tmp.open("w") as f:
            f.write(header + body)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
