"""CIFAR-10 and CIFAR-100: torchvision's folders of pickled batches under `data_dir`, timm's transforms."""
from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

from torchvision.datasets import CIFAR10, CIFAR100

from ..errors import DataError
from .common import Built, data_dir, downloading, first_line
from .transforms import image_transforms

__all__ = ["build_cifar10", "build_cifar100"]


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


def build_cifar10(cfg: Mapping[str, Any], want_train: bool) -> Built:
    return _build_cifar(cfg, want_train, CIFAR10, "CIFAR-10")


def build_cifar100(cfg: Mapping[str, Any], want_train: bool) -> Built:
    return _build_cifar(cfg, want_train, CIFAR100, "CIFAR-100")


def _build_cifar(cfg: Mapping[str, Any], want_train: bool, cls: type[CIFAR10], label: str) -> Built:
    root = data_dir(cfg)
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
    offline_fix = (f"download it on a machine with network access and extract it into {root}, giving {folder}/, "
                   f"then run without --download")
    try:
        with downloading(label, cls.url, offline_fix):  # torchvision downloads inside the constructor
            train = cls(str(root), train=True, transform=train_tf, download=download) if want_train else None
            val = cls(str(root), train=False, transform=val_tf, download=download and not want_train)
    except RuntimeError as exc:
        if "corrupted" not in str(exc):
            raise
        raise DataError(f"{label} files in {folder} fail torchvision's MD5 check: re-download them "
                        f"(delete the folder, run with --download), or run with --verify-data false "
                        f"if they are intentionally custom") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{label} files in {folder} are malformed ({type(exc).__name__}: {first_line(exc)}): "
                        f"expected torchvision's CIFAR pickles; re-download with --download") from None
    return train, val, len(val.classes)
