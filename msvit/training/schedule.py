"""The learning-rate schedule: timm's cosine with warmup, set once per epoch or (`sched_on_updates`) before every
optimizer update.

Per update, the schedule's clock counts training batches, as the releases' loops do: the update that starts
after `b` batches of epoch `e` takes the rate at `e + b / batches_per_epoch` epochs. With gradient accumulation
that is the release's grid (`t = epoch + step / len(loader)` at every `accum_iter`-th step), so a recipe's curve
is the release's to rounding. `start_epoch` starts a new run at epoch N of its schedule: it then trains the
tail of a longer run, such as the release's 384² fine-tune (epochs 200-209 of a 210-epoch cosine).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from timm.scheduler import CosineLRScheduler

__all__ = ["build_scheduler", "set_learning_rate", "current_lr", "epoch_learning_rates"]


def build_scheduler(cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                    batches_per_epoch: int) -> CosineLRScheduler:
    """timm's cosine with warmup, counted in epochs or (sched_on_updates) in batches. Each parameter group's
    `lr_scale` (layer decay) multiplies the rate it gets."""
    unit = batches_per_epoch if cfg["sched_on_updates"] else 1
    length = cfg["epochs"] - (cfg["warmup_epochs"] if cfg["warmup_prefix"] else 0)
    # a one-step cosine (a 1-epoch run stepped per epoch) is meant: timm's warning that it has no effect is noise
    timm_log = logging.getLogger("timm.scheduler.cosine_lr")
    quiet = _WithoutMessage("will have no effect")
    timm_log.addFilter(quiet)
    try:
        return CosineLRScheduler(optimizer, t_initial=max(length, 1) * unit, lr_min=cfg["min_lr"],
                                 warmup_t=cfg["warmup_epochs"] * unit, warmup_lr_init=cfg["warmup_lr"],
                                 warmup_prefix=cfg["warmup_prefix"], cycle_limit=1,
                                 t_in_epochs=not cfg["sched_on_updates"])
    finally:
        timm_log.removeFilter(quiet)


class _WithoutMessage(logging.Filter):
    """Drops the log records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def set_learning_rate(scheduler: CosineLRScheduler, cfg: Mapping[str, Any], epoch: int, batches_done: int,
                      batches_per_epoch: int) -> None:
    """Set the rate of the next update: the one that starts after `batches_done` batches of `epoch`."""
    if cfg["sched_on_updates"]:
        scheduler.step_update(epoch * batches_per_epoch + batches_done)
    else:
        scheduler.step(epoch)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate the log reports: the largest over parameter groups (the head's, under layer decay), as the
    releases log it."""
    return max(group["lr"] for group in optimizer.param_groups)


def epoch_learning_rates(cfg: Mapping[str, Any], batches_per_epoch: int, epoch: int) -> list[float]:
    """The rate of each of the `batches_per_epoch` batches of `epoch`, as the training loop sets them (the
    update a batch belongs to starts after a multiple of accum_iter batches). Their mean is what the log
    reports as the epoch's lr."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=_peak_lr(cfg))
    scheduler = build_scheduler(cfg, optimizer, batches_per_epoch)
    accum, rates = cfg["accum_iter"], []
    for batch in range(batches_per_epoch):
        if batch % accum == 0:
            set_learning_rate(scheduler, cfg, epoch, batch, batches_per_epoch)
        rates.append(current_lr(optimizer))
    return rates


def _peak_lr(cfg: Mapping[str, Any]) -> float:
    if cfg["lr"] is None:
        raise ValueError("epoch_learning_rates needs cfg['lr'] resolved (train.py scales blr by the batch)")
    return cfg["lr"]
