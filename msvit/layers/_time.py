"""The two views of a spike tensor: `[T, B, ...]` for the neurons, `[T*B, ...]` for convolutions and batch norms."""
from __future__ import annotations

import torch


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] -> [T*B, ...]"""
    return x.flatten(0, 1)


def unfold_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """[T*B, ...] -> [T, B, ...]"""
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])
