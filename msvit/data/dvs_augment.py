"""DVSAugment: the random geometric augmentation of DVS event frames (training split, `dvs_aug: true`)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as TF

__all__ = ["DVSAugment"]


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
