"""scikit-learn's 8x8 digits (bundled with scikit-learn, nothing to download): a fixed 80/20 split."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.utils.data import Dataset

from ..errors import require
from .common import Built

__all__ = ["DigitsDataset", "build_digits"]

# A fixed held-out split, independent of cfg['seed'] so every run evaluates on the same images.
_SPLIT_SEED = 0
_VAL_FRACTION = 0.2


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits (1797 images, bundled): a fixed stratified 80/20 split, upsampled to `img_size`.

    Pixels are scaled to [0, 1], resized bilinearly, replicated to 3 channels and normalised. With `augment`,
    a random translation of up to 2 pixels per 32 (zero fill) is applied before normalising.
    """

    def __init__(self, train: bool, img_size: int = 32, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), augment: bool = False,
                 generator: torch.Generator | None = None) -> None:
        require("sklearn", "scikit-learn", "demo", "the digits dataset")  # one line, not a traceback
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        train_idx, val_idx = train_test_split(np.arange(len(digits.target)), test_size=_VAL_FRACTION,
                                              stratify=digits.target, random_state=_SPLIT_SEED)
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
        x = digits_input(self.images[index], self.img_size, self.mean, self.std, self._shift if self.augment else None)
        return x, self.targets[index]


def digits_input(grey: torch.Tensor, img_size: int, mean: torch.Tensor, std: torch.Tensor,
                 shift: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Grey levels `[1, h, w]` in [0, 1] -> the network's input `[3, img_size, img_size]`: bilinear resize, the
    augmentation's `shift` if any, three channels, normalised by `mean` and `std` (`[3, 1, 1]`)."""
    x = nnf.interpolate(grey[None], size=(img_size, img_size), mode="bilinear", align_corners=False)[0]
    if shift is not None:
        x = shift(x)
    return ((x.expand(3, -1, -1) - mean) / std).contiguous()


def digits_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """img_size, mean and std of the digits pipeline: the recipe's, else 32 px and 0.5 / 0.5."""
    return dict(img_size=int(cfg.get("img_size") or 32), mean=tuple(cfg.get("mean") or (0.5,) * 3),
                std=tuple(cfg.get("std") or (0.5,) * 3))


def build_digits(cfg: Mapping[str, Any], want_train: bool) -> Built:
    kwargs = digits_settings(cfg)
    train = DigitsDataset(True, augment=True, **kwargs) if want_train else None
    return train, DigitsDataset(False, **kwargs), 10
