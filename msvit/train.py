"""The training program behind every dataset folder's `train.py`.

    cd cifar10 && python train.py [--key value ...]
    torchrun --nproc_per_node=8 imagenet/train.py

One run folder holds config.yaml, summary.csv, TensorBoard events, last.pth (every epoch) and
best.pth (best top-1). `--resume auto` continues the run of `--output` from its last.pth.
"""
from __future__ import annotations

import csv
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DistributedSampler

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import parse_args, restore_model_settings, save_config
from .data import build_datasets, dataset_num_classes
from .console import setup_logging
from .distributed import DistEnv, barrier, broadcast_buffers, cleanup, init_distributed, main_process_first
from .engine import amp_settings, evaluate, peak_memory_mb, train_one_epoch
from .loaders import build_eval_loader, make_loader
from .errors import ConfigError, UserError, cli_entry
from .models import count_parameters
from .zoo import create_dataset_model, reference_batch_sizes

__all__ = ["main", "run", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5", "img_per_s", "peak_mem_mb"]
log = logging.getLogger("msvit")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch. The loop reseeds at every epoch start from (seed, rank, epoch), so a
    resumed run draws the same augmentations and mixups as an uninterrupted one, on any number of ranks."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_dataset_classes(cfg: dict[str, Any]) -> None:
    expected = dataset_num_classes(cfg["dataset"])
    if cfg["num_classes"] is not None and cfg["num_classes"] != expected:
        raise ConfigError(f"num_classes is {cfg['num_classes']} but {cfg['dataset']} has {expected} classes; "
                          f"set --num-classes {expected}")


def _check_coupled_batch(cfg: dict[str, Any]) -> None:
    """With the batch-coupled SSA the per-process batch is part of the network: say so when it differs
    from the one the published figures (or the folder's recipe) were trained with."""
    reference = reference_batch_sizes(cfg) if cfg["batch_coupled_ssa"] else None
    if reference is None or cfg["batch_size"] == reference[0]:
        return
    log.info("batch_coupled_ssa: SSA's output neuron couples the %d samples of each per-process batch, where %s "
             "trains with %d; this trains a different network. To change the effective batch, keep --batch-size "
             "%d and change --accum-iter (README: 'The batch-coupled SSA')", cfg["batch_size"], reference[2],
             reference[0], reference[0])


def _learning_rate(cfg: dict[str, Any], env: DistEnv) -> float:
    if cfg["lr"] is not None:
        return cfg["lr"]
    if cfg["blr"] is None:
        raise ConfigError("set either lr (absolute) or blr (scaled by effective batch / 256)")
    effective = cfg["batch_size"] * cfg["accum_iter"] * env.world_size
    return cfg["blr"] * effective / 256


def _scheduler(cfg: dict[str, Any], optimizer: torch.optim.Optimizer, updates_per_epoch: int,
               ) -> CosineLRScheduler:
    """timm's cosine with warmup, counted in epochs or (sched_on_updates) in optimizer updates."""
    if cfg["sched"] != "cosine":
        raise ConfigError(f"sched {cfg['sched']!r} is not supported; use 'cosine'")
    unit = updates_per_epoch if cfg["sched_on_updates"] else 1
    length = cfg["epochs"] - (cfg["warmup_epochs"] if cfg["warmup_prefix"] else 0)
    return CosineLRScheduler(optimizer, t_initial=max(length, 1) * unit, lr_min=cfg["min_lr"],
                             warmup_t=cfg["warmup_epochs"] * unit, warmup_lr_init=cfg["warmup_lr"],
                             warmup_prefix=cfg["warmup_prefix"], cycle_limit=1,
                             t_in_epochs=not cfg["sched_on_updates"])


def _mixup(cfg: dict[str, Any]) -> Mixup | None:
    if not (cfg["mixup"] > 0 or cfg["cutmix"] > 0 or cfg["cutmix_minmax"] is not None):
        return None
    if cfg["batch_size"] % 2:
        raise ConfigError(f"mixup needs an even batch_size, got {cfg['batch_size']}")
    return Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], cutmix_minmax=cfg["cutmix_minmax"],
                 prob=cfg["mixup_prob"], switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                 label_smoothing=cfg["smoothing"], num_classes=cfg["num_classes"])


def _output_dir(cfg: dict[str, Any]) -> Path:
    if cfg["output"]:
        return Path(cfg["output"])
    if cfg["resume"] and cfg["resume"] != "auto":
        return Path(cfg["resume"]).resolve().parent  # continue the run the checkpoint belongs to
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("output") / cfg["dataset"] / f"{cfg['experiment'] or cfg['model']}-{stamp}"


def _resume_path(cfg: dict[str, Any], output: Path) -> Path | None:
    if not cfg["resume"]:
        if (output / "last.pth").exists():
            raise ConfigError(f"{output} already holds a run (last.pth): pass --resume auto to continue it, "
                              f"or choose another --output")
        return None
    path = output / "last.pth" if cfg["resume"] == "auto" else Path(cfg["resume"])
    if not path.is_file():
        where = f"--output {output}" if cfg["resume"] == "auto" else "--resume"
        raise ConfigError(f"cannot resume: {path} does not exist (check {where})")
    return path


def _write_summary(path: Path, row: dict[str, Any] | None, keep_before_epoch: int | None = None) -> None:
    """Append one epoch row; on resume, first drop rows of epochs that will be trained again."""
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    if keep_before_epoch is not None:
        rows = [r for r in rows if int(r["epoch"]) < keep_before_epoch]
    if row is not None:
        rows.append({k: row[k] for k in SUMMARY_FIELDS})
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def run(cfg: dict[str, Any], variants: Sequence[str]) -> dict[str, Any]:
    """Train with a resolved config; returns the final epoch's summary row and the best top-1."""
    env = init_distributed()
    setup_logging(env.is_main)
    _check_dataset_classes(cfg)
    cfg["num_classes"] = cfg["num_classes"] or dataset_num_classes(cfg["dataset"])
    output = _output_dir(cfg)
    resume_path = _resume_path(cfg, output)
    seed_everything(cfg["seed"] + env.rank)  # model initialisation

    with main_process_first(env):  # the first use of a DVS dataset converts it on disk
        train_set, val_set = build_datasets(cfg)
    train_sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                       seed=cfg["seed"])
    train_loader = make_loader(train_set, cfg, env, cfg["batch_size"], train_sampler, drop_last=True)
    if len(train_loader) == 0:
        raise ConfigError(f"the training set has {len(train_sampler)} samples per process, fewer than "
                          f"batch_size {cfg['batch_size']}: lower --batch-size")
    val_loader = build_eval_loader(val_set, cfg, env)

    ckpt = read_checkpoint(resume_path) if resume_path is not None else None
    if ckpt is not None:  # the SSA setting is part of the network being trained
        restore_model_settings(cfg, ckpt, keys=("batch_coupled_ssa",))
    model = create_dataset_model(cfg, variants).to(env.device)
    cfg["batch_coupled_ssa"] = model.config["batch_coupled_ssa"]  # model_kwargs may have set it
    _check_coupled_batch(cfg)
    if cfg["channels_last"]:  # opt-in: see docs/benchmarks.md for when it pays off
        model = model.to(memory_format=torch.channels_last)
    if cfg["sync_bn"] and env.distributed:
        if env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("sync_bn needs CUDA devices; it is ignored on CPU")
    lr = _learning_rate(cfg, env)
    optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"],
                                    eps=cfg["opt_eps"], betas=tuple(cfg["opt_betas"]), momentum=cfg["momentum"])
    updates_per_epoch = -(-len(train_loader) // cfg["accum_iter"])
    scheduler = _scheduler(cfg, optimizer, updates_per_epoch)
    amp = amp_settings(cfg, env.device)
    scaler = torch.amp.GradScaler("cuda") if amp.enabled and amp.dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=cfg["model_ema_decay"]) if cfg["model_ema"] else None
    mixup_fn = _mixup(cfg)
    train_criterion = (SoftTargetCrossEntropy() if mixup_fn is not None
                       else LabelSmoothingCrossEntropy(cfg["smoothing"]) if cfg["smoothing"] > 0
                       else nn.CrossEntropyLoss())

    start_epoch, best_top1, best_epoch, num_updates = 0, -1.0, -1, 0
    if ckpt is not None:
        for key in ("optimizer", "scheduler", "epoch"):
            if key not in ckpt:
                raise UserError(f"{resume_path} is not a training checkpoint of this codebase (no {key!r}); "
                                f"use it with test.py, or start a new run")
        load_checkpoint(model, ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.module.load_state_dict(ckpt["ema"])
        start_epoch, num_updates = ckpt["epoch"] + 1, ckpt.get("num_updates", 0)
        best_top1, best_epoch = ckpt.get("best_top1", -1.0), ckpt.get("best_epoch", -1)
        log.info("resumed from %s at epoch %d", resume_path, start_epoch)

    train_model = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if cfg["compile"]:  # opt-in: the training forward is compiled, evaluation runs eagerly
        train_model = torch.compile(train_model, dynamic=False)  # dynamic shapes fail in inductor on CPU

    writer = None
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output / "config.yaml")
        _write_summary(output / "summary.csv", None, keep_before_epoch=start_epoch)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output), purge_step=start_epoch if start_epoch else None)
    total_epochs = cfg["epochs"] + cfg["cooldown_epochs"]
    log.info("%s: %s parameters, %d train / %d val images, %d processes on %s, batch %d per process, SSA %s, "
             "lr %.3g, %d epochs -> %s", cfg["model"], f"{count_parameters(model):,}", len(train_set), len(val_set),
             env.world_size, env.device, cfg["batch_size"],
             "batch-coupled" if cfg["batch_coupled_ssa"] else "per sample", lr, total_epochs, output)

    def on_update() -> None:
        nonlocal num_updates
        num_updates += 1
        if ema is not None:
            ema.update(model, step=num_updates)
        if cfg["sched_on_updates"]:
            scheduler.step_update(num_updates)

    row: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, total_epochs):
            seed_everything(cfg["seed"] + env.rank + 100_003 * epoch)
            train_sampler.set_epoch(epoch)
            if not cfg["sched_on_updates"]:
                scheduler.step(epoch)
            if mixup_fn is not None and cfg["mixup_off_epoch"] and epoch >= cfg["mixup_off_epoch"]:
                mixup_fn.mixup_enabled = False  # smoothed one-hot targets from here on
            stats = train_one_epoch(train_model, train_loader, optimizer, train_criterion, epoch, env, amp,
                                    scaler, mixup_fn, cfg["accum_iter"], cfg["clip_grad"], on_update)
            broadcast_buffers(model)
            metrics = evaluate(model, val_loader, env, amp)
            row = dict(epoch=epoch, lr=f"{stats.lr:.6g}", train_loss=f"{stats.loss:.6f}",
                       eval_loss=f"{metrics['loss']:.6f}", eval_top1=f"{metrics['top1']:.4f}",
                       eval_top5=f"{metrics['top5']:.4f}", img_per_s=f"{stats.images_per_s * env.world_size:.1f}",
                       peak_mem_mb=f"{peak_memory_mb(env.device):.0f}")
            is_best = metrics["top1"] > best_top1
            if is_best:
                best_top1, best_epoch = metrics["top1"], epoch
            ema_metrics = evaluate(ema.module, val_loader, env, amp) if ema is not None else None
            if env.is_main:
                _log_epoch(writer, row, metrics, ema_metrics, total_epochs, best_top1)
                _write_summary(output / "summary.csv", row)
                checkpoint = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                  scheduler=scheduler.state_dict(),
                                  scaler=scaler.state_dict() if scaler is not None else None,
                                  ema=ema.module.state_dict() if ema is not None else None,
                                  epoch=epoch, num_updates=num_updates, best_top1=best_top1,
                                  best_epoch=best_epoch, metrics=metrics, config=cfg)
                save_checkpoint(checkpoint, output / "last.pth")
                if is_best:
                    save_checkpoint(checkpoint, output / "best.pth")
            barrier()
    finally:
        if writer is not None:
            writer.close()
        cleanup()
    log.info("done: best top-1 %.2f%% at epoch %d; run folder %s", best_top1, best_epoch, output)
    return {**row, "best_top1": best_top1, "output": str(output)}


def _log_epoch(writer, row: dict[str, Any], metrics: dict[str, float], ema_metrics: dict[str, float] | None,
               total_epochs: int, best_top1: float) -> None:
    epoch = row["epoch"]
    for tag, value in (("train/loss", row["train_loss"]), ("train/lr", row["lr"]),
                       ("train/img_per_s", row["img_per_s"]), ("eval/loss", metrics["loss"]),
                       ("eval/top1", metrics["top1"]), ("eval/top5", metrics["top5"])):
        writer.add_scalar(tag, float(value), epoch)
    if ema_metrics is not None:
        writer.add_scalar("eval_ema/top1", ema_metrics["top1"], epoch)
    writer.flush()
    extra = f" (EMA {ema_metrics['top1']:.2f}%)" if ema_metrics is not None else ""
    log.info("epoch %d/%d  lr %s  train loss %s  eval loss %.4f  top-1 %.2f%%%s  top-5 %.2f%%  best %.2f%%  "
             "%s img/s  peak %s MB", epoch, total_epochs - 1, row["lr"], row["train_loss"], metrics["loss"],
             metrics["top1"], extra, metrics["top5"], best_top1, row["img_per_s"], row["peak_mem_mb"])


@cli_entry
def main(config: str | Path, variants: Sequence[str], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `<dataset>/train.py`: the folder's YAML (`config`), overridden by the command line."""
    return run(parse_args(None if argv is None else list(argv), config), variants)
