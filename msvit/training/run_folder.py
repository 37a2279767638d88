"""The run folder of a training run: where it is, what a resumed run takes from it, and writing into it.

    RUN/config.yaml     the resolved settings (a resumed run starts from them)
    RUN/log.txt         every log line, time-stamped, progress lines included
    RUN/summary.csv     one row per epoch; RUN/events.out.tfevents.*  TensorBoard
    RUN/last.pth        written at every epoch end, every `checkpoint_interval` updates and on a stop signal
    RUN/best.pth        the epoch with the best top-1: a hard link to that epoch's last.pth

`python train.py --resume auto --output RUN` is the one command that starts a run and continues it: with no
run folder yet it starts fresh; else it takes RUN/config.yaml, then the command line, and continues (from the
start when no last.pth was written yet). Changed settings take effect; those that cannot are refused.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from ..models._checkpoint import save_checkpoint
from ..config import command_line_keys, parse_args
from ..errors import ConfigError, UserError
from ..config import NETWORK_KEYS

__all__ = ["NETWORK_KEYS", "SUMMARY_FIELDS", "CheckpointWriteError", "settings_for_run", "output_dir",
           "resume_path", "check_output_writable", "prepare_output", "write_summary", "write_checkpoints"]

# the EMA columns stay empty without model_ema, firing_rate (the network's, in the evaluation) with watch_firing off
SUMMARY_FIELDS = ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5", "img_per_s", "peak_mem_mb",
                  "eval_loss_ema", "eval_top1_ema", "eval_top5_ema", "firing_rate"]
_NOT_SETTINGS = ("resume", "output")  # how to find the run, not how it trains
log = logging.getLogger("msvit")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, permissions); the previous one is intact."""


def _resumed_folder(cfg: Mapping[str, Any]) -> Path | None:
    """The folder of the checkpoint that `cfg` resumes from, when there is one to resume from; with --resume
    auto also a run folder stopped before its first checkpoint (config.yaml, no last.pth): it restarts with
    its own settings, not the recipe's."""
    if cfg["resume"] == "auto":
        folder = Path(cfg["output"])
        return folder if (folder / "last.pth").is_file() or (folder / "config.yaml").is_file() else None
    return Path(cfg["resume"]).parent if cfg["resume"] and Path(cfg["resume"]).is_file() else None


def _check_changes(folder: Path, changed: list[str], saved: Mapping[str, Any], resumed: Mapping[str, Any]) -> None:
    """Refuse what cannot change once a run has a checkpoint: the network (NETWORK_KEYS), the optimizer whose state
    it holds, and start_epoch, which only places a new run on its schedule (a resumed run continues at its
    checkpoint's position). Any other change takes effect."""
    for key in changed:
        flag = f"--{key.replace('_', '-')}"
        if key in NETWORK_KEYS:
            raise ConfigError(f"{flag} cannot change when resuming {folder} (trained with "
                              f"{key} {saved[key]!r}, asked for {resumed[key]!r}); to train another network, "
                              f"start a new run folder with another --output")
        if key == "opt":
            raise ConfigError(f"--opt cannot change when resuming {folder}: its last.pth holds the state of "
                              f"{saved[key]!r}, not of {resumed[key]!r}; keep --opt {saved[key]}, or start a new "
                              f"run from the weights with --finetune {folder / 'last.pth'} --output NEW_FOLDER")
        if key == "start_epoch":
            raise ConfigError(f"--start-epoch places a new run on its schedule; resuming {folder} continues at its "
                              f"checkpoint's position: drop --start-epoch (to change the schedule, change "
                              f"--epochs, --lr, --min-lr or the warmup/cooldown)")


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
    started = (folder / "last.pth").is_file() or cfg["resume"] != "auto"
    if started:  # before the first checkpoint nothing was trained: any setting may still change
        _check_changes(folder, changed, saved, resumed)
    listing = ", ".join(f"{k} {saved[k]!r} -> {resumed[k]!r}" for k in changed) or "none"
    log.info("%s with the settings of %s; changed on the command line: %s",
             "resuming" if started else "restarting (no last.pth yet)", folder / "config.yaml", listing)
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
    """last.pth, written atomically; with `best`, best.pth becomes a hard link to it (a copy where the file
    system has no links), so the checkpoint is written once. A later last.pth is a new file renamed over the
    name, so best.pth keeps its content. A failed write is one CheckpointWriteError line."""
    name = "last.pth"
    try:
        save_checkpoint(checkpoint, output / name)
        if best:
            name = "best.pth"
            _link_or_copy(output / "last.pth", output / name)
    except OSError as exc:
        raise CheckpointWriteError(
            f"cannot write {output / name} ({exc.strerror or exc}); the previous {name} is intact: "
            f"free space (or fix the folder), then continue with --resume auto --output {output}") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link to `source`, replaced atomically (a temporary name, then os.replace), as timm's
    CheckpointSaver does; a copy where links fail (some network and FUSE file systems)."""
    tmp = target.with_name(f"{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_writable(output: Path) -> None:
    """Refuse a run folder that cannot be created or written, without creating anything: `prepare_output` makes
    it once the settings, the data and the model have been checked, so a failed start leaves no folder."""
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = ("it is a file" if existing == output and not existing.is_dir()
               else f"{existing} is not a folder" if not existing.is_dir()
               else None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable")
    if problem is not None:
        raise ConfigError(f"cannot write to the run folder {output} ({problem}); choose another --output")

