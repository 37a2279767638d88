"""One training epoch and one evaluation pass, shared by every dataset.

The model resets its neurons inside every forward call, so nothing here touches neuron state.
"""
from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from .distributed import DistEnv, all_reduce_sum
from .errors import UserError

__all__ = ["NonFiniteLossError", "AmpSettings", "amp_settings", "EpochStats", "train_one_epoch", "evaluate", "peak_memory_mb"]


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
class EpochStats:
    loss: float
    lr: float
    images: int
    seconds: float
    updates: int

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress(loader: Iterable, env: DistEnv, desc: str):
    # a bar only for a human watching rank 0; logs and CI get the per-epoch summary line instead
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (env.is_main and sys.stderr.isatty()))


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    criterion: Callable, epoch: int, env: DistEnv, amp: AmpSettings,
                    scaler: torch.amp.GradScaler | None = None, mixup_fn: Callable | None = None,
                    accum_iter: int = 1, clip_grad: float | None = None,
                    on_update: Callable[[], None] | None = None) -> EpochStats:
    """Train for one pass over `loader`; `on_update` runs after every optimizer step (EMA, per-update
    learning-rate schedule). Raises NonFiniteLossError naming the epoch and step of a NaN/inf loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total_batches = len(loader)
    loss_sum, images, updates, lr_sum = 0.0, 0, 0, 0.0
    start = time.perf_counter()
    bar = _progress(loader, env, f"epoch {epoch}")
    for step, (inputs, targets) in enumerate(bar):
        inputs = inputs.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if mixup_fn is not None:
            inputs, targets = mixup_fn(inputs, targets)
        last_micro_step = (step + 1) % accum_iter == 0 or step + 1 == total_batches
        # DDP: skip the gradient all-reduce on micro-steps that do not end in an update
        sync = contextlib.nullcontext() if last_micro_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with amp.autocast():
                loss = criterion(model(inputs), targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {step}; stopping "
                                         f"(the last good checkpoint is kept): lower the learning rate "
                                         f"or check the data")
            scaled = loss / accum_iter
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last_micro_step:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_sum += optimizer.param_groups[0]["lr"]
            updates += 1
            if on_update is not None:
                on_update()
        loss_sum += loss_value * inputs.shape[0]
        images += inputs.shape[0]
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                        img_s=f"{images * env.world_size / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    loss_total, images_total = all_reduce_sum([loss_sum, float(images)], env.device)
    return EpochStats(loss=loss_total / max(images_total, 1), lr=lr_sum / max(updates, 1),
                      images=int(images_total), seconds=seconds, updates=updates)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, env: DistEnv, amp: AmpSettings) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and image count over the whole (sharded) set."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0.0, 0.0, 0.0
    for inputs, targets in _progress(loader, env, "eval"):
        inputs = inputs.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        with amp.autocast():
            logits = model(inputs)
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
