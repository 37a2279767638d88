"""What the programs print: the `msvit` logger (rank 0, on stdout and in the run folder's log.txt), training
progress (a tqdm bar on a terminal, else a line every `log_interval` updates), and `--json` output.

With `--json` stdout holds exactly one JSON object: the work runs inside `stdout_to_stderr(True)`, so its
log lines and libraries' messages go to stderr, and `print_json` writes the result, floats rounded to
6 significant digits.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["log", "setup_logging", "add_log_file", "log_to_file", "epoch_label", "stdout_to_stderr", "rounded",
           "print_json", "progress_bar", "EpochDisplay"]

log = logging.getLogger("msvit")
SIGNIFICANT_DIGITS = 6
PROGRESS = {"progress": True}  # `extra` of the periodic progress lines, which a terminal shows as a bar instead


def _bar_on_terminal() -> bool:
    return sys.stderr.isatty()


class _Console(logging.StreamHandler):
    """Log lines that do not break a tqdm bar (written around it), without the progress lines a bar replaces,
    on the stdout of `setup_logging`'s time (stderr inside `stdout_to_stderr`), or the current one once that is
    closed (a notebook's or a test's captured stream, when the handler outlives it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "progress", False) and _bar_on_terminal()) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if getattr(self.stream, "closed", False) else self.stream
            tqdm.write(self.format(record), file=stream)
        except Exception:  # noqa: BLE001 - logging's own convention for a failed write
            self.handleError(record)


class _Pending(logging.Handler):
    """The lines logged before the run folder exists (it is made once the settings are checked): `add_log_file`
    writes them at the top of log.txt."""
    LIMIT = 10_000

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)


def setup_logging(is_main: bool, keep_pending: bool = False) -> None:
    """Lines of the `msvit` logger on the current stdout, from the main process only (others: warnings).
    `keep_pending`: keep the lines logged so far for log.txt (a second call in the same run)."""
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    pending = next((h for h in log.handlers if isinstance(h, _Pending)), None) if keep_pending else None
    for handler in log.handlers:
        handler.close()
    handler = _Console(sys.stdout)  # the current stdout, also when called again in-process
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler, pending or _Pending()]


def add_log_file(path: Path) -> None:
    """Also append every line, progress lines included, to `path` (the run folder's log.txt), time-stamped,
    starting with those logged before the folder existed."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for pending in [h for h in log.handlers if isinstance(h, _Pending)]:
        for record in pending.records:
            handler.handle(record)
        log.removeHandler(pending)
    log.addHandler(handler)


def log_to_file(line: str) -> None:
    """`line` in log.txt only (the console has it already, as cli_entry's one line on stderr)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (line,), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def progress_bar(iterable: Any, desc: str, enabled: bool) -> tqdm:
    """`iterable` with a tqdm bar when `enabled` (the main process) and a person watches (a terminal)."""
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=not (enabled and _bar_on_terminal()))


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def epoch_label(epoch: int, epochs: int) -> str:
    """`epoch 3 (4/10)`: the epoch's number as summary.csv, checkpoints and messages count (from 0), then how
    far the run is (from 1 to the number of epochs)."""
    return f"epoch {epoch} ({epoch + 1}/{epochs})"


class EpochDisplay:
    """Progress of one training epoch on the main process: a tqdm bar on a terminal, and a log line every
    `interval` optimizer updates (update/total, loss, lr, img/s, data-wait share, ETA for the epoch) for
    logs; the line goes to log.txt always and to stdout when no bar is shown."""

    def __init__(self, epoch: int, epochs: int, batches: int, start_batch: int, accum_iter: int, interval: int,
                 world_size: int, enabled: bool) -> None:
        self.epoch, self.epochs, self.batches, self.start_batch = epoch, epochs, batches, start_batch
        self.accum_iter, self.interval, self.world_size, self.enabled = accum_iter, interval, world_size, enabled
        self.start, self.images, self.data_seconds = time.perf_counter(), 0, 0.0
        self.bar = tqdm(total=batches, initial=start_batch, desc=epoch_label(epoch, epochs), leave=False,
                        dynamic_ncols=True, disable=not (enabled and _bar_on_terminal()))

    def step(self, batch: int, images: int, data_seconds: float, loss: float, lr: float, updates: int,
             updated: bool) -> None:
        """Batch number `batch` (0-based, in the whole epoch) is done; `updates` optimizer updates so far."""
        self.images += images
        self.data_seconds += data_seconds
        elapsed = time.perf_counter() - self.start
        rate = self.images * self.world_size / max(elapsed, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
        self.bar.update(1)
        if not (self.enabled and updated and updates % self.interval == 0):
            return
        done = batch + 1 - self.start_batch
        total_updates = -(-self.batches // self.accum_iter)
        log.info("%s  update %d/%d  loss %.4f  lr %.3e  %.0f img/s  data %.0f%%  ETA %s",
                 epoch_label(self.epoch, self.epochs), updates, total_updates, loss, lr, rate,
                 100 * self.data_seconds / max(elapsed, 1e-9),
                 _duration(elapsed / max(done, 1) * (self.batches - batch - 1)), extra=PROGRESS)

    def close(self) -> None:
        self.bar.close()


def stdout_to_stderr(enabled: bool) -> contextlib.AbstractContextManager:
    """With `--json`: while the work runs, whatever it prints (log lines, libraries' messages) goes to stderr,
    so that stdout holds only the JSON object printed afterwards."""
    return contextlib.redirect_stdout(sys.stderr) if enabled else contextlib.nullcontext()


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """`value` with every float (also inside dicts, lists and tuples) rounded to `digits` significant digits."""
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return value
        return round(value, digits - 1 - math.floor(math.log10(abs(value))))
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def print_json(value: Any) -> None:
    """One JSON object on stdout, floats rounded to 6 significant digits."""
    print(json.dumps(rounded(value)), flush=True)
