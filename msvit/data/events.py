"""DVS event data on disk, shared by DVS128 Gesture and CIFAR10-DVS: spikingjelly's folders, events -> frames.

Both sets use spikingjelly's layout under `data_dir`: `download/`, `extract/`, `events_np/` (one `.npz` of events
`t, x, y, p` per sample) and `frames_number_<T>_split_by_number/` (the same tree, each sample integrated into T
frames of event counts `[T, 2, H, W]`; one such folder per time step T, made by spikingjelly on first use).

The archive -> `events_np` conversion is done here rather than by spikingjelly 0.0.0.0.14, whose own conversion
(a) deletes a manually downloaded archive whose MD5 differs, (b) swallows every error raised in its thread pool,
leaving an empty or partial `events_np` that later runs trust, (c) cannot read CIFAR10-DVS at all with numpy 2.4
(binary-mode `np.fromstring` now raises), and (d) parses DVS128 Gesture one event at a time in Python.
Frame integration is spikingjelly's function, called here file by file (`integrate_frames`): its datasets' own loop
prints two lines per sample (about 20,000 for CIFAR10-DVS) and swallows every error; here one log line, a progress
bar on a terminal, and the folder appears only once complete.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..console import progress_bar
from ..errors import ConfigError, DataError
from ..neurons import import_spikingjelly  # the one quiet way in (nor does it leave a root handler)
from .common import first_line
from .dvs_augment import DVSAugment

__all__ = ["FramesToTensor", "FramesFile", "dvs_transform", "time_step", "import_spikingjelly_datasets",
           "save_events", "run_all", "extract_archive", "open_frames"]


# ------------------------------------------------------------------------------ settings and transforms

def time_step(cfg: Mapping[str, Any]) -> int:
    """`cfg['time_step']`: the frames per DVS sample, which is also the number of steps the model runs."""
    value = cfg.get("time_step", 16)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"time_step must be a positive integer for DVS data, got {value!r}")
    extra = cfg.get("model_kwargs")
    model_t = extra.get("T") if isinstance(extra, Mapping) else None
    # model_kwargs' T would build the model for other T than the frames hold, and frames set the steps it runs
    if model_t is not None and model_t != value:
        raise ConfigError(f"model_kwargs sets T={model_t} but time_step is {value} (the frames per DVS sample): "
                          f"remove T from model_kwargs and set --time-step {model_t} if that is the T you want")
    return value


SENSOR_SIZE = 128  # both DVS datasets' frames are 128x128


class FramesToTensor:
    """spikingjelly's numpy frames -> float32 tensor `[T, 2, H, W]`, resized to `size` when given, then the
    optional augmentation. The resize is bilinear without antialiasing, as torchvision's Resize of a tensor was
    in the Spike-driven Transformer's release (its CIFAR10-DVS frames at 64x64): at half size, 2x2 means."""

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None, size: int | None = None) -> None:
        self.augment, self.size = augment, size

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                                antialias=False)
        return self.augment(x) if self.augment is not None else x

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.size is not None else ""
        return f"{type(self).__name__}(augment={self.augment!r}{size})"


def dvs_transform(cfg: Mapping[str, Any], train: bool) -> FramesToTensor:
    """The frames' transform; `img_size` other than the sensor's 128 resizes them."""
    size = cfg.get("img_size")
    return FramesToTensor(DVSAugment() if train and cfg.get("dvs_aug", False) else None,
                          None if size in (None, SENSOR_SIZE) else int(size))


def import_spikingjelly_datasets() -> None:
    """Import `spikingjelly.datasets` without its import-time log line.

    Its `__init__` tries CuPy (for a GPU padding helper never used here) and, when that fails, logs
    'spikingjelly.dataset.__init__: No module named ...' at INFO on the root logger, which any INFO-level
    logging setup (the CLIs') prints to stderr, ahead of the real output or of a one-line `error: ...`.
    """
    import_spikingjelly("spikingjelly.datasets")  # cached: later imports of its submodules are silent


# ------------------------------------------------------------------------- archives -> events_np files

def save_events(path: Path, events: Mapping[str, np.ndarray]) -> None:
    np.savez_compressed(path, t=events["t"], x=events["x"], y=events["y"], p=events["p"])


def run_all(jobs: Iterable[Callable[[], None]], desc: str = "") -> None:
    """Run jobs on a few threads (numpy and zlib release the GIL) and re-raise the first error; with `desc`, one
    log line naming the work and, on a terminal, a progress bar on stderr."""
    jobs = list(jobs)
    if desc:
        logging.getLogger("msvit").info("%s: %d files (once; later runs reuse them)", desc, len(jobs))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in progress_bar(futures, desc, enabled=bool(desc)):
                future.result()
        except BaseException:
            for future in futures:  # do not convert the rest after a failure
                future.cancel()
            raise


def extract_archive(archive: Path, extract_root: Path, folder: str, label: str) -> None:
    """Extract `archive`, which must hold `folder/`, to `extract_root/folder`: all or nothing, so an interrupted
    extraction is redone instead of converted."""
    tmp = extract_root / f".{folder}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            # The "data" filter refuses absolute paths and links out of tmp (Python >= 3.10.12 / 3.11.4).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, **safe)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {label} archive {archive} ({first_line(exc)}): "
                        f"download it again") from None
    if not (tmp / folder).is_dir():
        raise DataError(f"{label} archive {archive} holds no {folder}/ folder: download it again")
    (tmp / folder).rename(extract_root / folder)
    shutil.rmtree(tmp)


# --------------------------------------------------------------------------- events_np -> frames folders

class FramesFile:
    """Loader of one integrated sample (spikingjelly's `load_npz_frames`, checked): the `[T, 2, H, W]` float32
    frames of a frames-folder `.npz`, or a DataError naming the file when it is unreadable or its T differs from
    `time_step` (a folder copied or renamed from another T; the model would silently run that many steps)."""

    def __init__(self, time_step: int, frames_root: Path) -> None:
        self.time_step, self.frames_root = time_step, frames_root

    def __call__(self, path: str) -> np.ndarray:
        redo = f"delete {self.frames_root} and rerun to integrate the events again into {self.time_step} frames"
        try:
            with np.load(path) as npz:
                frames = npz["frames"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read DVS frames file {path} ({first_line(exc)}): {redo}") from None
        if frames.ndim != 4 or frames.shape[0] != self.time_step:
            raise DataError(f"DVS frames file {path} holds {frames.shape[0] if frames.ndim else 0} frames "
                            f"(shape {tuple(frames.shape)}) but time_step is {self.time_step}: {redo}")
        return frames.astype(np.float32)


def _npz_relpaths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.npz")}


def _check_frames_complete(events_root: Path, frames_root: Path) -> None:
    """spikingjelly reuses any existing frames folder, even one left half-written by an interrupted run."""
    missing = sorted(_npz_relpaths(events_root) - _npz_relpaths(frames_root))
    if missing:
        raise DataError(f"frames folder {frames_root} lacks {len(missing)} samples (e.g. {missing[0]}), "
                        f"left by an interrupted or failed integration: delete that folder and rerun")


def _read_events(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in ("t", "x", "y", "p")}


def _integrate_file(src: Path, out_dir: Path, time_step: int, events_np: Path) -> None:
    from spikingjelly.datasets import integrate_events_file_to_frames_file_by_fixed_frames_number as integrate

    try:  # print_save False: no line per sample
        integrate(_read_events, str(src), str(out_dir), "number", time_step, SENSOR_SIZE, SENSOR_SIZE, False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read DVS events file {src} ({first_line(exc)}): delete {events_np} "
                        f"to convert the archive again") from None


def integrate_frames(events_np: Path, frames: Path, time_step: int, label: str) -> None:
    """`events_np` -> `frames`, the same tree of `.npz` files, each sample integrated into `time_step` frames by
    spikingjelly's function, split by event count. Written into `<frames>.partial`, renamed once complete."""
    partial = frames.with_name(f"{frames.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    jobs = []
    for folder in sorted([events_np, *(p for p in events_np.rglob("*") if p.is_dir())]):
        out_dir = partial / folder.relative_to(events_np)
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs += [functools.partial(_integrate_file, src, out_dir, time_step, events_np)
                 for src in sorted(folder.glob("*.npz")) if src.is_file()]
    run_all(jobs, f"{label}: integrating the events into {time_step} frames per sample in {frames}")
    partial.rename(frames)


def open_frames(make: Callable[[bool], Any], want_train: bool, root: Path, time_step: int,
                label: str) -> tuple[Any, Any]:
    """`(make(True) or None, make(False))`: spikingjelly datasets over the frames folder, which is integrated
    first when absent (`integrate_frames`); the folder is checked for completeness (a leftover of an interrupted
    run of older code), and the first sample of each for its number of frames, so that a mismatch stops the run
    before it starts. spikingjelly's own lines ('The directory [...] already exists.') are dropped."""
    events_np, frames = root / "events_np", root / f"frames_number_{time_step}_split_by_number"
    if frames.is_dir():
        _check_frames_complete(events_np, frames)
    elif events_np.is_dir():
        integrate_frames(events_np, frames, time_step, label)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            sets = (make(True) if want_train else None, make(False))
    except FileNotFoundError as exc:  # torchvision's DatasetFolder: a class folder without any .npz file
        if frames.is_dir():
            _check_frames_complete(events_np, frames)
        raise DataError(f"malformed {label} data in {events_np} ({first_line(exc)}): every class folder needs "
                        f".npz event files; delete {events_np} and {frames} to convert again") from None
    _check_frames_complete(events_np, frames)
    for dataset in sets:
        if dataset is not None:
            dataset.loader = FramesFile(time_step, frames)  # spikingjelly's DatasetFolder reads samples with it
            if dataset.samples:
                dataset.loader(dataset.samples[0][0])
    return sets
