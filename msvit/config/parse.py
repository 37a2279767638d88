"""Settings as a run reads them: YAML recipes, command-line overrides and --help.

Every setting has a default, a --help group and a description (`settings.py`); a dataset folder's YAML recipe
sets some of them and the command line (`--key value`) overrides any of them: DEFAULTS < YAML < command line.
Each value is checked by `checks.py`; a bad value is a `ConfigError` whose one-line message names the key
and the fix.
"""
from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import yaml

from ..errors import ConfigError, UserError
from .checks import accepted_types, check_config, check_value, key_suggestion, option_flag, yaml_flow
from .settings import CHOICES, DEFAULTS, GROUPS, NETWORK_KEYS, NO_EFFECT, SETTINGS

__all__ = ["ArgumentParser", "load_config", "parse_args", "parse_model_kwargs", "command_line_keys",
           "EVALUATION_KEYS", "print_keys", "print_program_help", "folder_recipes"]

_log = logging.getLogger("msvit")
_LEGACY_LAUNCH_FLAGS = {"local_rank"}   # torch.distributed.launch's flag; ranks come from the environment
_OPTION = re.compile(r"^--?[A-Za-z]")   # "-1e-3" is a value, "-h" and "--lr" are options


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
            raise ConfigError(f"unknown key {str(key)!r} in {path}{key_suggestion(str(key))}")
        config[key] = check_value(key, value, str(path))
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
    types = accepted_types(key)
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
        return check_value(key, value, source)
    except ConfigError:
        if str in types and len(tokens) == 1:   # --experiment 2024, --data-dir ~ : plain text
            return check_value(key, tokens[0], source)
        raise


def parse_model_kwargs(text: str, flag: str = "--model-kwargs") -> dict[str, Any]:
    """The value of `flag TEXT` read as train.py reads --model-kwargs: a YAML mapping (JSON is valid YAML)."""
    return _option_value(flag, "model_kwargs", [text])


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the msvit CLIs: a bad argument raises UserError, which `errors.cli_entry` prints as one
    `error: ...` line with exit code 2 (argparse itself prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _recipe_path(given: str, default_config: str | Path | None) -> str:
    """`--config FILE`: the path as given, or else a recipe of that name beside the folder's own
    (`python cifar10/train.py --config spikformer.yml` from the repository root)."""
    if default_config is not None and not Path(given).exists():
        beside = Path(default_config).parent / given
        if beside.is_file():
            return str(beside)
    return given


def folder_recipes(default_config: str | Path) -> list[tuple[str, str]]:
    """The recipes beside `default_config` (the folder's own first), each with its first comment line."""
    own = Path(default_config)
    recipes = [own] + sorted(p for p in own.parent.glob("*.yml") if p.name != own.name)
    described = []
    for path in recipes:
        first = next((line for line in path.read_text().splitlines() if line.strip()), "")
        described.append((path.name, first.lstrip("# ").strip() if first.startswith("#") else ""))
    return described


# what test.py reads: the network, the data and the evaluation, AMP, compilation, and the training batch that
# val_batch_size falls back to (msvit.energy and msvit.maps read a subset)
EVALUATION_KEYS = tuple(key for key, setting in SETTINGS.items()
                        if setting.group in ("model", "data", "evaluation") and NO_EFFECT not in setting.help) + tuple(
    key for key in ("batch_size", "amp", "amp_dtype", "compile", "compile_mode", "threads") if key in SETTINGS)
_EVALUATION_ABOUT = ("Our checkpoints carry their run's settings: the network (model, model_kwargs, time_step, "
                     "batch_coupled_ssa) comes from the checkpoint, and so do the data settings not given here; "
                     "--time-step and the data options given here win, a --model other than the checkpoint's is "
                     "refused. The authors' checkpoints carry none: the recipe and the command line name the model.")

# what model.py reads: the network and the input size; it builds the model and prints its size
MODEL_PROGRAM_KEYS = tuple(key for key, setting in SETTINGS.items()
                           if setting.group == "model" and NO_EFFECT not in setting.help) + ("img_size",)
_MODEL_ABOUT = "model.py builds the configured model and prints its size; it reads no data."


def _print_help(config_path: str | None, default_config: str | Path | None = None,
                keys: Sequence[str] | None = None, usage: str = "[--config FILE] [--KEY VALUE ...]",
                about: str = "") -> None:
    """The keys by group (`keys`: only those, for a program that reads only them), each with its value after the
    recipe `config_path` and its description; the recipes of the folder of `default_config`. `usage` follows the
    program's name on the usage line; `about` replaces the training run's paragraph."""
    values = {**DEFAULTS, **(load_config(config_path) if config_path is not None else {})}
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
    print(f"usage: {prog} {usage}")
    print(f"\n  --config FILE  the YAML recipe (default: {config_path or 'none'})")
    if default_config is not None and Path(default_config).is_file():
        print("\nrecipes in this folder (--config NAME):")
        for name, description in folder_recipes(default_config):
            print(textwrap.fill(description, width=110, initial_indent=f"  {name:<22}  ",
                                subsequent_indent=" " * 26))
    recipe = f"after the recipe, {Path(config_path).name}" if config_path else "without a recipe"
    print("\n" + textwrap.fill(
        "Every key can be set in the recipe and overridden here as --key value or --key=value (dashes and "
        "underscores are equivalent, values are read as YAML, a bare boolean flag means true). The values shown "
        f"are the defaults {recipe}. " + (about or f"A resumed run keeps {', '.join(NETWORK_KEYS)}: they define "
                                          "the network and the data split."), width=110))
    print_keys(keys or tuple(DEFAULTS), values)


def print_program_help(usage: str, keys: Sequence[str]) -> None:
    """--help of a program with its own options (`usage`) that also reads the settings `keys`."""
    print(usage.rstrip())
    print("\n" + textwrap.fill(
        "It also reads these settings, from the recipe that --config names or as --KEY VALUE here (values read as "
        "YAML); with one of our checkpoints the network and the data settings come from it, as in test.py. The "
        "values shown are the defaults without a recipe.", width=110))
    print_keys(keys)


def print_keys(keys: Sequence[str], values: Mapping[str, Any] = DEFAULTS) -> None:
    """`keys` by --help group, each with its value in `values` and its description."""
    shown = {key: yaml_flow(values[key]) for key in keys}
    key_width = max(map(len, keys)) + 2
    value_width = min(max(map(len, shown.values())), 24)
    for group in GROUPS:
        listed = [key for key, setting in SETTINGS.items() if setting.group == group and key in shown]
        if listed:
            print(f"\n{group}:")
        for key in listed:
            choices = f" ({'/'.join(CHOICES[key])})" if key in CHOICES else ""
            print(f"  {option_flag(key):<{key_width}}  {shown[key]:<{value_width}}  {SETTINGS[key].help}{choices}")


def command_line_keys(argv: list[str] | None = None) -> list[str]:
    """The keys that `argv` (default sys.argv[1:]) sets, in order, as `parse_args` reads them (no `config`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keys = [key for _, key, _ in _split_options(argv) if key in DEFAULTS]
    return list(dict.fromkeys(keys))


def parse_args(argv: list[str] | None = None,
               default_config: str | Path | None = None, program: str = "train") -> dict[str, Any]:
    """The settings of a train.py / test.py run: DEFAULTS, then the YAML of `--config FILE`
    (default `default_config`), then the `--key value` overrides of `argv` (default sys.argv[1:]).

    Returns every key of DEFAULTS plus `config`, the YAML path used (None without one).
    `--help` prints the keys with their values after the recipe and exits 0 (`program` 'test': only the keys
    that test.py reads, `EVALUATION_KEYS`; 'model': those of model.py, `MODEL_PROGRAM_KEYS`); a bad option or setting (see `check_config`) raises ConfigError.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = None if default_config is None else str(default_config)
    if "-h" in argv or "--help" in argv:
        try:
            given = [tokens[0] for _, key, tokens in _split_options(argv) if key == "config" and len(tokens) == 1]
        except ConfigError:
            given = []
        recipe = _recipe_path(given[-1], default_config) if given else config_path
        if program == "test":
            _print_help(recipe, default_config, EVALUATION_KEYS, "--checkpoint PATH [--KEY VALUE ...]",
                        _EVALUATION_ABOUT)
        elif program == "model":
            _print_help(recipe, default_config, MODEL_PROGRAM_KEYS, about=_MODEL_ABOUT)
        else:
            _print_help(recipe, default_config)
        raise SystemExit(0)
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for flag, key, tokens in _split_options(argv):
        if key in _LEGACY_LAUNCH_FLAGS:
            continue
        if key == "config":
            if len(tokens) != 1:
                raise ConfigError(f"command line {flag}: option takes one file name")
            config_path = _recipe_path(tokens[0], default_config)
        elif key in DEFAULTS:
            overrides[key] = _option_value(flag, key, tokens)
            sources[key] = f"command line {flag}"
        else:
            raise ConfigError(f"unknown option {flag!r}{key_suggestion(key, prefix='--')}")
    cfg = copy.deepcopy(DEFAULTS)
    if config_path is not None:
        recipe = load_config(config_path)
        cfg.update(recipe)
        sources = {**dict.fromkeys(recipe, config_path), **sources}
    cfg.update(overrides)
    cfg["config"] = config_path
    check_config(cfg, sources)
    return cfg
