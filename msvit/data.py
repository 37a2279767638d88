"""Datasets and input pipelines: CIFAR-10/100, ImageNet, DVS128 Gesture, CIFAR10-DVS and scikit-learn's digits.

`build_datasets(cfg)` returns `(train, val)`; every sample is `(tensor, int_label)`:
  - static images: float32 `[3, H, W]`, normalised (timm transforms for CIFAR and ImageNet);
  - DVS data: float32 `[T, 2, 128, 128]` raw per-frame event counts (spikingjelly frames, `split_by='number'`),
    with `DVSAugment` on the training split when `cfg['dvs_aug']` is true.

Missing or malformed data raises `DataError` with a one-line message naming the problem and the fix.

The DVS datasets use spikingjelly's on-disk layout under `data_dir` (`download/`, `extract/`, `events_np/`,
`frames_number_<T>_split_by_number/`). The archive -> `events_np` conversion is done here rather than by
spikingjelly 0.0.0.0.14, whose own conversion (a) deletes a manually downloaded archive whose MD5 differs,
(b) swallows every error raised in its thread pool, leaving an empty or partial `events_np` that later runs
trust, (c) cannot read CIFAR10-DVS at all with numpy 2.4 (binary-mode `np.fromstring` now raises), and
(d) parses DVS128 Gesture one event at a time in Python. Frame integration is still spikingjelly's.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.transforms.v2 import functional as TF

from .errors import ConfigError, DataError

__all__ = ["build_datasets", "dataset_num_classes", "image_transforms", "DVSAugment", "FramesToTensor",
           "DigitsDataset", "cifar10_dvs_split", "CIFAR10_DVS_SPLIT_FILE", "read_dvs128_aedat",
           "read_cifar10_dvs_aedat"]

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "dvs128_gesture": 11, "cifar10_dvs": 10,
                "digits": 10}

# CIFAR10-DVS: the first ceil(90%) of each class (in the dataset's own, sorted, order) trains, as in the release.
CIFAR10_DVS_SPLIT_FILE = "msvit_split_90_10.json"
_CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DVS128_ARCHIVE = "DvsGesture.tar.gz"
_DVS128_MD5 = "8a5c71fb11e24e5ca5b11866ca6c00a1"
_DVS128_PAGE = "https://research.ibm.com/interactive/dvsgesture/"

# Digits: a fixed held-out split, independent of cfg['seed'] so every run evaluates on the same images.
_DIGITS_SPLIT_SEED = 0
_DIGITS_VAL_FRACTION = 0.2


# --------------------------------------------------------------------------------------------- public API

def _canonical(name: Any) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"dataset must be a string, got {name!r}: use one of {', '.join(_NUM_CLASSES)}")
    key = name.strip().lower().replace("-", "_")
    if key not in _NUM_CLASSES:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(_NUM_CLASSES)}")
    return key


def dataset_num_classes(name: str) -> int:
    """Number of classes of a supported dataset (`cifar10` -> 10, `imagenet` -> 1000, ...)."""
    return _NUM_CLASSES[_canonical(name)]


_Built = tuple[Dataset | None, Dataset, int]  # (train or None, val, number of classes found)


def build_datasets(cfg: Mapping[str, Any], train: bool = True) -> tuple[Dataset | None, Dataset]:
    """The `(train, val)` datasets for `cfg['dataset']`; see the module docstring for the sample format.

    With `train=False` (evaluation) the training split is neither built nor required: `(None, val)`.
    Under DDP, build on rank 0 first and on the other ranks after a barrier: the first build of a DVS dataset
    converts and integrates files on disk, which concurrent builds would race on.
    """
    name = _canonical(cfg.get("dataset"))
    builders: dict[str, Callable[[Mapping[str, Any], bool], _Built]] = {
        "cifar10": lambda c, t: _build_cifar(c, t, CIFAR10, "CIFAR-10"),
        "cifar100": lambda c, t: _build_cifar(c, t, CIFAR100, "CIFAR-100"),
        "imagenet": _build_imagenet,
        "dvs128_gesture": _build_dvs128_gesture,
        "cifar10_dvs": _build_cifar10_dvs,
        "digits": _build_digits,
    }
    train_set, val_set, found = builders[name](cfg, train)
    wanted = cfg.get("num_classes")
    # Labels >= the model's head size crash the loss far from the cause; say so here.
    if wanted is not None and found > int(wanted):
        raise DataError(f"{name} has {found} classes but num_classes is {wanted}: set num_classes: {found}")
    return train_set, val_set


# ------------------------------------------------------------------------------------------------ helpers

def _data_dir(cfg: Mapping[str, Any]) -> Path:
    value = cfg.get("data_dir")
    if not value:
        raise ConfigError(f"data_dir is not set for dataset {cfg.get('dataset')!r}: set data_dir: <folder>")
    return Path(os.path.expanduser(str(value)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _md5_ok(path: Path, md5: str) -> bool:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == md5


def _pair(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    return float(value[0]), float(value[1])


def image_transforms(cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """timm's train and eval transforms for static images, from the recipe's keys."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    img_size = int(cfg.get("img_size") or 224)
    mean = tuple(float(m) for m in (cfg.get("mean") or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(s) for s in (cfg.get("std") or IMAGENET_DEFAULT_STD))
    aa = cfg.get("aa")
    if isinstance(aa, str) and aa.strip().lower() in ("", "none"):
        aa = None
    train = create_transform(
        img_size, is_training=True,
        scale=_pair(cfg.get("scale"), (0.08, 1.0)), ratio=_pair(cfg.get("ratio"), (3 / 4, 4 / 3)),
        hflip=float(cfg.get("hflip", 0.5)), color_jitter=cfg.get("color_jitter", 0.4), auto_augment=aa,
        interpolation=cfg.get("train_interpolation") or "random", mean=mean, std=std,
        re_prob=float(cfg.get("reprob") or 0.0), re_mode=cfg.get("remode") or "const",
        re_count=int(cfg.get("recount") or 1))
    val = create_transform(
        img_size, is_training=False, interpolation=cfg.get("interpolation") or "bicubic",
        mean=mean, std=std, crop_pct=cfg.get("crop_pct"))
    return train, val


# ------------------------------------------------------------------------------------------- CIFAR-10/100

class _FilesOnlyCheck:
    """Mixin for torchvision's CIFAR classes: check that the files exist instead of their MD5 sums.

    The real pickle format is still read; this only lets small or custom files (tests, subsets) through.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)  # type: ignore[attr-defined]
        names = [n for n, _ in self.train_list + self.test_list]  # type: ignore[attr-defined]
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])  # type: ignore[attr-defined]
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = data[self.meta["key"]]  # type: ignore[attr-defined]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


# Module-level classes so the datasets pickle into DataLoader workers.
class _CIFAR10FilesOnly(_FilesOnlyCheck, CIFAR10):
    pass


class _CIFAR100FilesOnly(_FilesOnlyCheck, CIFAR100):
    pass


def _build_cifar(cfg: Mapping[str, Any], want_train: bool, cls: type[CIFAR10], label: str) -> _Built:
    root = _data_dir(cfg)
    folder = root / cls.base_folder
    download = bool(cfg.get("download", False))
    verify = bool(cfg.get("verify_data", True))
    if not download:
        if not folder.is_dir():
            raise DataError(f"{label} not found: expected torchvision's folder {folder}; "
                            f"run with --download to fetch it into {root}")
        names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{label} folder {folder} lacks {', '.join(missing)}: "
                            f"delete the folder and run with --download, or add the missing files")
    if not verify:
        cls = _CIFAR10FilesOnly if cls is CIFAR10 else _CIFAR100FilesOnly
    train_tf, val_tf = image_transforms(cfg)
    try:
        train = cls(str(root), train=True, transform=train_tf, download=download) if want_train else None
        val = cls(str(root), train=False, transform=val_tf, download=download and not want_train)
    except RuntimeError as exc:
        if "corrupted" not in str(exc):
            raise
        raise DataError(f"{label} files in {folder} fail torchvision's MD5 check: re-download them "
                        f"(delete the folder, run with --download), or run with --verify-data false "
                        f"if they are intentionally custom") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{label} files in {folder} are malformed ({type(exc).__name__}: {_first_line(exc)}): "
                        f"expected torchvision's CIFAR pickles; re-download with --download") from None
    return train, val, len(val.classes)


# -------------------------------------------------------------------------------------------------- ImageNet

def _build_imagenet(cfg: Mapping[str, Any], want_train: bool) -> _Built:
    root = _data_dir(cfg)
    layout = f"expected the ImageFolder layout {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG"
    train_tf, val_tf = image_transforms(cfg)
    sets: dict[str, ImageFolder] = {}
    splits = [("train", train_tf), ("val", val_tf)] if want_train else [("val", val_tf)]
    for split, tf in splits:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"ImageNet {split} folder {folder} not found: {layout} "
                            f"(val sorted into class folders)")
        try:
            sets[split] = ImageFolder(str(folder), transform=tf)
        except FileNotFoundError as exc:
            raise DataError(f"ImageNet {split} folder {folder} has no usable images ({_first_line(exc)}): "
                            f"{layout}") from None
    train, val = sets.get("train"), sets["val"]
    if train is not None and train.classes != val.classes:
        raise DataError(f"ImageNet train and val class folders differ ({len(train.classes)} vs "
                        f"{len(val.classes)}): both must hold the same <wnid> folders")
    return train, val, len(train.classes if train is not None else val.classes)


# ------------------------------------------------------------------------------------------ DVS: transforms

class DVSAugment:
    """Random flip, then one op from identity / shear-x / translate-x / translate-y / rotate / cutout.

    Applied to one sample `[T, C, H, W]` (or any `[..., H, W]`): the geometry is drawn once and applied to all
    frames at once. Nearest interpolation and zero fill keep the values raw event counts. Magnitudes come from
    31-bin tables and get a random sign; shear and rotation are about the frame centre.
    Leave `generator` as None inside DataLoader workers (each worker's global RNG is seeded differently;
    a Generator object would be copied into every worker with the same state).
    """

    OPS = ("identity", "shear_x", "translate_x", "translate_y", "rotate", "cutout")
    CUTOUT_AREA = (0.001, 0.11)  # fraction of the frame zeroed by cutout

    def __init__(self, flip_p: float = 0.5, ops: Sequence[str] = OPS, generator: torch.Generator | None = None,
                 num_bins: int = 31) -> None:
        unknown = [op for op in ops if op not in self.OPS]
        if unknown or not ops:
            raise ValueError(f"DVSAugment ops must be a non-empty subset of {self.OPS}, got {tuple(ops)}")
        self.flip_p = float(flip_p)
        self.ops = tuple(ops)
        self.generator = generator
        self.magnitudes = {
            "shear_x": torch.linspace(-0.3, 0.3, num_bins),  # radians
            "translate_x": torch.linspace(-5.0, 5.0, num_bins),  # pixels
            "translate_y": torch.linspace(-5.0, 5.0, num_bins),
            "rotate": torch.linspace(-30.0, 30.0, num_bins),  # degrees
        }

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))

    def _magnitude(self, op: str) -> float:
        table = self.magnitudes[op]
        value = float(table[self._randint(len(table))])
        return -value if self._randint(2) else value

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim < 3:
            raise ValueError(f"DVSAugment expects [..., C, H, W] frames, got shape {tuple(frames.shape)}")
        if self.flip_p > 0 and self._rand() < self.flip_p:
            frames = frames.flip(-1)
        op = self.ops[self._randint(len(self.ops))]
        if op == "identity":
            return frames
        if op == "cutout":
            return self._cutout(frames)
        m = self._magnitude(op)
        angle, translate, shear = 0.0, [0.0, 0.0], [0.0, 0.0]
        if op == "shear_x":
            shear = [math.degrees(m), 0.0]
        elif op == "translate_x":
            translate = [m, 0.0]
        elif op == "translate_y":
            translate = [0.0, m]
        else:
            angle = m
        # fill=None is grid_sample's zero padding: pixels moved in from outside are 0 events.
        return TF.affine(frames, angle=angle, translate=translate, scale=1.0, shear=shear,
                         interpolation=TF.InterpolationMode.NEAREST, fill=None)

    def _cutout(self, frames: torch.Tensor) -> torch.Tensor:
        h, w = frames.shape[-2:]
        lo, hi = self.CUTOUT_AREA
        area = (lo + (hi - lo) * self._rand()) * h * w
        side = max(1, min(h, w, round(math.sqrt(area))))
        top, left = self._randint(h - side + 1), self._randint(w - side + 1)
        out = frames.clone()
        out[..., top:top + side, left:left + side] = 0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flip_p={self.flip_p}, ops={self.ops})"


class FramesToTensor:
    """spikingjelly's numpy frames -> float32 tensor `[T, 2, H, W]`, then the optional augmentation."""

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.augment = augment

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        return self.augment(x) if self.augment is not None else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(augment={self.augment!r})"


def _dvs_transform(cfg: Mapping[str, Any], train: bool) -> FramesToTensor:
    return FramesToTensor(DVSAugment() if train and cfg.get("dvs_aug", False) else None)


def _import_spikingjelly_datasets() -> None:
    """Import `spikingjelly.datasets` without its import-time log line.

    Its `__init__` tries CuPy (for a GPU padding helper never used here) and, when that fails, logs
    'spikingjelly.dataset.__init__: No module named ...' at INFO on the root logger, which any INFO-level
    logging setup (the CLIs') prints to stderr, ahead of the real output or of a one-line `error: ...`.
    """
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        import spikingjelly.datasets  # noqa: F401  (cached: later imports of its submodules are silent)
    finally:
        logging.disable(previous)


def _time_step(cfg: Mapping[str, Any]) -> int:
    value = cfg.get("time_step", 16)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"time_step must be a positive integer for DVS data, got {value!r}")
    return value


# ----------------------------------------------------------------------------------- DVS: reading raw files

def read_dvs128_aedat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Events `t, x, y, p` (int64) of a DVS128 Gesture AEDAT 3.1 file.

    Same result as spikingjelly's `load_aedat_v3`, vectorised per packet instead of per event: every
    `capacity * size` byte slot of a polarity packet (type 1) is an event; the valid bit is not filtered.
    """
    with open(path, "rb") as f:
        line = f.readline()
        while line.startswith(b"#") and line != b"#!END-HEADER\r\n":
            line = f.readline()
        data = f.read()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in "txyp"}
    pos = 0
    while pos + 28 <= len(data):
        e_type, _source, e_size, _offset, ts_overflow, capacity, _number, _valid = \
            struct.unpack_from("<HHIIIIII", data, pos)
        pos += 28
        body = data[pos:pos + capacity * e_size]
        pos += capacity * e_size
        if e_type != 1 or e_size < 8:
            continue  # not polarity events
        n = len(body) // e_size
        words = np.frombuffer(body, dtype="<u4", count=n * e_size // 4).reshape(n, e_size // 4).astype(np.int64)
        aer, ts = words[:, 0], words[:, 1]
        parts["t"].append(ts | (ts_overflow << 31))
        parts["x"].append((aer >> 17) & 0x7FFF)
        parts["y"].append((aer >> 2) & 0x7FFF)
        parts["p"].append((aer >> 1) & 1)
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}


def read_cifar10_dvs_aedat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Events `t, x, y, p` of a CIFAR10-DVS AEDAT 2.0 file, oriented as spikingjelly's `CIFAR10DVS`.

    Big-endian (address, timestamp) uint32 pairs after the '#' header lines; x, y are swapped and mirrored
    and the polarity inverted, as spikingjelly does (see jackd/events-tfds#1).
    """
    with open(path, "rb") as f:
        raw = f.read()
    pos = 0
    while raw.startswith(b"#", pos):
        end = raw.find(b"\n", pos)
        if end < 0:
            break
        pos = end + 1
    words = np.frombuffer(raw, dtype=">u4", offset=pos, count=(len(raw) - pos) // 4)
    if len(words) % 2:
        raise DataError(f"malformed CIFAR10-DVS file {path}: odd number of 32-bit words; "
                        f"delete it (or its extract/ folder) and extract the zip again")
    addr, t = words[0::2].astype(np.int64), words[1::2].astype(np.int64)
    x, y, p = (addr & 0xFE) >> 1, (addr & 0x7F00) >> 8, addr & 1
    return {"t": t, "x": 127 - y, "y": 127 - x, "p": 1 - p}


def _save_events(path: Path, events: Mapping[str, np.ndarray]) -> None:
    np.savez_compressed(path, t=events["t"], x=events["x"], y=events["y"], p=events["p"])


def _run_all(jobs: Iterable[Callable[[], None]]) -> None:
    """Run jobs on a few threads (numpy and zlib release the GIL) and re-raise the first error."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # do not convert the rest after a failure
                future.cancel()
            raise


def _extract(archive: Path, extract_root: Path, folder: str, label: str) -> None:
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
        raise DataError(f"cannot extract {label} archive {archive} ({_first_line(exc)}): "
                        f"download it again") from None
    if not (tmp / folder).is_dir():
        raise DataError(f"{label} archive {archive} holds no {folder}/ folder: download it again")
    (tmp / folder).rename(extract_root / folder)
    shutil.rmtree(tmp)


def _npz_relpaths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.npz")}


def _check_frames_complete(events_root: Path, frames_root: Path) -> None:
    """spikingjelly reuses any existing frames folder, even one left half-written by an interrupted run."""
    missing = sorted(_npz_relpaths(events_root) - _npz_relpaths(frames_root))
    if missing:
        raise DataError(f"frames folder {frames_root} lacks {len(missing)} samples (e.g. {missing[0]}), "
                        f"left by an interrupted or failed integration: delete that folder and rerun")


def _frames_root(root: Path, time_step: int) -> Path:
    return root / f"frames_number_{time_step}_split_by_number"


def _open_frames(make: Callable[[bool], Any], want_train: bool, root: Path, time_step: int,
                 label: str) -> tuple[Any, Any]:
    """`(make(True) or None, make(False))`: spikingjelly datasets, which integrate `events_np` into frames on
    first use; the frames folder is checked for completeness before (a leftover) and after (a swallowed error)."""
    events_np, frames = root / "events_np", _frames_root(root, time_step)
    if frames.is_dir():
        _check_frames_complete(events_np, frames)
    try:
        sets = (make(True) if want_train else None, make(False))
    except FileNotFoundError as exc:  # torchvision's DatasetFolder: a class folder without any .npz file
        if frames.is_dir():
            _check_frames_complete(events_np, frames)
        raise DataError(f"malformed {label} data in {events_np} ({_first_line(exc)}): every class folder needs "
                        f".npz event files; delete {events_np} and {frames} to convert again") from None
    _check_frames_complete(events_np, frames)
    return sets


# ------------------------------------------------------------------------------------- DVS128 Gesture

def _dvs128_manual_steps(root: Path) -> str:
    return (f"DVS128 Gesture not found in {root} and it cannot be downloaded automatically: get {_DVS128_ARCHIVE} "
            f"(and gesture_mapping.csv, LICENSE.txt, README.txt) from IBM's page {_DVS128_PAGE} and put them in "
            f"{root / 'download'}/, then rerun (the first run converts it to {root / 'events_np'})")


def _split_dvs128_trial(aedat: Path, labels_csv: Path, out_dir: Path) -> None:
    """One recording -> one events file per labelled gesture, named and numbered as spikingjelly does."""
    events = read_dvs128_aedat(aedat)
    rows = np.loadtxt(labels_csv, dtype=np.uint32, delimiter=",", skiprows=1, ndmin=2)
    per_label = [0] * 11
    for label_1based, start, end in rows[:, :3]:
        label = int(label_1based) - 1
        mask = (events["t"] >= start) & (events["t"] < end)
        _save_events(out_dir / str(label) / f"{aedat.stem}_{per_label[label]}.npz",
                     {k: v[mask] for k, v in events.items()})
        per_label[label] += 1


def _prepare_dvs128_events(root: Path, verify: bool) -> None:
    events_np = root / "events_np"
    if events_np.is_dir():
        for split in ("train", "test"):
            folders = {p.name for p in (events_np / split).glob("*") if p.is_dir()}
            # All 11 label folders, or the folder -> label mapping (sorted names) would shift.
            if folders != {str(i) for i in range(11)}:
                raise DataError(f"malformed DVS128 Gesture folder {events_np / split}: expected label folders "
                                f"0..10 of .npz events; delete {events_np} to convert {_DVS128_ARCHIVE} again")
        return
    archive = root / "download" / _DVS128_ARCHIVE
    if not archive.is_file():
        raise DataError(_dvs128_manual_steps(root))
    if verify and not _md5_ok(archive, _DVS128_MD5):
        raise DataError(f"{archive} fails its MD5 check (incomplete download?): download it again from "
                        f"{_DVS128_PAGE}, or run with --verify-data false if it is intentionally custom")
    aedat_dir = root / "extract" / "DvsGesture"
    if not aedat_dir.is_dir():
        _extract(archive, root / "extract", "DvsGesture", "DVS128 Gesture")
    jobs = []
    partial = root / "events_np.partial"  # renamed to events_np only once every trial is converted
    shutil.rmtree(partial, ignore_errors=True)
    for split in ("train", "test"):
        trials = aedat_dir / f"trials_to_{split}.txt"
        if not trials.is_file():
            raise DataError(f"{trials} not found: {archive} is not the DVS128 Gesture archive; download it again")
        for label in range(11):
            (partial / split / str(label)).mkdir(parents=True)
        for name in trials.read_text().split():
            aedat = aedat_dir / name
            labels_csv = aedat_dir / f"{aedat.stem}_labels.csv"
            for needed in (aedat, labels_csv):
                if not needed.is_file():
                    raise DataError(f"{needed} listed in {trials.name} is missing: delete {root / 'extract'} "
                                    f"and rerun to extract {archive} again")
            jobs.append(functools.partial(_split_dvs128_trial, aedat, labels_csv, partial / split))
    _run_all(jobs)
    partial.rename(events_np)


def _build_dvs128_gesture(cfg: Mapping[str, Any], want_train: bool) -> _Built:
    _import_spikingjelly_datasets()
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    root = _data_dir(cfg)
    time_step = _time_step(cfg)
    _prepare_dvs128_events(root, verify=bool(cfg.get("verify_data", True)))
    train, val = _open_frames(
        lambda train: DVS128Gesture(str(root), train=train, data_type="frame", frames_number=time_step,
                                    split_by="number", transform=_dvs_transform(cfg, train)),
        want_train, root, time_step, "DVS128 Gesture")
    return train, val, 11


# ---------------------------------------------------------------------------------------------- CIFAR10-DVS

def _convert_cifar10_dvs_file(src: Path, dst: Path) -> None:
    _save_events(dst, read_cifar10_dvs_aedat(src))


def _convert_cifar10_dvs(extract_root: Path, events_np: Path) -> None:
    partial = events_np.with_name("events_np.partial")
    shutil.rmtree(partial, ignore_errors=True)
    jobs = []
    for cls in _CIFAR10_DVS_CLASSES:
        (partial / cls).mkdir(parents=True)
        for src in sorted((extract_root / cls).iterdir()):
            if src.is_file() and src.suffix == ".aedat":
                jobs.append(functools.partial(_convert_cifar10_dvs_file, src, partial / cls / f"{src.stem}.npz"))
    _run_all(jobs)
    partial.rename(events_np)


def _prepare_cifar10_dvs_events(root: Path, download: bool, verify: bool) -> None:
    _import_spikingjelly_datasets()
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    events_np = root / "events_np"
    if events_np.is_dir():
        folders = {p.name for p in events_np.iterdir() if p.is_dir()}
        if folders != set(_CIFAR10_DVS_CLASSES):
            raise DataError(f"malformed CIFAR10-DVS folder {events_np}: expected exactly the class folders "
                            f"{', '.join(_CIFAR10_DVS_CLASSES)}; delete it to convert the zips again")
        return
    extract_root = root / "extract"
    download_root = root / "download"
    resources = CIFAR10DVS.resource_url_md5()  # (zip name, url, md5) per class
    to_extract = [r for r in resources if not (extract_root / Path(r[0]).stem).is_dir()]
    missing = [name for name, _, _ in to_extract if not (download_root / name).is_file()]
    if missing and not download:
        raise DataError(f"CIFAR10-DVS not found in {root}: run with --download to fetch it, or put "
                        f"{', '.join(missing)} (from figshare) into {download_root}/")
    for name, url, md5 in to_extract:
        archive = download_root / name
        if not archive.is_file():
            from torchvision.datasets.utils import download_url  # checks the MD5 after downloading
            download_url(url, str(download_root), filename=name, md5=md5)
        elif verify and not _md5_ok(archive, md5):
            raise DataError(f"{archive} fails its MD5 check (incomplete download?): delete it and run with "
                            f"--download, or run with --verify-data false if it is intentionally custom")
        _extract(archive, extract_root, Path(name).stem, "CIFAR10-DVS")
    _convert_cifar10_dvs(extract_root, events_np)


def _fingerprint(dataset: Any, root: str) -> str:
    digest = hashlib.sha1()
    for path, target in dataset.samples:
        digest.update(f"{os.path.relpath(path, root)}\t{target}\n".encode())
    return digest.hexdigest()


def cifar10_dvs_split(targets: Sequence[int]) -> tuple[list[int], list[int]]:
    """First ceil(90%) of each class's indices (in dataset order) train, the rest test."""
    per_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        per_class.setdefault(int(t), []).append(i)
    train, test = [], []
    for label in sorted(per_class):
        idx = per_class[label]
        cut = (9 * len(idx) + 9) // 10  # ceil(0.9 n) in integers, as spikingjelly's split_to_train_test_set
        train += idx[:cut]
        test += idx[cut:]
    return train, test


def _cached_split(dataset: Any, cache: Path) -> tuple[list[int], list[int]]:
    """The 90/10 split, read from `cache` when it matches the dataset (count and file list), else rewritten."""
    fingerprint = _fingerprint(dataset, dataset.root)
    try:
        saved = json.loads(cache.read_text())
        if saved["num_samples"] == len(dataset.samples) and saved["fingerprint"] == fingerprint:
            return list(saved["train"]), list(saved["test"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or stale: recompute
    train, test = cifar10_dvs_split(dataset.targets)
    record = {"num_samples": len(dataset.samples), "fingerprint": fingerprint, "train_ratio": 0.9,
              "order": "per class, first ceil(90%) in sorted file order", "train": train, "test": test}
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    return train, test


def _build_cifar10_dvs(cfg: Mapping[str, Any], want_train: bool) -> _Built:
    _import_spikingjelly_datasets()
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    root = _data_dir(cfg)
    time_step = _time_step(cfg)
    _prepare_cifar10_dvs_events(root, download=bool(cfg.get("download", False)),
                                verify=bool(cfg.get("verify_data", True)))
    # Two views of the same files, each with its own transform; the split picks from each.
    full_train, full_test = _open_frames(
        lambda train: CIFAR10DVS(str(root), data_type="frame", frames_number=time_step, split_by="number",
                                 transform=_dvs_transform(cfg, train)),
        want_train, root, time_step, "CIFAR10-DVS")
    train_idx, test_idx = _cached_split(full_test, root / CIFAR10_DVS_SPLIT_FILE)
    return (Subset(full_train, train_idx) if want_train else None), Subset(full_test, test_idx), 10


# --------------------------------------------------------------------------------------------------- digits

class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits (1797 images, bundled): a fixed stratified 80/20 split, upsampled to `img_size`.

    Pixels are scaled to [0, 1], resized bilinearly, replicated to 3 channels and normalised. With `augment`,
    a random translation of up to 2 pixels per 32 (zero fill) is applied before normalising.
    """

    def __init__(self, train: bool, img_size: int = 32, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), augment: bool = False,
                 generator: torch.Generator | None = None) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        train_idx, val_idx = train_test_split(np.arange(len(digits.target)), test_size=_DIGITS_VAL_FRACTION,
                                              stratify=digits.target, random_state=_DIGITS_SPLIT_SEED)
        idx = np.sort(train_idx if train else val_idx)
        self.indices = idx
        self.images = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8]
        self.targets = [int(t) for t in digits.target[idx]]
        self.classes = [str(i) for i in range(10)]
        self.img_size = int(img_size)
        self.mean = torch.tensor([float(m) for m in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(-1, 1, 1)
        self.augment = augment
        self.generator = generator
        self.max_shift = max(1, round(2 * self.img_size / 32))

    def __len__(self) -> int:
        return len(self.targets)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        dx, dy = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=self.generator))
        h, w = x.shape[-2:]
        out = torch.zeros_like(x)
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = nnf.interpolate(self.images[index:index + 1], size=(self.img_size, self.img_size), mode="bilinear",
                            align_corners=False)[0]
        if self.augment:
            x = self._shift(x)
        x = (x.expand(3, -1, -1) - self.mean) / self.std
        return x.contiguous(), self.targets[index]


def _build_digits(cfg: Mapping[str, Any], want_train: bool) -> _Built:
    kwargs = dict(img_size=int(cfg.get("img_size") or 32), mean=tuple(cfg.get("mean") or (0.5,) * 3),
                  std=tuple(cfg.get("std") or (0.5,) * 3))
    train = DigitsDataset(True, augment=True, **kwargs) if want_train else None
    return train, DigitsDataset(False, **kwargs), 10
