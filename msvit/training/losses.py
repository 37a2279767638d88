"""Training losses beyond timm's: TET (Deng et al., ICLR 2022), the loss of the Spike-driven Transformer's
CIFAR10-DVS recipe, which any model here can train with (`tet: true`).

TET scores the logits of every time step instead of their mean: (1 - lambda) x the mean over t of the base
criterion on step t's logits, plus lambda x the mean squared distance of all logits to a constant (`means`),
as the release computes it (`criterion.py` of BICLab/Spike-Driven-Transformer). Evaluation averages the
steps' logits, which for these models equals the usual output.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["TETLoss"]


class TETLoss(nn.Module):
    """`TETLoss(criterion, means, lamb)(logits [B, T, K], targets)`; `criterion` takes `[B, K]` logits and the
    targets (class indices or soft targets, as mixup gives)."""

    def __init__(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], means: float = 1.0,
                 lamb: float = 0.0) -> None:
        super().__init__()
        self.criterion, self.means, self.lamb = criterion, float(means), float(lamb)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 3:
            raise ValueError(f"TET needs logits per time step [B, T, K], got shape {tuple(logits.shape)}")
        steps = logits.shape[1]
        loss = sum(self.criterion(logits[:, t], targets) for t in range(steps)) / steps
        if self.lamb:
            loss = (1 - self.lamb) * loss + self.lamb * (logits - self.means).pow(2).mean()
        return loss

    def extra_repr(self) -> str:
        return f"means={self.means:g}, lamb={self.lamb:g}"
