"""The run folder of a training run: where it is, what a resumed run takes from it, and writing into it.

    RUN/config.yaml     the resolved settings (a resumed run starts from them)
    RUN/log.txt         every log line, time-stamped, progress lines included
    RUN/summary.csv     one row per epoch; RUN/events.out.tfevents.*  TensorBoard
    RUN/last.pth        written at every epoch end, every `checkpoint_interval` updates and on preemption
    RUN/best.pth        the epoch with the best top-1

`python train.py --resume auto --output RUN` is the one command that starts a run and continues it: with no
last.pth yet it starts fresh; else it takes RUN/config.yaml, then the command line, and continues.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import save_checkpoint
from .config import command_line_keys, parse_args
from .errors import ConfigError, UserError
from .settings import NETWORK_KEYS

__all__ = ["NETWORK_KEYS", "SUMMARY_FIELDS", "CheckpointWriteError", "settings_for_run", "output_dir",
           "resume_path", "prepare_output", "write_summary", "write_checkpoints"]

# the EMA columns stay empty without model_ema, firing_rate (the network's, in the evaluation) with watch_firing off
SUMMARY_FIELDS = ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5", "img_per_s", "peak_mem_mb",
                  "eval_loss_ema", "eval_top1_ema", "eval_top5_ema", "firing_rate"]
_NOT_SETTINGS = ("resume", "output")  # how to find the run, not how it trains
log = logging.getLogger("msvit")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, permissions); the previous one is intact."""


def _resumed_folder(cfg: Mapping[str, Any]) -> Path | None:
    """The folder of the checkpoint that `cfg` resumes from, when there is one to resume from."""
    if cfg["resume"] == "auto":
        folder = Path(cfg["output"])
        return folder if (folder / "last.pth").is_file() else None
    return Path(cfg["resume"]).parent if cfg["resume"] and Path(cfg["resume"]).is_file() else None


def settings_for_run(argv: list[str], recipe: str | Path | None) -> dict[str, Any]:
    """The settings of `train.py argv`: the recipe then the command line for a new run; for a resumed one,
    the run folder's config.yaml then the command line, which may not change NETWORK_KEYS."""
    cfg = parse_args(argv, recipe)
    if cfg["resume"] == "auto" and not cfg["output"]:
        raise ConfigError("--resume auto continues the run folder named by --output: add --output RUN_FOLDER "
                          "(the same folder every time the job starts)")
    if cfg["finetune"] and cfg["resume"] not in ("", "auto"):
        raise ConfigError(f"--finetune starts a new run from {cfg['finetune']} and --resume continues "
                          f"{cfg['resume']}: give one (--resume auto --output RUN also continues a fine-tuning run)")
    folder = _resumed_folder(cfg)
    if folder is None or not (folder / "config.yaml").is_file():
        return cfg
    saved = parse_args([], folder / "config.yaml")
    resumed = parse_args(argv, folder / "config.yaml")
    changed = [k for k in command_line_keys(argv) if k not in _NOT_SETTINGS and resumed[k] != saved[k]]
    for key in changed:
        if key in NETWORK_KEYS:
            raise ConfigError(f"--{key.replace('_', '-')} cannot change when resuming {folder} (trained with "
                              f"{key} {saved[key]!r}, asked for {resumed[key]!r}); to train another network, "
                              f"start a new run folder with another --output")
    listing = ", ".join(f"{k} {saved[k]!r} -> {resumed[k]!r}" for k in changed) or "none"
    log.info("resuming with the settings of %s; changed on the command line: %s", folder / "config.yaml", listing)
    resumed["config"] = recipe if recipe is None else str(recipe)  # the recipe stays the reference (batch)
    resumed["output"] = cfg["output"] or str(folder)  # the saved path may be relative to another folder
    return resumed


def output_dir(cfg: Mapping[str, Any]) -> Path:
    """--output; else the folder of the --resume checkpoint; else output/<dataset>/<experiment or model>-<time>."""
    if cfg["output"]:
        return Path(cfg["output"])
    if cfg["resume"] == "auto":
        raise ConfigError("--resume auto continues the run folder named by --output: add --output RUN_FOLDER")
    if cfg["resume"]:
        return Path(cfg["resume"]).resolve().parent  # continue the run the checkpoint belongs to
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("output") / cfg["dataset"] / f"{cfg['experiment'] or cfg['model']}-{stamp}"


def resume_path(cfg: Mapping[str, Any], output: Path) -> Path | None:
    """The checkpoint to continue from: None for a new run (also for --resume auto before any last.pth)."""
    last = output / "last.pth"
    if not cfg["resume"]:
        if last.exists():
            raise ConfigError(f"{output} already holds a run (last.pth): pass --resume auto to continue it, "
                              f"or choose another --output")
        return None
    if cfg["resume"] == "auto":
        if last.is_file():
            return last
        log.info("--resume auto: no last.pth in %s yet, so this starts a new run there", output)
        return None
    path = Path(cfg["resume"])
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist (check --resume)")
    return path


def prepare_output(output: Path, rank: int) -> None:
    """Create `output` and check that this process can write there, before any training."""
    probe = output / f".write-test-{rank}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the run folder {output} ({exc.strerror or exc}); "
                          f"choose another --output") from None


def write_summary(path: Path, row: dict[str, Any] | None, keep_before_epoch: int | None = None) -> None:
    """Append one epoch row; on resume, first drop rows of epochs that will be trained again. Atomic."""
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    if keep_before_epoch is not None:
        rows = [r for r in rows if int(r["epoch"]) < keep_before_epoch]
    if row is not None:
        rows.append({k: row.get(k, "") for k in SUMMARY_FIELDS})
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_checkpoints(checkpoint: Mapping[str, Any], output: Path, best: bool) -> None:
    """last.pth (and best.pth), each written atomically; a failed write is one CheckpointWriteError line."""
    for name in ("last.pth", "best.pth") if best else ("last.pth",):
        try:
            save_checkpoint(checkpoint, output / name)
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write {output / name} ({exc.strerror or exc}); the previous {name} is intact: "
                f"free space (or fix the folder), then continue with --resume auto --output {output}") from None

