"""`python -m msvit.energy`: measure a configured model (or several, `--compare`) on the evaluation set and
print the report as tables or JSON, and with `--plot DIR` draw it."""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import (EVALUATION_KEYS, ArgumentParser, architecture_kwargs, command_line_keys, parse_args,
                      print_program_help, restore_run_settings, warn_other_dataset)
from ..config.ann import ANN_WORDS, is_ann
from ..console import print_json, setup_logging, stdout_to_stderr
from ..data import build_datasets
from ..errors import ConfigError, UserError, user_message
from ..models._checkpoint import load_checkpoint, read_checkpoint
from ..models._registry import ALL_MODEL_NAMES, closest_model, unknown_model
from ..plotting import require_matplotlib
from ..training.distributed import cleanup, init_distributed, main_process_first, set_threads
from ..training.engine import amp_settings
from ..training.loaders import build_eval_loader, seed_everything
from ..zoo import create_dataset_model
from .figures import write_figures
from .meter import E_AC_PJ, E_MAC_PJ, EnergyMeter
from .text import format_report, model_label

__all__ = ["run", "main", "USAGE"]

USAGE = """usage: python -m msvit.energy --config FILE [--checkpoint PATH | --compare A B ...] [--labels A B ...]
                          [--batches N] [--plot DIR] [--json] [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--KEY VALUE ...]

  --checkpoint PATH  weights to measure (random weights when absent)
  --compare A B ...  measure several: each a checkpoint file or a registered model name (random weights);
                     the recipe and the --KEY VALUE settings apply to each
  --labels A B ...   their names in the text, JSON and figures (default: model and file name)
  --batches N        measure only the first N evaluation batches (default: the whole set)
  --plot DIR         write the figures firing_rates.png, energy.png and firing_table.png into DIR
  --json             print one JSON object instead of tables ({"reports": [...]} with --compare)
  --e-mac-pj, --e-ac-pj  energy of a multiply-accumulate / an accumulate in pJ
"""
# the settings of test.py that this program does not read, or lists above
_NOT_READ = ("energy", "compare_ssa_coupling", "compile", "compile_mode", "checkpoint", "json")


def _split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This program's own options, and the rest: the settings `config.parse_args` reads."""
    parser = ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--e-mac-pj", "--e_mac_pj", dest="e_mac_pj", type=float, default=E_MAC_PJ)
    parser.add_argument("--e-ac-pj", "--e_ac_pj", dest="e_ac_pj", type=float, default=E_AC_PJ)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--compare", nargs="+", default=None)
    parser.add_argument("--labels", nargs="+", default=None)
    return parser.parse_known_args(list(argv))


def run(cfg: dict[str, Any], batches: int = 0, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
        given: Sequence[str] = ()) -> dict[str, Any]:
    """Build the configured model (architecture and data settings from the checkpoint's saved config when it
    has one, except the keys `given` on the command line that evaluation may change), run the evaluation set
    (or its first `batches` batches) and return the report."""
    if not cfg.get("dataset") or not cfg.get("model"):
        raise ConfigError("no dataset or model configured: pass --config <dataset>/<dataset>.yml")
    if batches < 0:
        raise ConfigError(f"--batches must be 0 (the whole set) or more, got {batches}")
    set_threads(cfg["threads"])
    env = init_distributed()
    setup_logging(env.is_main)
    checkpoint = read_checkpoint(cfg["checkpoint"]) if cfg["checkpoint"] else None
    restore_run_settings(cfg, checkpoint, list(given))
    if is_ann(cfg["model"]):
        raise ConfigError(f"{cfg['model']} is {ANN_WORDS}: nothing for the meter to count; its energy is its MACs x "
                          f"{e_mac_pj:g} pJ: msvit.energy.ann.ann_energy({cfg['model']!r}), python -m msvit.zoo --table")
    try:
        seed_everything(cfg["seed"])  # without a checkpoint the weights are random: the same ones every run
        model = create_dataset_model(cfg, ALL_MODEL_NAMES)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, use_ema=cfg["use_ema"])
            warn_other_dataset(cfg, checkpoint)
        model.to(env.device).eval()
        with main_process_first(env):
            _, val_set = build_datasets(cfg, train=False)
        loader = build_eval_loader(val_set, cfg, env)
        amp = amp_settings(cfg, env.device)
        with torch.no_grad(), EnergyMeter(model, e_mac_pj, e_ac_pj) as meter:
            for i, (inputs, _) in enumerate(loader):
                if batches and i >= batches:
                    break
                with amp.autocast():
                    model(inputs.to(env.device, non_blocking=True))
        report = meter.report()
    finally:
        cleanup()
    return {"model": cfg["model"], "model_kwargs": architecture_kwargs(cfg), "dataset": cfg["dataset"],
            "checkpoint": cfg["checkpoint"] or None,
            "batch_coupled_ssa": model.config["batch_coupled_ssa"], **report}


def _runs(cfg: dict[str, Any], extra: argparse.Namespace, given: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The labelled reports: one for the configured checkpoint, or one per --compare item."""
    if extra.compare is None:
        if extra.labels is not None:
            raise ConfigError("--labels names the --compare items: give --compare A B ... with it")
        report = run(cfg, extra.batches, extra.e_mac_pj, extra.e_ac_pj, given)
        return [(_label(report), report)]
    if cfg["checkpoint"]:
        raise ConfigError("--checkpoint and --compare both name weights: list every checkpoint after --compare")
    if extra.labels is not None and len(extra.labels) != len(extra.compare):
        count = len(extra.labels)
        raise ConfigError(f"--labels gives {count} name{'' if count == 1 else 's'} for {len(extra.compare)} "
                          "--compare items: give one per item")
    runs = []
    for i, item in enumerate(extra.compare):
        one = copy.deepcopy(cfg)
        if item in ALL_MODEL_NAMES and not Path(item).exists():
            one["model"], keys = item, [*given, "model"]
        elif not Path(item).exists() and closest_model(item) and not re.search(r"[/\\.]", item):
            raise unknown_model(item, where="--compare")  # a model name with a typo, not a missing file
        else:
            one["checkpoint"], keys = item, given
        report = run(one, extra.batches, extra.e_mac_pj, extra.e_ac_pj, keys)
        runs.append((extra.labels[i] if extra.labels else _label(report), report))
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):  # the same model and file name twice: the paths tell them apart
        runs = [(f"{label} ({i + 1})" if labels.count(label) > 1 else label, report)
                for i, (label, report) in enumerate(runs)]
    return runs


def _label(report: dict[str, Any]) -> str:
    checkpoint = report.get("checkpoint")
    return model_label(report) + (f" ({Path(checkpoint).name})" if checkpoint else "")


def _check_plot_folder(folder: str | None) -> None:
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"--plot {folder} is a file: give a folder for the figures")
    if folder is not None:  # before measuring, which can take long
        require_matplotlib("--plot")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_program_help(USAGE, [k for k in EVALUATION_KEYS if k not in _NOT_READ])
        sys.exit(0)
    try:
        extra, rest = _split_argv(argv)
        cfg = parse_args(rest, None)
        _check_plot_folder(extra.plot)
        with stdout_to_stderr(cfg["json"]):
            runs = _runs(cfg, extra, command_line_keys(rest))
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    figures: list[Path] = []
    if int(os.environ.get("RANK", 0)) == 0:  # the process group is gone by now
        if extra.plot is not None:
            figures = write_figures(runs, extra.plot)
            print("figures: " + ", ".join(map(str, figures)), file=sys.stderr)
        result = (runs[0][1] if extra.compare is None
                  else {"labels": [label for label, _ in runs], "reports": [report for _, report in runs]})
        if figures:
            result = {**result, "figures": [str(path) for path in figures]}
        if cfg["json"]:
            print_json(result)
        else:
            print("\n\n".join(format_report(report) if extra.compare is None else f"== {label}\n{format_report(report)}"
                              for label, report in runs))
    return result if int(os.environ.get("RANK", 0)) == 0 else runs[0][1]
