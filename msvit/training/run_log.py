"""What a training run prints: the header block that says what trains on what, and one line per epoch (also
to TensorBoard)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistEnv
from .engine import AmpSettings
from ..models import count_parameters
from ..neurons import describe_neurons, implementation
from ..console import epoch_label
from .preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from .sml import describe_sml, parameter_words

__all__ = ["log_header", "log_epoch", "inductor_cache"]

log = logging.getLogger("msvit")


def _devices_and_neurons(model: nn.Module, env: DistEnv, amp: AmpSettings) -> str:
    """'<n> x <device type>: <LIF implementation>' over all processes."""
    mine = f"{env.device.type}: {implementation(model, env.device, amp.dtype if amp.enabled else torch.float32)}"
    everyone = [mine] * env.world_size
    if env.distributed:
        dist.all_gather_object(everyone, mine)
    return ", ".join(f"{everyone.count(entry)} x {entry}" for entry in dict.fromkeys(everyone))


def _compile_words(cfg: Mapping[str, Any]) -> str:
    if not cfg["compile"]:
        return "off"
    return "on (training forward" + ("" if cfg["compile_mode"] == "default" else f", mode {cfg['compile_mode']}") + ")"


def inductor_cache() -> str:
    """Where inductor keeps compiled kernels (its default: /tmp/torchinductor_<user>)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir  # a private module: it may move
        return cache_dir()
    except ImportError:
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_<user>")


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _schedule_line(cfg: dict[str, Any], lr: float) -> str:
    total = cfg["epochs"] + cfg["cooldown_epochs"]
    parts = [_epochs(total) + (f" ({cfg['epochs']} + {cfg['cooldown_epochs']} cooldown at {cfg['min_lr']:g})"
                               if cfg["cooldown_epochs"] else ""),
             (f"warmup {_epochs(cfg['warmup_epochs'])} from {cfg['warmup_lr']:g}"
              + (" before the cosine" if cfg["warmup_prefix"] else " inside the cosine"))
             if cfg["warmup_epochs"] else "no warmup",
             f"cosine from peak lr {lr:g} to {cfg['min_lr']:g}",
             f"stepped per {'update' if cfg['sched_on_updates'] else 'epoch'}",
             f"{cfg['opt']}, weight decay {cfg['weight_decay']:g}"
             + (f", layer decay {cfg['layer_decay']:g}" if cfg["layer_decay"] is not None else "")]
    if cfg["start_epoch"]:
        parts.insert(1, f"a new run starts at epoch {cfg['start_epoch']} (it trains the schedule's tail)")
    return "schedule: " + "; ".join(parts)


def log_header(cfg: dict[str, Any], env: DistEnv, model: nn.Module, sizes: tuple[int, int], lr: float,
                updates_per_epoch: int, amp: AmpSettings, output: Path, distillation: str | None = None,
                ann: str | None = None) -> None:
    """One block at the start: what trains on what, with which batch, schedule, precision and neurons (and the
    `distillation` line, `distillation.describe`'s, when a teacher takes part; `ann`: what timm's ANN is and the
    settings that have no effect on it, `config.ann.ann_run_settings`'s, instead of T and the SSA)."""
    neurons = _devices_and_neurons(model, env, amp)  # a collective: every process takes part
    if not env.is_main:
        return
    batch, accum = cfg["batch_size"], cfg["accum_iter"]
    precision = (f"AMP {str(amp.dtype).removeprefix('torch.')}" if amp.enabled
                 else "float32" + (" (amp applies to CUDA only)" if cfg["amp"] else ""))
    interval = f" and every {cfg['checkpoint_interval']} updates" if cfg["checkpoint_interval"] else ""
    network = ann or (f"T {cfg['time_step']}, SSA "
                      f"{'batch-coupled (as released)' if cfg['batch_coupled_ssa'] else 'per sample'}"
                      + (f"; TET loss (means {cfg['tet_means']:g}, lambda {cfg['tet_lambda']:g})" if cfg["tet"] else ""))
    spikes = "" if ann else f"; saved spikes {'as bits' if cfg['pack_saved_spikes'] else 'dense'}"
    for line in (
            f"{cfg['model']} on {cfg['dataset']}: {parameter_words(model, count_parameters(model))}, {network}",
            None if ann else describe_neurons(model),
            describe_sml(cfg, model),
            distillation,
            f"data: {sizes[0]:,} train / {sizes[1]:,} val samples, {cfg['num_classes']:,} classes; global batch "
            f"{batch * env.world_size * accum} = {batch} per process x {env.world_size} "
            f"process{'es' if env.world_size > 1 else ''} x {accum} accumulation; {updates_per_epoch} updates "
            f"per epoch; {cfg['workers']} loader workers per process",
            _schedule_line(cfg, lr),
            f"devices: {neurons}; {precision}; compile {_compile_words(cfg)}; "
            f"activation checkpointing {'on' if cfg['grad_checkpointing'] else 'off'}{spikes}",
            f"run folder {output}: last.pth at each epoch end{interval}; SIGTERM/SIGUSR1 (exit {EXIT_PREEMPTED}) "
            f"and Ctrl-C (exit {EXIT_INTERRUPTED}) stop after the current update"):
        if line:
            log.info("%s", line)
    if cfg["warmup_epochs"] + cfg["cooldown_epochs"] > cfg["epochs"]:
        log.warning("warning: warmup_epochs %d + cooldown_epochs %d exceed epochs %d: the learning rate never "
                    "reaches its cosine; lower --warmup-epochs / --cooldown-epochs with a short --epochs",
                    cfg["warmup_epochs"], cfg["cooldown_epochs"], cfg["epochs"])


def log_epoch(writer, row: dict[str, Any], metrics: dict[str, float], ema_metrics: dict[str, float] | None,
               total_epochs: int, best_top1: float, data_share: float) -> None:
    epoch = row["epoch"]
    for tag, value in (("train/loss", row["train_loss"]), ("train/lr", row["lr"]),
                       ("train/img_per_s", row["img_per_s"]), ("eval/loss", metrics["loss"]),
                       ("eval/top1", metrics["top1"]), ("eval/top5", metrics["top5"])):
        writer.add_scalar(tag, float(value), epoch)
    for key, value in (ema_metrics or {}).items():
        if key != "n":
            writer.add_scalar(f"eval_ema/{key}", value, epoch)
    writer.flush()
    extra = f" (EMA {ema_metrics['top1']:.2f}%)" if ema_metrics is not None else ""
    firing = f"  firing {row['firing_rate']}" if row.get("firing_rate") else ""
    log.info("%s  lr %s  train loss %s  eval loss %.4f  top-1 %.2f%%%s  top-5 %.2f%%  best %.2f%%%s  "
             "%s img/s  data %.0f%%  peak %s MB", epoch_label(epoch, total_epochs), row["lr"], row["train_loss"],
             metrics["loss"], metrics["top1"], extra, metrics["top5"], best_top1, firing, row["img_per_s"],
             100 * data_share, row["peak_mem_mb"])
