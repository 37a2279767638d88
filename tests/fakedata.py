"""Tiny datasets in the real on-disk formats, written into a test's tmp_path (shared by the data tests and the
end-to-end runs of the dataset folders).

Every generator writes what `msvit.data.build_datasets` reads for that dataset with `data_dir=root`:
  - `make_cifar`: torchvision's `cifar-10-batches-py/` or `cifar-100-python/` pickles, written as Python 2 does;
  - `make_imagenet`: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`;
  - `make_dvs128_events_np` / `make_dvs128_archive`: spikingjelly's converted `events_np/{train,test}/<label>/`
    tree, or the `download/DvsGesture.tar.gz` archive of AEDAT 3.1 recordings;
  - `make_cifar10_dvs_events_np` (and `aedat2_bytes` for the class zips): `events_np/<class>/*.npz`.
"""
from __future__ import annotations

import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


# ----------------------------------------------------- CIFAR-10/100: torchvision's folders of Python 2 pickles

class Py2Str(bytes):
    """Pickled as a Python 2 `str`, like every key and name in the real CIFAR files (written by Python 2):
    read back as `str` with encoding='latin1' (torchvision) and as `bytes` with encoding='bytes'."""


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler has a per-type dispatch table we can extend
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def write_py2_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def py2(d: dict) -> dict:
    return {Py2Str(k.encode()): v for k, v in d.items()}


def make_cifar(root: Path, name: str, rng: np.random.Generator) -> dict:
    """Tiny CIFAR-10 (5 train batches of 2, test of 3) or CIFAR-100 (train 6, test 4); returns the raw arrays."""
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
        n_cls = 10
        meta_file, meta = "batches.meta", {"label_names": [Py2Str(f"class{i}".encode()) for i in range(10)],
                                           "num_cases_per_batch": 2, "num_vis": 3072}
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = {"train": 6, "test": 4}
        n_cls = 100
        meta_file, meta = "meta", {"fine_label_names": [Py2Str(f"fine{i}".encode()) for i in range(100)],
                                   "coarse_label_names": [Py2Str(f"coarse{i}".encode()) for i in range(20)]}
    folder.mkdir(parents=True)
    raw = {}
    for fname, n in files.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, n_cls, size=n)]
        labels[0] = n_cls - 1  # the largest label must come through
        entry = {"batch_label": Py2Str(fname.encode()), "data": data, label_key: labels,
                 "filenames": [Py2Str(f"img{i}.png".encode()) for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in labels]
        write_py2_pickle(folder / fname, py2(entry))
        raw[fname] = (data, labels)
    write_py2_pickle(folder / meta_file, py2(meta))
    return raw


# ---------------------------------------------------------------------------- ImageNet: the ImageFolder layout

def make_imagenet(root: Path, wnids=("n01440764", "n01443537"), n_train=2, n_val=1) -> None:
    """`n_train` and `n_val` random 40x52 JPEGs per class folder `wnid`."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", "JPEG")


# ------------------------------------------------------------- DVS events: spikingjelly's events_np .npz files

def random_events(rng: np.random.Generator, n: int, t0: int = 0) -> dict[str, np.ndarray]:
    """`n` events on the 128x128 sensor, timestamps sorted in [t0, t0 + 10 ms)."""
    return {"t": np.sort(rng.integers(t0, t0 + 10_000, n)).astype(np.int64),
            "x": rng.integers(0, 128, n).astype(np.int64), "y": rng.integers(0, 128, n).astype(np.int64),
            "p": rng.integers(0, 2, n).astype(np.int64)}


def write_events(path: Path, events: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **events)


# ---------------------------------------------------------------------------------------------- DVS128 Gesture

def make_dvs128_events_np(root: Path, rng: np.random.Generator) -> dict[str, dict]:
    """An already converted tree: events_np/{train,test}/<label 0..10>/<trial>_<k>.npz with t, x, y, p."""
    written = {}
    for split in ("train", "test"):
        for label in range(11):
            events = random_events(rng, int(rng.integers(9, 40)))
            name = f"user{1 if split == 'train' else 24:02d}_fluorescent_0.npz"
            write_events(root / "events_np" / split / str(label) / name, events)
            written[f"{split}/{label}/{name}"] = events
    return written


def aedat3_bytes(events: dict[str, np.ndarray], overflow: int = 0) -> bytes:
    """AEDAT 3.1: '#' header, then packets of a 28-byte header and 8-byte polarity events (addr, t).
    The events go in two polarity packets, the second with timestamp-overflow counter `overflow`."""
    aer = (events["x"] << 17) | (events["y"] << 2) | (events["p"] << 1) | 1
    words = np.stack([aer, events["t"]], 1).astype("<u4")
    half = len(words) // 2
    out = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"]
    special = struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + b"\x07" * 8  # a non-polarity packet: skipped
    for chunk, ts_overflow in ((words[:half], 0), (special, 0), (words[half:], overflow)):
        if isinstance(chunk, bytes):
            out.append(chunk)
        else:
            n = len(chunk)
            out.append(struct.pack("<HHIIIIII", 1, 1, 8, 4, ts_overflow, n, n, n) + chunk.tobytes())
    return b"".join(out)


def make_dvs128_archive(root: Path, rng: np.random.Generator) -> dict[str, list[int]]:
    """download/DvsGesture.tar.gz holding DvsGesture/{trials_to_*.txt, <trial>.aedat, <trial>_labels.csv}."""
    src = root / "src" / "DvsGesture"
    src.mkdir(parents=True)
    counts = {}
    for split, trial in (("train", "user01_fluorescent"), ("test", "user24_led")):
        (src / f"trials_to_{split}.txt").write_text(f"{trial}.aedat\n")
        parts, rows, per_gesture = [], ["class,startTime_usec,endTime_usec"], []
        for label in range(1, 12):  # labels 1..11, a gesture every 10 ms
            start = 100_000 + 10_000 * label
            n = int(rng.integers(3, 15))
            parts.append(random_events(rng, n, t0=start))  # inside [start, start + 10000)
            rows.append(f"{label},{start},{start + 9_000}")
            per_gesture.append(int((parts[-1]["t"] < start + 9_000).sum()))
        events = {k: np.concatenate([p[k] for p in parts]) for k in "txyp"}
        (src / f"{trial}.aedat").write_bytes(aedat3_bytes(events))
        (src / f"{trial}_labels.csv").write_text("\n".join(rows) + "\n")
        counts[split] = per_gesture
    (root / "download").mkdir()
    with tarfile.open(root / "download" / "DvsGesture.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="DvsGesture")
    return counts


# ------------------------------------------------------------------------------------------------- CIFAR10-DVS

C10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# samples per class: 69 in all, of which 4 are test samples under the 90/10 split (ceil(0.9 n) train)
C10DVS_COUNTS = dict(zip(C10DVS_CLASSES, (10, 11, 1, 2, 3, 4, 5, 6, 7, 20)))


def make_cifar10_dvs_events_np(root: Path, rng: np.random.Generator,
                               counts: dict[str, int] | None = None) -> dict[str, dict]:
    """An already converted tree: events_np/<class>/cifar10_<class>_<i>.npz with t, x, y, p; `counts` samples
    per class (default C10DVS_COUNTS; every class folder needs at least one). Returns the events by path."""
    written = {}
    for cls, n in (C10DVS_COUNTS if counts is None else counts).items():
        for i in range(n):
            events = random_events(rng, int(rng.integers(5, 30)))
            write_events(root / "events_np" / cls / f"cifar10_{cls}_{i}.npz", events)
            written[f"{cls}/cifar10_{cls}_{i}.npz"] = events
    return written


def aedat2_bytes(x_raw: list[int], y_raw: list[int], p_raw: list[int]) -> bytes:
    """CIFAR10-DVS AEDAT 2.0: '#' header lines, then big-endian (address, timestamp) uint32 pairs."""
    addr = (np.array(y_raw) << 8) | (np.array(x_raw) << 1) | np.array(p_raw)
    t = np.arange(len(addr)) * 10
    return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + np.stack([addr, t], 1).astype(">u4").tobytes()
