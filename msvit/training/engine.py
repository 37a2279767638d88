"""One training epoch and one evaluation pass, shared by every dataset.

The model resets its neurons inside every forward call, so nothing here touches neuron state.
"""
from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..console import EpochDisplay, progress_bar
from .distributed import DistEnv, all_reduce_sum
from ..errors import UserError
from .schedule import current_lr

__all__ = ["NonFiniteLossError", "AmpSettings", "amp_settings", "EpochProgress", "EpochStats", "StepSettings",
           "train_one_epoch", "epoch_stats", "evaluate", "peak_memory_mb"]


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


@dataclass(frozen=True)
class AmpSettings:
    enabled: bool
    dtype: torch.dtype
    device_type: str

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def amp_settings(cfg: dict, device: torch.device) -> AmpSettings:
    """Mixed precision on CUDA only (bf16 or fp16); full fp32 on CPU."""
    dtype = torch.bfloat16 if cfg["amp_dtype"] == "bfloat16" else torch.float16
    return AmpSettings(enabled=bool(cfg["amp"]) and device.type == "cuda", dtype=dtype, device_type=device.type)


@dataclass
class EpochProgress:
    """Where one training epoch stands and its running sums (this process's): a mid-epoch checkpoint saves
    it, so that the resumed epoch starts at the next batch and reports what an uninterrupted one would."""
    batches: int = 0        # batches done (an optimizer update boundary whenever it is saved)
    updates: int = 0
    loss_sum: float = 0.0   # sum of per-batch mean loss x batch size
    images: int = 0
    lr_sum: float = 0.0     # sum of each batch's learning rate: the epoch's mean, as the releases log it
    seconds: float = 0.0
    data_seconds: float = 0.0

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))

    @classmethod
    def from_state(cls, state: dict[str, float] | None, rank: int = 0) -> "EpochProgress":
        """The progress saved by `summed(...).state_dict()`, for process `rank`: the sums over all processes
        restart on rank 0 alone, so that `epoch_stats` adds them up once."""
        progress = cls(**state) if state else cls()
        if rank != 0:
            progress.loss_sum, progress.images = 0.0, 0
        return progress

    def summed(self, env: DistEnv) -> "EpochProgress":
        """A copy with the loss and image sums of all processes (a collective: every process calls it)."""
        loss_sum, images = all_reduce_sum([self.loss_sum, float(self.images)], env.device)
        return EpochProgress(**{**vars(self), "loss_sum": loss_sum, "images": int(images)})


@dataclass
class EpochStats:
    """One epoch's training figures over all processes."""
    loss: float
    lr: float
    images: int
    seconds: float
    updates: int
    data_share: float  # the share of the time spent waiting for data

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class StepSettings:
    """How a training step runs, beyond the model and the data."""
    amp: AmpSettings
    scaler: torch.amp.GradScaler | None = None
    mixup_fn: Callable | None = None
    accum_iter: int = 1
    clip_grad: float | None = None


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, criterion: Callable,
                    epoch: int, env: DistEnv, step: StepSettings, progress: EpochProgress,
                    on_update: Callable[[EpochProgress], bool], seed_step: Callable[[int], None],
                    display: EpochDisplay) -> EpochProgress:
    """Train on the batches of `loader` (the epoch's rest after `progress.batches`), updating `progress`.

    `criterion(inputs, outputs, targets)` is `distillation.DistillationLoss` (the loop's criterion, with a teacher
    or without); it runs inside the autocast, so a teacher runs in the student's precision.

    `seed_step(batch)` reseeds the generators before each batch's mixup and forward, so a resumed epoch draws
    what an uninterrupted one would. `on_update(progress)` runs after every optimizer update (EMA, schedule,
    checkpoints) and returns True to stop the epoch there. Raises NonFiniteLossError naming the epoch and
    batch of a NaN/inf loss.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    first, total = progress.batches, progress.batches + len(loader)
    start, base_seconds = time.perf_counter(), progress.seconds
    batches = iter(loader)
    for index in range(first, total):
        fetch = time.perf_counter()
        inputs, targets = next(batches)
        inputs = inputs.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        data_seconds = time.perf_counter() - fetch
        seed_step(index)
        if step.mixup_fn is not None:
            inputs, targets = step.mixup_fn(inputs, targets)
        last_micro_step = (index + 1) % step.accum_iter == 0 or index + 1 == total
        # DDP: skip the gradient all-reduce on micro-steps that do not end in an update
        sync = contextlib.nullcontext() if last_micro_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with step.amp.autocast():
                loss = criterion(inputs, model(inputs), targets)  # the inputs: a distillation teacher's
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {index}; stopping "
                                         f"(the last good checkpoint is kept): lower the learning rate "
                                         f"or check the data")
            scaled = loss / step.accum_iter
            (step.scaler.scale(scaled) if step.scaler is not None else scaled).backward()
        progress.batches = index + 1
        progress.lr_sum += current_lr(optimizer)  # the rate of the update this batch belongs to
        progress.loss_sum += loss_value * inputs.shape[0]
        progress.images += inputs.shape[0]
        progress.data_seconds += data_seconds
        stop = False
        if last_micro_step:
            _optimizer_step(model, optimizer, step)
            progress.updates += 1
            progress.seconds = base_seconds + time.perf_counter() - start
            stop = on_update(progress)
        display.step(index, inputs.shape[0], data_seconds, loss_value, current_lr(optimizer),
                     progress.updates, last_micro_step)
        if stop:
            break
    progress.seconds = base_seconds + time.perf_counter() - start
    return progress


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: StepSettings) -> None:
    if step.scaler is not None:
        step.scaler.unscale_(optimizer)
    if step.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad)
    if step.scaler is not None:
        step.scaler.step(optimizer)
        step.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def epoch_stats(progress: EpochProgress, env: DistEnv) -> EpochStats:
    """`progress` summed over all processes (the time: the slowest process's)."""
    loss_sum, images = all_reduce_sum([progress.loss_sum, float(progress.images)], env.device)
    return EpochStats(loss=loss_sum / max(images, 1), lr=progress.lr_sum / max(progress.batches, 1),
                      images=int(images), seconds=progress.seconds, updates=progress.updates,
                      data_share=progress.data_seconds / max(progress.seconds, 1e-9))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, env: DistEnv, amp: AmpSettings) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and image count over the whole (sharded) set."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0.0, 0.0, 0.0
    for inputs, targets in progress_bar(loader, "eval", env.is_main):
        inputs = inputs.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        with amp.autocast():
            logits = model(inputs)
        if logits.dim() == 3:  # logits per time step (a model trained with TET): their mean, as the release does
            logits = logits.mean(1)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.shape[0]
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], env.device)
    n = max(count, 1.0)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": int(count)}
