"""DVS128 Gesture (IBM): the manually downloaded `DvsGesture.tar.gz` of AEDAT 3.1 recordings -> 11 gesture classes.

The archive cannot be downloaded automatically (IBM's page asks for a form); its recordings are cut into one
events file per labelled gesture, as spikingjelly does, then integrated into frames by spikingjelly.
"""
from __future__ import annotations

import functools
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DataError
from .common import Built, data_dir, md5_ok
from .events import dvs_transform, extract_archive, import_spikingjelly_datasets, open_frames, run_all, \
    save_events, time_step

__all__ = ["build_dvs128_gesture", "read_dvs128_aedat"]

_ARCHIVE = "DvsGesture.tar.gz"
_MD5 = "8a5c71fb11e24e5ca5b11866ca6c00a1"
_PAGE = "https://research.ibm.com/interactive/dvsgesture/"


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


def _manual_steps(root: Path) -> str:
    return (f"DVS128 Gesture not found in {root} and it cannot be downloaded automatically: get {_ARCHIVE} "
            f"(and gesture_mapping.csv, LICENSE.txt, README.txt) from IBM's page {_PAGE} and put them in "
            f"{root / 'download'}/, then rerun (the first run converts it to {root / 'events_np'})")


def _split_trial(aedat: Path, labels_csv: Path, out_dir: Path) -> None:
    """One recording -> one events file per labelled gesture, named and numbered as spikingjelly does."""
    events = read_dvs128_aedat(aedat)
    rows = np.loadtxt(labels_csv, dtype=np.uint32, delimiter=",", skiprows=1, ndmin=2)
    per_label = [0] * 11
    for label_1based, start, end in rows[:, :3]:
        label = int(label_1based) - 1
        mask = (events["t"] >= start) & (events["t"] < end)
        save_events(out_dir / str(label) / f"{aedat.stem}_{per_label[label]}.npz",
                    {k: v[mask] for k, v in events.items()})
        per_label[label] += 1


def _prepare_events(root: Path, verify: bool) -> None:
    events_np = root / "events_np"
    if events_np.is_dir():
        for split in ("train", "test"):
            folders = {p.name for p in (events_np / split).glob("*") if p.is_dir()}
            # All 11 label folders, or the folder -> label mapping (sorted names) would shift.
            if folders != {str(i) for i in range(11)}:
                raise DataError(f"malformed DVS128 Gesture folder {events_np / split}: expected label folders "
                                f"0..10 of .npz events; delete {events_np} to convert {_ARCHIVE} again")
        return
    archive = root / "download" / _ARCHIVE
    if not archive.is_file():
        raise DataError(_manual_steps(root))
    if verify and not md5_ok(archive, _MD5):
        raise DataError(f"{archive} fails its MD5 check (incomplete download?): download it again from "
                        f"{_PAGE}, or run with --verify-data false if it is intentionally custom")
    aedat_dir = root / "extract" / "DvsGesture"
    if not aedat_dir.is_dir():
        extract_archive(archive, root / "extract", "DvsGesture", "DVS128 Gesture")
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
            jobs.append(functools.partial(_split_trial, aedat, labels_csv, partial / split))
    run_all(jobs, f"DVS128 Gesture: cutting the recordings of {aedat_dir} into gestures in {root / 'events_np'}")
    partial.rename(events_np)


def build_dvs128_gesture(cfg: Mapping[str, Any], want_train: bool) -> Built:
    import_spikingjelly_datasets()
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    root = data_dir(cfg)
    steps = time_step(cfg)
    _prepare_events(root, verify=bool(cfg.get("verify_data", True)))
    train, val = open_frames(
        lambda train: DVS128Gesture(str(root), train=train, data_type="frame", frames_number=steps,
                                    split_by="number", transform=dvs_transform(cfg, train)),
        want_train, root, steps, "DVS128 Gesture")
    return train, val, 11
