"""The training program behind every dataset folder's `train.py`.

    cd cifar10 && python train.py [--key value ...]
    torchrun --nproc_per_node=8 imagenet/train.py --resume auto --output RUN   # starts, and restarts, a job

The run folder (`run_folder.py`) holds config.yaml, log.txt, summary.csv, TensorBoard events, last.pth and
best.pth. SIGTERM, SIGUSR1 or Ctrl-C stops every process after the current optimizer update; rank 0 writes
last.pth with the position inside the epoch and the run exits with code 75 (130 after Ctrl-C), and `--resume auto`
continues at the next batch, with the weights an uninterrupted run would reach (`loaders.py` makes every batch
reproducible). The run folder is made once the settings, the data and the model are checked.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

from ..models._checkpoint import read_checkpoint
from ..config import restore_model_settings, save_config
from ..config.ann import ann_run_settings, is_ann
from ..console import EpochDisplay, add_log_file, log_to_file, setup_logging
from ..data import build_datasets, eval_transform_line, resolve_num_classes
from .distributed import (DistEnv, barrier, broadcast_buffers, cleanup, init_distributed, main_process_first,
                          set_threads)
from .engine import (EpochProgress, StepSettings, amp_settings, epoch_stats, evaluate, peak_memory_mb,
                     train_one_epoch)
from ..errors import ConfigError, cli_entry, failure_line
from .finetune import finetune_variants, load_source, read_source
from .distillation import build_teacher, describe, distillation_criterion
from .firing_watch import FiringWatch
from .loaders import SeededSamples, build_eval_loader, build_train_loader, derived_seed, seed_everything
from .losses import TETLoss
from .sml import sml_criterion
from ..models import compile_model
from .preemption import Preempted, StopRequest
from .run_log import inductor_cache, log_epoch, log_header
from .run_state import Training, check_left_to_train
from .run_folder import (SUMMARY_FIELDS, check_output_writable, output_dir, prepare_output, resume_path,
                        settings_for_run, write_summary)
from .schedule import build_scheduler, set_learning_rate
from ..zoo import check_dataset_model, create_dataset_model, reference_batch_sizes

__all__ = ["main", "run", "SUMMARY_FIELDS"]

log = logging.getLogger("msvit")


def _check_dataset_classes(cfg: dict[str, Any]) -> None:
    """num_classes null: the dataset's class count (an ImageFolder's: its train class folders); one that
    contradicts the data is refused. Before the run folder is made: no image is read."""
    cfg["num_classes"] = resolve_num_classes(cfg, train=True)


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
    effective = cfg["batch_size"] * cfg["accum_iter"] * env.world_size
    return cfg["blr"] * effective / 256


def _mixup(cfg: dict[str, Any]) -> Mixup | None:
    if not (cfg["mixup"] > 0 or cfg["cutmix"] > 0 or cfg["cutmix_minmax"] is not None):
        return None
    return Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], cutmix_minmax=cfg["cutmix_minmax"],
                 prob=cfg["mixup_prob"], switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                 label_smoothing=cfg["smoothing"], num_classes=cfg["num_classes"])


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _clamp_workers(cfg: dict[str, Any]) -> None:
    """More DataLoader workers than CPUs only adds contention (and a warning from every process)."""
    cpus = _available_cpus()
    if cfg["workers"] > cpus:
        log.info("workers %d is more than the %d CPUs this process may use: using %d", cfg["workers"], cpus, cpus)
        cfg["workers"] = cpus


def _quiet_other_processes(env: DistEnv) -> None:
    """Library warnings (Python's and timm's log) from rank 0 only: every other process would repeat them."""
    if not env.is_main:
        warnings.simplefilter("ignore")
        logging.getLogger("timm").setLevel(logging.ERROR)


def _finetune_source(cfg: dict[str, Any], variants: Sequence[str],
                     checkpoint_path: Path | None) -> tuple[Sequence[str], Any]:
    """With --finetune: the model variants it may start from and, for a new run, its checked source weights."""
    if not cfg["finetune"]:
        return variants, None
    variants = finetune_variants(variants)
    if checkpoint_path is not None:
        log.info("resuming %s: the weights come from it; finetune %s is not read again", checkpoint_path,
                 cfg["finetune"])
        return variants, None
    source = read_source(cfg, variants)  # checked before any data is read
    cfg["finetune"] = source.path  # config.yaml records where the weights came from
    return variants, source


def _prepare_model(model: nn.Module, cfg: dict[str, Any], env: DistEnv) -> nn.Module:
    """The run's options on the model (on its device): activation checkpointing, packed spikes, memory format,
    SyncBatchNorm. timm's ANN has no SSA and no spikes."""
    spiking = not is_ann(cfg["model"])
    if spiking:
        cfg["batch_coupled_ssa"] = model.config["batch_coupled_ssa"]  # model_kwargs may have set it
        _check_coupled_batch(cfg)
        model.pack_saved_spikes = cfg["pack_saved_spikes"]
    if cfg["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    if cfg["channels_last"]:  # opt-in: see docs/benchmarks.md for when it pays off
        model = model.to(memory_format=torch.channels_last)
    if cfg["sync_bn"] and env.distributed:
        if env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("sync_bn needs CUDA devices; it is ignored on CPU")
    return model


def _summary_row(epoch: int, stats: Any, metrics: dict[str, float], firing: dict[str, Any] | None,
                 ema_metrics: dict[str, float] | None, device: torch.device) -> dict[str, Any]:
    """One epoch's summary.csv row: the training stats, the evaluation (and the EMA's), the firing rate."""
    row = dict(epoch=epoch, lr=f"{stats.lr:.6g}", train_loss=f"{stats.loss:.6f}",
               eval_loss=f"{metrics['loss']:.6f}", eval_top1=f"{metrics['top1']:.4f}",
               eval_top5=f"{metrics['top5']:.4f}", img_per_s=f"{stats.images_per_s:.1f}",
               peak_mem_mb=f"{peak_memory_mb(device):.0f}")
    if firing is not None and firing["firing_rate"] is not None:
        row["firing_rate"] = f"{firing['firing_rate']:.4f}"
    if ema_metrics is not None:
        row.update(eval_loss_ema=f"{ema_metrics['loss']:.6f}", eval_top1_ema=f"{ema_metrics['top1']:.4f}",
                   eval_top5_ema=f"{ema_metrics['top5']:.4f}")
    return row


class Trainer:
    """One run, as torchtitan's Trainer: `__init__` checks the settings and builds the data, the model, the
    optimizer and the run folder; `fit` trains the epochs left, `end_of_epoch` evaluates and saves each one."""

    def __init__(self, cfg: dict[str, Any], variants: Sequence[str]) -> None:
        self.cfg = cfg
        set_threads(cfg["threads"])  # first: every later torch call (data, model, the C LIF kernel) uses it
        self.env = env = init_distributed()
        setup_logging(env.is_main, keep_pending=True)
        _quiet_other_processes(env)
        _check_dataset_classes(cfg)
        self.output = output_dir(cfg)
        checkpoint_path = resume_path(cfg, self.output)
        variants, source = _finetune_source(cfg, variants, checkpoint_path)
        check_dataset_model(cfg, variants)  # before any data is read
        self.ann = ann_run_settings(cfg) if is_ann(cfg["model"]) else None  # timm's ANN: no T, no spikes
        check_output_writable(self.output)  # the folder itself is made once the data and the model are checked
        _clamp_workers(cfg)
        self.teacher = build_teacher(cfg, env.device)  # before the data: a bad teacher leaves no run folder
        seed_everything(cfg["seed"] + env.rank)  # model initialisation
        self._build_data()
        ckpt = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
        if ckpt is not None:  # the SSA setting is part of the network being trained
            restore_model_settings(cfg, ckpt, keys=("batch_coupled_ssa",))
        self._build_model(variants, source)
        del source  # the source weights are in the model now: not held while the optimizer is built
        self._build_training()
        if ckpt is not None:
            self.training.restore(ckpt, checkpoint_path)
            check_left_to_train(self.state.epoch, self.state.progress.batches, cfg)
        else:
            self.state.epoch = cfg["start_epoch"]
        del ckpt
        self.updates_at_start = self.state.num_updates
        self._wrap_model()
        self._open_output()

    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env
        with main_process_first(env):  # the first use of a DVS dataset converts it on disk
            train_set, self.val_set = build_datasets(cfg)
        self.train_set = SeededSamples(train_set, cfg["seed"])
        if (transform := eval_transform_line(cfg)) is not None:  # what each epoch's evaluation resizes and crops
            log.info("%s", transform)
        self.train_loader = build_train_loader(self.train_set, cfg, env)
        self.batches_per_epoch = len(self.train_loader)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.train_loader.sampler)} samples per process, fewer "
                              f"than batch_size {cfg['batch_size']}: lower --batch-size")
        self.val_loader = build_eval_loader(self.val_set, cfg, env)

    def _build_model(self, variants: Sequence[str], source: Any) -> None:
        """The model (with --finetune's source weights) on its device; then the run folder and its log.txt."""
        model = create_dataset_model(self.cfg, variants)
        if source is not None:
            load_source(model, source, self.cfg)
        self.model = _prepare_model(model.to(self.env.device), self.cfg, self.env)
        # a failed start (unknown model, missing data) leaves no run folder behind
        prepare_output(self.output, self.env.rank)
        if self.env.is_main:
            add_log_file(self.output / "log.txt")  # with the lines logged so far

    def _build_training(self) -> None:
        """Optimizer, scheduler, AMP, EMA, mixup and criterion, and the `Training` that checkpoints them."""
        cfg, env, model = self.cfg, self.env, self.model
        self.lr = _learning_rate(cfg, env)
        optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=self.lr, weight_decay=cfg["weight_decay"],
                                        eps=cfg["opt_eps"], betas=tuple(cfg["opt_betas"]), momentum=cfg["momentum"],
                                        layer_decay=cfg["layer_decay"])
        self.updates_per_epoch = -(-self.batches_per_epoch // cfg["accum_iter"])
        self.scheduler = build_scheduler(cfg, optimizer, self.batches_per_epoch)
        self.amp = amp = amp_settings(cfg, env.device)
        scaler = torch.amp.GradScaler("cuda") if amp.enabled and amp.dtype == torch.float16 else None
        self.ema = ModelEmaV3(model, decay=cfg["model_ema_decay"]) if cfg["model_ema"] else None
        self.mixup_fn = _mixup(cfg)
        self.criterion = (SoftTargetCrossEntropy() if self.mixup_fn is not None
                          else LabelSmoothingCrossEntropy(cfg["smoothing"]) if cfg["smoothing"] > 0
                          else nn.CrossEntropyLoss())
        if cfg["tet"]:  # the criterion on every time step's logits, which the model now returns
            self.criterion = TETLoss(self.criterion, cfg["tet_means"], cfg["tet_lambda"])
            model.per_step_logits = True
        self.criterion = sml_criterion(self.criterion, model, cfg)  # with side branches: every output's loss
        self.criterion = distillation_criterion(self.criterion, self.teacher, cfg)  # takes the inputs too
        self.optimizer = optimizer
        self.training = Training(cfg, env, model, optimizer, self.scheduler, scaler, self.ema, self.output)
        self.state = self.training.state
        self.step = StepSettings(amp, scaler, self.mixup_fn, cfg["accum_iter"], cfg["clip_grad"])

    def _wrap_model(self) -> None:
        """The model the training steps call: DDP across processes, compiled with --compile."""
        self.train_model = self.model
        if self.env.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None)
        if self.cfg["compile"]:  # opt-in: the training forward is compiled, evaluation runs eagerly
            self.train_model = compile_model(self.train_model, self.cfg["compile_mode"])
            log.info("compile: the first training step compiles the model (minutes on a CPU; cached in %s, "
                     "TORCHINDUCTOR_CACHE_DIR moves it)", inductor_cache())

    def _open_output(self) -> None:
        """Rank 0: config.yaml, summary.csv cut at the start epoch, the TensorBoard writer; the log's header."""
        cfg, env, output, epoch = self.cfg, self.env, self.output, self.state.epoch
        self.writer = None
        if env.is_main:
            save_config(cfg, output / "config.yaml")
            write_summary(output / "summary.csv", None, keep_before_epoch=epoch)
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(output), purge_step=epoch if epoch else None)
        log_header(cfg, env, self.model, (len(self.train_set), len(self.val_set)), self.lr, self.updates_per_epoch,
                   self.amp, output, describe(cfg, self.model), self.ann)
        self.total_epochs = cfg["epochs"] + cfg["cooldown_epochs"]

    def fit(self) -> dict[str, Any]:
        """Train until the schedule ends; returns the final epoch's summary row and the best top-1. Raises
        Preempted after a stop signal, once the checkpoint is written."""
        state = self.state
        row: dict[str, Any] = {}
        self.watch = FiringWatch(self.model, self.cfg["watch_firing"])
        self.started = time.perf_counter()
        with StopRequest() as self.stop:
            try:
                while state.epoch < self.total_epochs:
                    epoch = state.epoch
                    self.train_epoch(epoch)
                    if state.stopping:
                        raise self._stopped(f"at epoch {epoch}, batch {state.progress.batches}/"
                                            f"{self.batches_per_epoch} (update {state.num_updates})")
                    row = self.end_of_epoch(epoch)
                    if self.stop.agreed(self.env.device) and state.epoch < self.total_epochs:
                        raise self._stopped(f"after epoch {epoch}")
            finally:
                if self.writer is not None:
                    self.writer.close()
                cleanup()
        weights = " (EMA weights)" if self.ema is not None and self.cfg["best_weights"] == "ema" else ""
        log.info("done: best top-1 %.2f%%%s at epoch %d; run folder %s", state.best_top1, weights, state.best_epoch,
                 self.output)
        return {**row, "best_top1": state.best_top1, "output": str(self.output)}

    def train_epoch(self, epoch: int) -> None:
        """One epoch's optimizer updates, from the position in `state.progress` (a resumed run's batch)."""
        cfg, env, state = self.cfg, self.env, self.state
        self.train_loader.sampler.set_epoch(epoch, start_batch=state.progress.batches,
                                            start_sample=state.resume_sample)
        state.resume_sample = None
        self.train_set.set_epoch(epoch)
        set_learning_rate(self.scheduler, cfg, epoch, state.progress.batches, self.batches_per_epoch)
        if self.mixup_fn is not None and cfg["mixup_off_epoch"] and epoch >= cfg["mixup_off_epoch"]:
            self.mixup_fn.mixup_enabled = False  # smoothed one-hot targets from here on
        display = EpochDisplay(epoch, self.total_epochs, self.batches_per_epoch, state.progress.batches,
                               cfg["accum_iter"], cfg["log_interval"], env.world_size, env.is_main)
        try:
            train_one_epoch(self.train_model, self.train_loader, self.optimizer, self.criterion, epoch, env,
                            self.step, state.progress, self.on_update,
                            lambda batch: seed_everything(derived_seed(cfg["seed"], env.rank, epoch, batch)),
                            display)
        finally:
            display.close()

    def on_update(self, progress: EpochProgress) -> bool:
        """After each optimizer update: EMA, per-update learning rate, the agreed stop and mid-epoch checkpoints;
        True stops the epoch."""
        cfg, state = self.cfg, self.state
        if cfg["compile"] and state.num_updates == self.updates_at_start:
            log.info("compile: the first update, compilation included, took %.1f s", time.perf_counter() - self.started)
        state.num_updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=state.num_updates)
        if cfg["sched_on_updates"]:
            set_learning_rate(self.scheduler, cfg, state.epoch, progress.batches, self.batches_per_epoch)
        state.stopping = self.stop.agreed(self.env.device)
        interval = cfg["checkpoint_interval"]
        if state.stopping or (interval and state.num_updates % interval == 0):
            self.training.save(mid_epoch=True)
        if state.stopping:
            barrier()  # every process exits after rank 0 has written: a launcher kills the rest at the first exit
        return state.stopping

    def _stopped(self, where: str) -> Preempted:
        return Preempted(f"stopped by {self.stop.name} {where}; {self.output / 'last.pth'} holds the position: "
                         f"continue with --resume auto --output {self.output}", self.stop.exit_code)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """Evaluate (and the EMA), read the firing rates, log and write the summary row, save last.pth (and
        best.pth), and move on to the next epoch; returns the row."""
        env, state = self.env, self.state
        stats = epoch_stats(state.progress, env)
        broadcast_buffers(self.model)
        with self.watch.measuring():
            metrics = evaluate(self.model, self.val_loader, env, self.amp)
        firing = self.watch.read()  # every process takes part
        ema_metrics = evaluate(self.ema.module, self.val_loader, env, self.amp) if self.ema is not None else None
        row = _summary_row(epoch, stats, metrics, firing, ema_metrics, env.device)
        # best.pth: the EMA's top-1 when there is one (best_weights ema, as timm), else the raw weights'
        deciding = ema_metrics if ema_metrics is not None and self.cfg["best_weights"] == "ema" else metrics
        is_best = deciding["top1"] > state.best_top1
        if is_best:
            state.best_top1, state.best_epoch = deciding["top1"], epoch
        state.metrics = metrics
        if env.is_main:
            log_epoch(self.writer, row, metrics, ema_metrics, self.total_epochs, state.best_top1, stats.data_share)
            self.watch.log(self.writer, epoch, firing)
            write_summary(self.output / "summary.csv", row)
        self.training.save(mid_epoch=False, best=is_best)
        state.epoch, state.progress = epoch + 1, EpochProgress()
        barrier()
        return row


def run(cfg: dict[str, Any], variants: Sequence[str]) -> dict[str, Any]:
    """Train with a resolved config; returns the final epoch's summary row and the best top-1.
    Raises Preempted after a stop signal, once the checkpoint is written."""
    return Trainer(cfg, variants).fit()


@cli_entry
def main(config: str | Path, variants: Sequence[str], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `<dataset>/train.py`: the folder's YAML (`config`), overridden by the command line; a
    resumed run starts from its run folder's config.yaml instead. Exits EXIT_PREEMPTED after SIGTERM/SIGUSR1,
    EXIT_INTERRUPTED after Ctrl-C."""
    setup_logging(int(os.environ.get("RANK", "0")) == 0)
    cfg = settings_for_run(list(sys.argv[1:] if argv is None else argv), config)
    try:
        return run(cfg, variants)
    except Preempted as stop:
        log.info("%s", stop)
        sys.exit(stop.exit_code)
    except BaseException as exc:  # the line the console shows (cli_entry's, or a traceback's last) also in log.txt
        if not isinstance(exc, SystemExit):
            log_to_file(failure_line(exc))
        raise
