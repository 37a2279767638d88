"""ImageNet-1K (or any ImageFolder set: ImageNet-100, Tiny-ImageNet, your own): `train/<class>/*` and
`val/<class>/*` under `data_dir`; the number of class folders is the number of classes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

from ..errors import DataError
from .common import Built, data_dir, first_line
from .transforms import image_transforms

__all__ = ["build_imagenet", "read_rgb_image", "image_folder_classes"]


def read_rgb_image(path: str) -> Image.Image:
    """ImageFolder's loader: the image at `path` in RGB, or a DataError naming the file.

    An unreadable image stops the run rather than being skipped: skipping would change which samples share a
    batch (the batch-coupled SSA couples them) and break the exact resume from last.pth.
    """
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError) as exc:  # PIL: unidentified format, truncated data, malformed headers
        reason = "cannot identify image file" if isinstance(exc, UnidentifiedImageError) else first_line(exc)
        raise DataError(f"cannot read image {path} ({reason}): replace or delete it, then rerun "
                        f"(a training run continues with --resume auto --output <its run folder>)") from None


def _layout(root: Path) -> str:
    return f"expected the ImageFolder layout {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG"


def _split_folder(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"ImageNet {split} folder {folder} not found: {_layout(root)} (val sorted into class folders)")
    return folder


def image_folder_classes(cfg: Mapping[str, Any], split: str) -> tuple[int, Path]:
    """`(number of class folders, the folder)` of `data_dir/split`: its subfolders, as ImageFolder counts them,
    without reading any image (a listing of one directory)."""
    root = data_dir(cfg)
    folder = _split_folder(root, split)
    with os.scandir(folder) as entries:  # torchvision's find_classes: every subfolder is a class
        count = sum(1 for entry in entries if entry.is_dir())
    if count == 0:
        raise DataError(f"ImageNet {split} folder {folder} has no class folders: {_layout(root)}")
    return count, folder


def build_imagenet(cfg: Mapping[str, Any], want_train: bool) -> Built:
    root = data_dir(cfg)
    layout = _layout(root)
    train_tf, val_tf = image_transforms(cfg)
    sets: dict[str, ImageFolder] = {}
    splits = [("train", train_tf), ("val", val_tf)] if want_train else [("val", val_tf)]
    for split, tf in splits:
        folder = _split_folder(root, split)
        try:
            sets[split] = ImageFolder(str(folder), transform=tf, loader=read_rgb_image)
        except FileNotFoundError as exc:
            raise DataError(f"ImageNet {split} folder {folder} has no usable images ({first_line(exc)}): "
                            f"{layout}") from None
    train, val = sets.get("train"), sets["val"]
    if train is not None and train.classes != val.classes:
        raise DataError(f"ImageNet train and val class folders differ ({len(train.classes)} vs "
                        f"{len(val.classes)}): both must hold the same <wnid> folders")
    return train, val, len(train.classes if train is not None else val.classes)
