"""Surrogate module learning (SML; Deng et al., NeurIPS 2024, brain-intelligence-lab/STMixer_demo at 38a0786): the
loss of a model whose ANN side branches (STMixer's `sml=True`) return, in training, the tuple (main, side 1, ...,
side K) of logits. It is the release's `SBDistillationLoss` (`functions/loss_functions.py`, with `temperature` 3,
`alpha` 0.5 and `lamb` 0.9 as `train_timm.py` sets them):

    hard = (criterion(main) + alpha x sum_i criterion(side_i)) / (K alpha + 1)
    soft = sum_i [KL(side_i / T || main / T) + KL(main / T || side_i / T)] / (2K + 1e-8)
    loss = lamb x soft + (1 - lamb) x hard

where KL(a || b) is PyTorch's `kl_div(log_softmax(a), softmax(b).detach(), reduction='batchmean')` (the
target side detached, no T^2 factor) and `criterion` the loop's own on every output alike (mixup's soft targets,
smoothing), as the release wraps its `train_loss_fn`. The loop uses it whenever the model has side branches (no
setting turns it on: `sml_temperature`, `sml_alpha` and `sml_lambda` set its weights); evaluation reads the main
output only, which the model alone returns in eval mode.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SMLLoss", "sml_criterion", "describe_sml", "side_branch_count"]


def _kl(inputs: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(inputs / temperature, dim=1), F.softmax(target.detach() / temperature, dim=1),
                    reduction="batchmean")


class SMLLoss(nn.Module):
    """`SMLLoss(criterion, temperature, alpha, lamb)(outputs, targets)`: `outputs` the model's (main, side 1, ...)
    logits `[B, K]` each; `criterion` takes `[B, K]` logits and the targets (class indices or soft targets)."""

    reads_all_outputs = True  # distillation.DistillationLoss hands it every output, the teacher the main one

    def __init__(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], temperature: float = 3.0,
                 alpha: float = 0.5, lamb: float = 0.9) -> None:
        super().__init__()
        self.criterion, self.temperature = criterion, float(temperature)
        self.alpha, self.lamb = float(alpha), float(lamb)

    def forward(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, (tuple, list)) or len(outputs) < 2:
            raise ValueError("the SML loss needs the model's (main, side 1, ...) logits: a model with side "
                             "branches, in training mode")
        main, sides = outputs[0], outputs[1:]
        hard = self.criterion(main, targets)
        for side in sides:
            hard = hard + self.alpha * self.criterion(side, targets)
        hard = hard / (len(sides) * self.alpha + 1)
        if not self.lamb:
            return hard
        soft = sum(_kl(side, main, self.temperature) + _kl(main, side, self.temperature) for side in sides)
        soft = soft / (2 * len(sides) + 1e-8)  # the release's normalisation, its 1e-8 kept
        return self.lamb * soft + (1 - self.lamb) * hard

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, alpha={self.alpha:g}, lamb={self.lamb:g}"


def side_branch_count(model: nn.Module) -> int:
    """How many training-only side branches `model` has (0: none, the loop's criterion as it is)."""
    return int(getattr(model, "side_branch_count", 0))


def sml_criterion(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module,
                  cfg: Mapping[str, Any]) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The loop's criterion, wrapped in `SMLLoss` when `model` has side branches."""
    if not side_branch_count(model):
        return criterion
    return SMLLoss(criterion, cfg["sml_temperature"], cfg["sml_alpha"], cfg["sml_lambda"])


def describe_sml(cfg: Mapping[str, Any], model: nn.Module) -> str | None:
    """The run header's line on SML; None for a model without side branches."""
    count = side_branch_count(model)
    if not count:
        return None
    return (f"surrogate module learning: {count} ANN side branch{'es' if count > 1 else ''} (training only), "
            f"loss lambda {cfg['sml_lambda']:g} x symmetric KL at temperature {cfg['sml_temperature']:g} + "
            f"(1 - lambda) x the criterion on the main and side outputs (side weight alpha {cfg['sml_alpha']:g}); "
            f"evaluation reads the main output")


def parameter_words(model: nn.Module, total: int) -> str:
    """'N parameters', and with side branches ', of which M in training-only side branches'."""
    extra = model.training_only_parameters() if side_branch_count(model) else 0
    return f"{total:,} parameters" + (f", of which {extra:,} in training-only side branches" if extra else "")
