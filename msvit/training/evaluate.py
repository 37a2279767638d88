"""The evaluation program behind every dataset folder's `test.py`.

    python test.py --checkpoint PATH [--json] [--energy] [--compare-ssa-coupling] [--data-dir ...]

Accepts our checkpoints (the model is rebuilt from the run's saved config, SSA setting included, and the run's
data settings are reused where the command line gives none; `--time-step`, `--val-batch-size` and the data
options given here win; a `--model` other than the checkpoint's is refused, a checkpoint trained on another dataset
is evaluated with a warning) and the authors' (the model comes from the folder's YAML and the command line).
`--compare-ssa-coupling` evaluates the same weights a second time with the other SSA setting (batch-coupled or
per sample) and reports both.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

from ..models._checkpoint import load_checkpoint, read_checkpoint
from ..config import MODEL_KEYS, command_line_keys, option_flag, parse_args, restore_run_settings, warn_other_dataset
from ..config.ann import ann_run_settings, is_ann, refuse_spiking_settings
from ..data import build_datasets, eval_transform_line, resolve_num_classes
from .distributed import DistEnv, cleanup, init_distributed, main_process_first, set_threads
from ..energy import EnergyMeter, format_firing, format_totals
from ..errors import ConfigError, cli_entry
from ..models import compile_model, set_batch_coupled_ssa
from ..console import log, print_json, setup_logging, stdout_to_stderr
from .engine import amp_settings, evaluate
from .loaders import build_eval_loader
from ..zoo import create_dataset_model, reference_batch_sizes

__all__ = ["main", "run", "MODEL_KEYS", "SSA_SETTINGS"]

# names of the two SSA settings in reports: batch_coupled_ssa True / False
SSA_SETTINGS = {True: "batch_coupled", False: "per_sample"}
_METRICS = ("top1", "top5", "loss", "n")


def run(cfg: dict[str, Any], variants: Sequence[str], given: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate `cfg['checkpoint']` on the validation set; returns top1, top5 (%), loss, n, T, the SSA setting
    and the evaluation batch per process (and, with `compare_ssa_coupling`, the metrics of both settings).
    `given`: the keys set on the command line, which win over the checkpoint's where evaluation may change them."""
    if not cfg["checkpoint"]:
        raise ConfigError("no checkpoint given: pass --checkpoint PATH (a best.pth/last.pth of a run, "
                          "or a downloaded model)")
    with stdout_to_stderr(cfg["json"]):
        set_threads(cfg["threads"])  # first: every later torch call uses it
        env = init_distributed()
        setup_logging(env.is_main)
        checkpoint = read_checkpoint(cfg["checkpoint"])
        restore_run_settings(cfg, checkpoint, given)
        ann = _ann_settings(cfg, given)
        cfg["num_classes"] = resolve_num_classes(cfg, train=False)  # null: the val class folders' count
        try:
            model = _load_model(cfg, checkpoint, variants).to(env.device)
            with main_process_first(env):
                _, val_set = build_datasets(cfg, train=False)
            loader = build_eval_loader(val_set, cfg, env)
            transform = eval_transform_line(cfg)  # which resize and crop: crop_pct null depends on img_size
            if transform is not None:
                log.info("%s", transform)
            coupled = False if ann else model.config["batch_coupled_ssa"]
            metrics, energy, by_setting = _measure(cfg, model, loader, env)
        finally:
            cleanup()
    result = {**metrics, "weights": "ema" if cfg["use_ema"] else "raw", "time_step": 1 if ann else model.T,
              "batch_coupled_ssa": coupled, "val_batch_size": loader.batch_size, **({"ann": True} if ann else {}),
              **({"ssa_settings": by_setting} if by_setting else {}), **energy}
    if env.is_main:
        if cfg["json"]:
            print_json(result)
        else:
            print(_report(cfg, result, env, ann))
    return result


def _ann_settings(cfg: dict[str, Any], given: Sequence[str]) -> str | None:
    """For timm's ANN (`config.ann`): the spiking-only settings given here refused, the rest set neutral; the
    report's line that says what the model is."""
    if not is_ann(cfg["model"]):
        return None
    refuse_spiking_settings(cfg, {key: f"command line {option_flag(key)}" for key in given})
    return ann_run_settings(cfg)


def _load_model(cfg: dict[str, Any], checkpoint: Any, variants: Sequence[str]) -> Any:
    """The configured model with the checkpoint's weights; a warning when it was trained on another dataset."""
    model = create_dataset_model(cfg, variants)
    load_checkpoint(model, checkpoint, use_ema=cfg["use_ema"])
    warn_other_dataset(cfg, checkpoint)  # after the load: a head of another class count is refused first
    return model


def _measure(cfg: dict[str, Any], model: Any, loader: Any,
             env: DistEnv) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metrics, energy per image, metrics by SSA setting with --compare-ssa-coupling) of `model` on `loader`."""
    amp = amp_settings(cfg, env.device)
    coupled = cfg["batch_coupled_ssa"] if is_ann(cfg["model"]) else model.config["batch_coupled_ssa"]
    meter = EnergyMeter(model) if cfg["energy"] else contextlib.nullcontext()
    runner = model
    if cfg["compile"] and not cfg["energy"]:  # the energy meter counts through hooks: eager
        runner = compile_model(model, cfg["compile_mode"])
    with meter:
        metrics = evaluate(runner, loader, env, amp)
    energy = _energy(meter.report()) if cfg["energy"] else {}  # per image, summed over all processes
    by_setting = {}
    if cfg["compare_ssa_coupling"]:
        by_setting[SSA_SETTINGS[coupled]] = {k: metrics[k] for k in _METRICS}
        set_batch_coupled_ssa(model, not coupled)
        by_setting[SSA_SETTINGS[not coupled]] = evaluate(runner, loader, env, amp)
        set_batch_coupled_ssa(model, coupled)
    return metrics, energy, by_setting


def _energy(report: dict[str, Any]) -> dict[str, Any]:
    """What test.py --energy reports: the totals per image and every neuron's firing rate, also per step."""
    return {key: report[key] for key in ("energy_mj", "mac_flops", "sops", "firing_rate", "stage_firing_rates",
                                         "neurons", "neurons_per_step")}


def _accuracy(metrics: dict[str, Any]) -> str:
    return f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"


def _report(cfg: dict[str, Any], result: dict[str, Any], env: DistEnv, ann: str | None = None) -> str:
    """The text report: the SSA setting (an ANN: what it is) and batch first, then the accuracy line(s), then the
    energy."""
    coupled, batch = result["batch_coupled_ssa"], result["val_batch_size"]
    processes = f", {env.world_size} processes (each evaluates its own shard)" if env.world_size > 1 else ""
    network = ann or f"SSA output neuron: {'batch-coupled (as in the release)' if coupled else 'per sample'}"
    lines = [f"{network}; evaluation batch {batch} per process{processes}"]
    if coupled:
        reference = reference_batch_sizes(cfg)
        at = f"; {reference[2]} evaluates at {reference[1]} per process" if reference else ""
        lines.append(f"note: with the batch-coupled SSA, predictions depend on the evaluation batch size and on "
                     f"which images share a batch{at}")
    weights = ", EMA weights" if result["weights"] == "ema" else ""
    steps = "" if ann else f"T {result['time_step']}, "
    lines.append(f"{cfg['model']} on {cfg['dataset']} ({steps}batch {batch}{weights}): {_accuracy(result)}  "
                 f"images {result['n']}")
    if "ssa_settings" in result:
        for key, name in ((True, "batch-coupled SSA"), (False, "per-sample SSA")):
            lines.append(f"  {name:<18} {_accuracy(result['ssa_settings'][SSA_SETTINGS[key]])}")
        gap = result["ssa_settings"]["batch_coupled"]["top1"] - result["ssa_settings"]["per_sample"]["top1"]
        lines.append(f"  the coupling is worth {gap:+.2f} top-1 points on these weights at this batch")
    if "energy_mj" in result:
        lines += [format_totals(result), "", format_firing(result)]
    return "\n".join(lines)


@cli_entry
def main(config: str | Path, variants: Sequence[str], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `<dataset>/test.py`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(parse_args(argv, config, program="test"), variants, command_line_keys(argv))
