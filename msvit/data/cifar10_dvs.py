"""CIFAR10-DVS: ten class zips (figshare) of AEDAT 2.0 recordings, split 90/10 per class as in the release."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import Subset

from ..errors import DataError
from .common import Built, data_dir, downloading, md5_ok
from .events import dvs_transform, extract_archive, import_spikingjelly_datasets, open_frames, run_all, \
    save_events, time_step

__all__ = ["build_cifar10_dvs", "cifar10_dvs_split", "read_cifar10_dvs_aedat", "CIFAR10_DVS_SPLIT_FILE"]

# The first ceil(90%) of each class (in the dataset's own, sorted, order) trains, as in the release.
CIFAR10_DVS_SPLIT_FILE = "msvit_split_90_10.json"
_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


def _convert_file(src: Path, dst: Path) -> None:
    save_events(dst, read_cifar10_dvs_aedat(src))


def _convert(extract_root: Path, events_np: Path) -> None:
    partial = events_np.with_name("events_np.partial")
    shutil.rmtree(partial, ignore_errors=True)
    jobs = []
    for cls in _CLASSES:
        (partial / cls).mkdir(parents=True)
        for src in sorted((extract_root / cls).iterdir()):
            if src.is_file() and src.suffix == ".aedat":
                jobs.append(functools.partial(_convert_file, src, partial / cls / f"{src.stem}.npz"))
    run_all(jobs, f"CIFAR10-DVS: converting the recordings of {extract_root} to {events_np}")
    partial.rename(events_np)


def _prepare_events(root: Path, download: bool, verify: bool) -> None:
    import_spikingjelly_datasets()
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    events_np = root / "events_np"
    if events_np.is_dir():
        folders = {p.name for p in events_np.iterdir() if p.is_dir()}
        if folders != set(_CLASSES):
            raise DataError(f"malformed CIFAR10-DVS folder {events_np}: expected exactly the class folders "
                            f"{', '.join(_CLASSES)}; delete it to convert the zips again")
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

            offline_fix = (f"download the class zips ({', '.join(missing)}) on a machine with network access "
                           f"and put them into {download_root}/, then run without --download")
            with downloading(f"CIFAR10-DVS {name}", url, offline_fix):
                download_url(url, str(download_root), filename=name, md5=md5)
        elif verify and not md5_ok(archive, md5):
            raise DataError(f"{archive} fails its MD5 check (incomplete download?): delete it and run with "
                            f"--download, or run with --verify-data false if it is intentionally custom")
        extract_archive(archive, extract_root, Path(name).stem, "CIFAR10-DVS")
    _convert(extract_root, events_np)


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


def build_cifar10_dvs(cfg: Mapping[str, Any], want_train: bool) -> Built:
    import_spikingjelly_datasets()
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    root = data_dir(cfg)
    steps = time_step(cfg)
    _prepare_events(root, download=bool(cfg.get("download", False)), verify=bool(cfg.get("verify_data", True)))
    # Two views of the same files, each with its own transform; the split picks from each.
    full_train, full_test = open_frames(
        lambda train: CIFAR10DVS(str(root), data_type="frame", frames_number=steps, split_by="number",
                                 transform=dvs_transform(cfg, train)),
        want_train, root, steps, "CIFAR10-DVS")
    train_idx, test_idx = _cached_split(full_test, root / CIFAR10_DVS_SPLIT_FILE)
    return (Subset(full_train, train_idx) if want_train else None), Subset(full_test, test_idx), 10
