"""The state of a training run beyond its settings: the objects a checkpoint saves (model, optimizer, scheduler,
scaler, EMA, and `RunState`: epoch, update count, best top-1, the position inside the epoch), how they are saved,
and how a resumed run restores them. A resumed run takes its optimizer's moments from the checkpoint and its
settings, and so its learning-rate schedule, from this start's settings (`Training.restore`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from ..models._checkpoint import load_checkpoint
from .distributed import DistEnv
from .engine import EpochProgress
from ..errors import ConfigError, UserError
from .run_folder import write_checkpoints

__all__ = ["RunState", "Training", "check_left_to_train"]

log = logging.getLogger("msvit")


def check_left_to_train(epoch: int, batches: int, cfg: dict[str, Any]) -> None:
    """A resumed run at `epoch` (`batches` into it) whose schedule ends before that is refused; one at the end of
    its schedule says that nothing is left to train."""
    total = cfg["epochs"] + cfg["cooldown_epochs"]
    begun = epoch + (1 if batches else 0)
    if begun > total:
        where = f"epoch {epoch}, batch {batches}" if batches else f"the end of epoch {epoch - 1}"
        raise ConfigError(f"the schedule ends after {total} epoch{'s' * (total != 1)} (epochs + cooldown_epochs), "
                          f"before the checkpoint's position ({where}): nothing is left to train; give --epochs "
                          f"{begun - cfg['cooldown_epochs']} or more to continue the run")
    if begun == total and not batches:
        log.info("the run has finished its %d epochs: nothing is left to train (to train longer, give --epochs N: "
                 "the schedule is recomputed for N)", total)


@dataclass
class RunState:
    """What a checkpoint carries beyond the model, optimizer, scheduler, scaler and EMA."""
    epoch: int = 0                # the epoch being trained
    num_updates: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    progress: EpochProgress = field(default_factory=EpochProgress)
    resume_sample: int | None = None  # the resumed epoch starts after this many samples of its order
    stopping: bool = False


class Training:
    """The objects of one run and the checkpoints that save and restore them."""

    def __init__(self, cfg: dict[str, Any], env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: CosineLRScheduler, scaler: torch.amp.GradScaler | None, ema: ModelEmaV3 | None,
                 output: Path) -> None:
        self.cfg, self.env, self.model, self.optimizer, self.scheduler = cfg, env, model, optimizer, scheduler
        self.scaler, self.ema, self.output, self.state = scaler, ema, output, RunState()

    def checkpoint(self, mid_epoch: bool, progress: EpochProgress | None = None) -> dict[str, Any]:
        """Everything to continue from here: at an epoch end `epoch` is the finished epoch; mid-epoch,
        `position` names the epoch under way and carries its `progress` (summed over the processes)."""
        s = self.state
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    state_dict_ema=self.ema.module.state_dict() if self.ema is not None else None,
                    epoch=s.epoch - 1 if mid_epoch else s.epoch, num_updates=s.num_updates, best_top1=s.best_top1,
                    best_epoch=s.best_epoch, metrics=s.metrics, config=self.cfg,
                    position=dict(epoch=s.epoch, progress=progress.state_dict(), world_size=self.env.world_size)
                    if mid_epoch else None)

    def restore(self, ckpt: dict[str, Any], path: Path) -> None:
        for key in ("optimizer", "scheduler", "epoch"):
            if key not in ckpt:
                raise UserError(f"{path} is not a training checkpoint of this codebase (no {key!r}); "
                                f"use it with test.py, or start a new run")
        load_checkpoint(self.model, ckpt)
        self._restore_optimizer(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        ema_weights = ckpt.get("state_dict_ema") or ckpt.get("ema")  # "ema": checkpoints before 2026-12
        if self.ema is not None:  # model_ema switched on at a resume: the average starts at the restored weights
            self.ema.module.load_state_dict(ema_weights or self.model.state_dict())
        s = self.state
        s.num_updates = ckpt.get("num_updates", 0)
        s.best_top1, s.best_epoch = ckpt.get("best_top1", -1.0), ckpt.get("best_epoch", -1)
        s.metrics = ckpt.get("metrics") or {}
        position = ckpt.get("position")
        s.epoch = position["epoch"] if position else ckpt["epoch"] + 1
        s.progress = EpochProgress.from_state(position["progress"] if position else None, self.env.rank)
        if position:
            s.resume_sample = self._samples_done(ckpt, position)
        at = f", batch {s.progress.batches}" if position else ""
        log.info("resumed from %s at epoch %d%s (update %d)", path, s.epoch, at, s.num_updates)

    def _samples_done(self, ckpt: dict[str, Any], position: dict[str, Any]) -> int:
        """The samples of the resumed epoch's order trained before the checkpoint, over all processes. A run
        resumed with another batch size or process count continues after them, its batch count converted."""
        saved_batch = (ckpt.get("config") or {}).get("batch_size", self.cfg["batch_size"])
        saved_world = position.get("world_size", self.env.world_size)  # checkpoints before 2026-12: not saved
        done = self.state.progress.batches * saved_batch * saved_world
        now = (self.cfg["batch_size"], self.env.world_size)
        if (saved_batch, saved_world) != now:
            self.state.progress.batches = done // (now[0] * now[1])
            log.info("the checkpoint was saved mid-epoch at batch %d x %d process(es), this run has %d x %d: the "
                     "epoch continues after the %d samples of its order already trained", saved_batch, saved_world,
                     now[0], now[1], done)
        return done

    def _restore_optimizer(self, saved: dict[str, Any]) -> None:
        """The optimizer's state (its moments) from the checkpoint, its settings from this run's: the saved
        scheduler state is not loaded (as timm's train.py rebuilds its scheduler from the arguments), so a changed
        epochs, lr, min_lr, warmup or cooldown takes effect from the resumed position. load_state_dict brings
        back every group's saved `lr`, `initial_lr`, weight_decay, betas...: the fresh groups' values are put
        back (the scheduler's base values, x each group's `lr_scale`, set `lr` before every update)."""
        fresh = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, settings in zip(self.optimizer.param_groups, fresh):
            group.update(settings)

    def save(self, mid_epoch: bool, best: bool = False) -> None:
        """Rank 0 writes last.pth (and best.pth); every process calls it (mid-epoch, the sums are collected)."""
        progress = self.state.progress.summed(self.env) if mid_epoch else None
        if self.env.is_main:
            write_checkpoints(self.checkpoint(mid_epoch, progress), self.output, best)
