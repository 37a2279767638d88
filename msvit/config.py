"""Training and evaluation settings: defaults, YAML recipes, command-line overrides, validation.

Every setting has a default in `DEFAULTS`; a dataset folder's YAML recipe sets some of them and
the command line (`--key value`) overrides any of them: DEFAULTS < YAML < command line.
Each value is checked against the setting's type (inferred from its default, or listed in
`TYPES`) and, for a few settings, against a list of choices; a bad value is a `ConfigError`
whose one-line message names the key, what it expects and what it got.
"""
from __future__ import annotations

import copy
import difflib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .neurons import BACKENDS

__all__ = ["DEFAULTS", "TYPES", "CHOICES", "MODEL_KEYS", "ConfigError", "load_config", "parse_args", "command_line_keys", "model_kwargs",
           "restore_model_settings", "save_config"]

# Keys that define the network: test.py and msvit.energy take them from a checkpoint's saved config.
# num_classes is not among them: it belongs to the dataset evaluated, so a checkpoint trained on
# another dataset fails to load with its head keys listed instead of being scored nonsensically.
MODEL_KEYS = ("model", "model_kwargs", "time_step", "dim", "num_heads", "mlp_ratio", "batch_coupled_ssa")
_log = logging.getLogger("msvit")

DEFAULTS: dict[str, Any] = {
    # experiment
    "dataset": None,
    "model": None,
    "model_kwargs": {},             # extra keyword arguments for the model, on top of the keys below
    "num_classes": None,
    "time_step": 4,
    "img_size": None,
    "experiment": "",
    "output": "",
    "resume": "",
    "seed": 42,
    "neuron_backend": "auto",
    "batch_coupled_ssa": True,      # SSA's output neuron integrates along T*B, as in the authors' release
    "checkpoint": "",               # test.py: the weights to evaluate
    "json": False,                  # test.py: print the metrics as JSON
    "energy": False,                # test.py: estimate the energy per image
    "compare_ssa_coupling": False,  # test.py: evaluate again with the other SSA setting, report both
    # the authors' cifar10.yml keys: layer, depths and patch_size are accepted and ignored,
    # dim, num_heads and mlp_ratio feed the model (see model_kwargs())
    "layer": None,
    "depths": None,
    "patch_size": None,
    "dim": None,
    "num_heads": None,
    "mlp_ratio": None,
    # data
    "data_dir": "",
    "download": False,
    "verify_data": True,
    "workers": 4,
    "pin_mem": True,
    "dvs_aug": False,
    "mean": None,
    "std": None,
    "crop_pct": None,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333],
    "hflip": 0.5,
    "color_jitter": 0.0,
    "interpolation": "bicubic",
    "train_interpolation": "bicubic",
    "aa": None,
    "reprob": 0.0,
    "remode": "pixel",
    "recount": 1,
    # optimisation
    "epochs": 300,
    "cooldown_epochs": 0,
    "warmup_epochs": 5,
    "warmup_lr": 1e-5,
    "warmup_prefix": False,
    "sched_on_updates": False,
    "lr": None,
    "blr": None,
    "min_lr": 1e-5,
    "sched": "cosine",
    "opt": "adamw",
    "opt_eps": 1e-8,
    "opt_betas": [0.9, 0.999],
    "momentum": 0.9,
    "weight_decay": 0.05,
    "clip_grad": None,
    "batch_size": 64,
    "val_batch_size": None,
    "accum_iter": 1,
    "smoothing": 0.1,
    "mixup": 0.0,
    "cutmix": 0.0,
    "cutmix_minmax": None,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "mixup_off_epoch": 0,
    "amp": True,
    "amp_dtype": "float16",
    "model_ema": False,
    "model_ema_decay": 0.9998,
    "sync_bn": False,
    "log_interval": 50,
    "checkpoint_interval": 0,       # optimizer updates between mid-epoch checkpoints (last.pth); 0: epoch ends only
    "channels_last": False,
    "compile": False,
}

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

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("cifar10", "cifar100", "imagenet", "dvs128_gesture", "cifar10_dvs", "digits"),
    "neuron_backend": BACKENDS,
    "amp_dtype": ("float16", "bfloat16"),
    "mixup_mode": ("batch", "pair", "elem"),
    "remode": ("pixel", "const", "rand"),
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
        raise ConfigError(f"{source}: option takes one value, got {len(tokens)}: {' '.join(tokens)}")
    try:
        return _check(key, value, source)
    except ConfigError:
        if str in types and len(tokens) == 1:   # --experiment 2024, --data-dir ~ : plain text
            return _check(key, tokens[0], source)
        raise


def _print_help(default_config: str | Path | None) -> None:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
    print(f"usage: {prog} [--config FILE] [--KEY VALUE ...]")
    print(f"\n  --config FILE  the YAML recipe (default: {default_config or 'none'})")
    print("\nEvery key below can be set in the YAML and overridden here as --key value or --key=value;")
    print("dashes and underscores are equivalent, values are read as YAML, a bare boolean flag means true.")
    print("Defaults, before the YAML:\n")
    width = max(map(len, DEFAULTS))
    for key, default in DEFAULTS.items():
        choices = f"  ({'/'.join(CHOICES[key])})" if key in CHOICES else ""
        shown = yaml.safe_dump(default, default_flow_style=True).removesuffix("...\n").strip()
        print(f"  --{key:<{width}}  {shown}{choices}")


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
    `--help` prints the keys and their defaults and exits 0; a bad option raises ConfigError.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        _print_help(default_config)
        raise SystemExit(0)
    config_path = None if default_config is None else str(default_config)
    overrides: dict[str, Any] = {}
    for flag, key, tokens in _split_options(argv):
        if key in _LEGACY_LAUNCH_FLAGS:
            continue
        if key == "config":
            if len(tokens) != 1:
                raise ConfigError(f"command line {flag}: option takes one file name")
            config_path = tokens[0]
        elif key in DEFAULTS:
            overrides[key] = _option_value(flag, key, tokens)
        else:
            raise ConfigError(f"unknown option {flag!r}{_suggestion(key, prefix='--')}")
    cfg = copy.deepcopy(DEFAULTS)
    if config_path is not None:
        cfg.update(load_config(config_path))
    cfg.update(overrides)
    cfg["config"] = config_path
    return cfg


# ---------------------------------------------------------------- using a config

def model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `timm.create_model(cfg['model'], **kwargs)`: num_classes (when
    set), T, neuron_backend, batch_coupled_ssa, the legacy dim/num_heads/mlp_ratio when set, then
    cfg['model_kwargs']."""
    kwargs: dict[str, Any] = {"T": cfg["time_step"], "neuron_backend": cfg["neuron_backend"],
                              "batch_coupled_ssa": cfg["batch_coupled_ssa"]}
    if cfg["num_classes"] is not None:
        kwargs["num_classes"] = cfg["num_classes"]
    for legacy, name in (("dim", "embed_dim"), ("num_heads", "num_heads"), ("mlp_ratio", "mlp_ratio")):
        if cfg[legacy] is not None:
            kwargs[name] = cfg[legacy]
    kwargs.update(cfg["model_kwargs"])
    return kwargs


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


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the keys of DEFAULTS in `cfg` to `path` as YAML, in DEFAULTS order, atomically
    (a temporary file, then os.replace). `load_config(path)` reads them back unchanged."""
    path = Path(path)
    header = f"# resolved settings (recipe: {cfg.get('config') or 'none'})\n"
    body = yaml.safe_dump({key: cfg[key] for key in DEFAULTS if key in cfg},
                          sort_keys=False, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(header + body)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
