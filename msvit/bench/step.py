"""The training-step benchmark: `benchmark(BenchSettings(...))` times zero_grad + forward + loss, backward and the
AdamW step of a registered model on random data, alone or alternating with the reference path or per-sample SSA;
the checks of its settings, its model and batch, one timed step, its mixed precision, the alternation of the
paths and the result."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import timm
import torch
from torch import nn

from ..config import COMPILE_MODES, check_model_kwargs
from ..errors import UserError
from ..models import compile_model, count_parameters, set_batch_coupled_ssa, use_reference_implementation
from ..models._inputs import make_batch
from ..models._registry import ALL_ARCHS, ALL_MODEL_NAMES
from ..models._timm import input_kind
from ..neurons import LIF
from .device import check_device, cpu_name
from .memory import held_megabytes, live_bytes_counter, rss_peak_mb
from .settings import BenchSettings

# per-GPU batch sizes of the recipes (cifar10.yml, dvs128-gesture.yml, imagenet.yml)
DEFAULT_BATCH = {"cifar": 64, "dvs": 16, "imagenet": 32}
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
Autocast = Callable[[], contextlib.AbstractContextManager]  # a factory of autocast (or null) contexts
Timing = tuple[float, float, float]  # seconds of (zero_grad + forward + loss, backward, optimizer)
Paths = dict[str, Callable[[], None]]  # the paths timed in turn, each with what switches the model to it


def check_model_name(name: str) -> None:
    if name not in ALL_ARCHS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(ALL_MODEL_NAMES)}")


def check_counts(batch_size: int | None = None, warmup: int = 0, repeats: int = 1, threads: int | None = None,
                 profile_rows: int = 0) -> None:
    """The counts of a run are in range (None: the default, which is)."""
    for flag, value, low in (("--batch-size", batch_size, 1), ("--warmup", warmup, 0), ("--repeats", repeats, 1),
                             ("--threads", threads, 1), ("--profile", profile_rows, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be {low} or more, got {value}")


def check_settings(s: BenchSettings) -> None:
    """The settings are valid and fit together (the model's arguments are checked as the model is made)."""
    check_model_name(s.model_name)
    check_device(s.device, s.backend)
    check_counts(s.batch_size, s.warmup, s.repeats, s.threads, s.profile_rows)
    if s.amp_dtype is not None and s.amp_dtype not in AMP_DTYPES:
        raise UserError(f"unknown --amp-dtype {s.amp_dtype!r}; choose float16 or bfloat16")
    if s.reference and s.alternate:
        raise UserError("--reference times the reference path alone; --alternate already includes it")
    if s.alternate and s.alternate_ssa:
        raise UserError("--alternate and --alternate-ssa each compare two paths; choose one")
    if s.compile_mode not in COMPILE_MODES:
        raise UserError(f"unknown --compile-mode {s.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if s.compile_mode != "default" and not s.compile:
        raise UserError(f"--compile-mode {s.compile_mode} needs --compile")
    if s.alternate_ssa and s.batch_coupled_ssa is not None:
        raise UserError("--alternate-ssa times both SSA settings; drop --batch-coupled-ssa")


def train_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, criterion: nn.Module, autocast: Autocast,
               scaler: torch.amp.GradScaler | None, sync: Callable[[], None]) -> Timing:
    """One training step; returns the seconds of (zero_grad + forward + loss, backward, optimizer)."""
    sync()
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = criterion(model(inputs), targets)
    sync()
    t1 = time.perf_counter()
    (scaler.scale(loss) if scaler is not None else loss).backward()
    sync()
    t2 = time.perf_counter()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    sync()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def mixed_precision(device: torch.device, amp: bool,
                    amp_dtype: str | None) -> tuple[Autocast, torch.amp.GradScaler | None, str | None]:
    """The autocast context factory, the grad scaler (float16 on CUDA only) and the dtype name."""
    if not amp:
        return contextlib.nullcontext, None, None
    name = amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    dtype = AMP_DTYPES[name]
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler, name


def create_bench_model(model_name: str, T: int | None = None, img_size: int | None = None, backend: str | None = None,
                       model_kwargs: dict[str, Any] | None = None,
                       batch_coupled_ssa: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model to time and its architecture settings: `model_kwargs` and the given options (None: the model's
    default), checked as train.py checks them (`config.check_model_kwargs`)."""
    given, labels = dict(model_kwargs or {}), {key: f"model_kwargs.{key}" for key in model_kwargs or {}}
    for key, value, flag in (("T", T, "--time-step"), ("img_size", img_size, "--img-size"),
                             ("batch_coupled_ssa", batch_coupled_ssa, "--batch-coupled-ssa"),
                             ("neuron_backend", backend, "--backend")):
        if value is not None:
            given[key], labels[key] = value, flag
    kwargs = check_model_kwargs(model_name, given, labels)
    arch = {**ALL_ARCHS[model_name], **kwargs}
    return timm.create_model(model_name, **kwargs), {**arch, "stem": input_kind(arch)}


@dataclass
class StepRig:
    """What a timed training step needs: the model, its architecture settings, its batch, the optimizer and the
    mixed precision; `runner` is what the step calls (the model, or the compiled model while that path runs)."""
    model: nn.Module
    arch: dict[str, Any]
    batch_size: int
    inputs: torch.Tensor
    targets: torch.Tensor
    device: torch.device
    autocast: Autocast
    scaler: torch.amp.GradScaler | None
    amp_name: str | None
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    sync: Callable[[], None]
    runner: nn.Module | Callable[..., Any]
    compiled: bool = False
    compile_s: float | None = None  # the first compiled step, compilation included
    compile_error: str | None = None

    def step(self) -> Timing:
        return train_step(self.runner, self.inputs, self.targets, self.optimizer, self.criterion, self.autocast,
                          self.scaler, self.sync)

    def forward(self) -> torch.Tensor:
        """One training forward (autograd on, no loss), for the memory it leaves held."""
        with self.autocast():
            return self.runner(self.inputs)


def prepare(s: BenchSettings) -> StepRig:
    """The model (switched to the reference path with `reference`, compiled with `compile`), its random batch on
    the device, AdamW and the mixed precision of `s`."""
    dev = torch.device(s.device)
    model, arch = create_bench_model(s.model_name, s.T, s.img_size, s.backend, s.model_kwargs, s.batch_coupled_ssa)
    batch_size = s.batch_size or DEFAULT_BATCH[arch["stem"]]
    model.set_grad_checkpointing(s.grad_checkpointing)
    if s.reference:
        switched = use_reference_implementation(model)
        model = switched if isinstance(switched, nn.Module) else model
    model.to(dev).train()
    inputs, targets = make_batch(arch["stem"], batch_size, arch["T"], arch["in_chans"], arch["img_size"],
                                 model.num_classes, dev)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
    autocast, scaler, amp_name = mixed_precision(dev, s.amp, s.amp_dtype)
    rig = StepRig(model, arch, batch_size, inputs, targets, dev, autocast, scaler, amp_name,
                  optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05),
                  criterion=nn.CrossEntropyLoss(),
                  sync=torch.cuda.synchronize if dev.type == "cuda" else (lambda: None), runner=model)
    if s.compile:
        compile_runner(rig, s.compile_mode)
    return rig


def compile_runner(rig: StepRig, mode: str) -> None:
    """torch.compile the rig's model and make its first (timed) step; if that fails, warn and keep eager."""
    try:  # torch.compile is lazy: failures show up at the first call, so make that call here
        start = time.perf_counter()
        rig.runner = compile_model(rig.model, mode)
        rig.step()
        rig.compiled, rig.compile_s = True, time.perf_counter() - start
    except Exception as exc:  # any backend/dynamo failure: warn and measure eager mode
        rig.compile_error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        print(f"warning: torch.compile failed ({rig.compile_error}); "
              f"benchmarking the eager model", file=sys.stderr)
        rig.runner = rig.model


def path_switches(s: BenchSettings, rig: StepRig) -> Paths:
    """The paths timed in turn, each with what switches the model to it; the last one is the measured path."""
    model, compiled = rig.model, rig.runner
    if s.alternate and rig.compiled:  # the reference path and the optimised path in eager mode, then compiled
        def run_as(reference: bool, chosen: nn.Module | Callable[..., Any]) -> None:
            use_reference_implementation(model, reference)
            rig.runner = chosen

        return {"reference": lambda: run_as(True, model), "eager": lambda: run_as(False, model),
                "measured": lambda: run_as(False, compiled)}
    if s.alternate:  # also where compiling failed: the eager optimised path against the reference
        return {"reference": lambda: use_reference_implementation(model, True),
                "measured": lambda: use_reference_implementation(model, False)}
    if s.alternate_ssa:
        return {"per_sample": lambda: set_batch_coupled_ssa(model, False),
                "measured": lambda: set_batch_coupled_ssa(model, True)}
    return {"measured": lambda: None}


def time_paths(rig: StepRig, paths: Paths, warmup: int,
               repeats: int) -> tuple[dict[str, list[Timing]], dict[str, float]]:
    """`warmup` untimed and `repeats` timed rounds of one step per path; each path's timings and, on CUDA, its
    peak allocated MiB over the timed steps (0.0 elsewhere)."""
    cuda = rig.device.type == "cuda"
    timings: dict[str, list[Timing]] = {path: [] for path in paths}
    cuda_peaks = dict.fromkeys(paths, 0.0)
    for i in range(warmup + repeats):
        for path, switch_to in paths.items():
            if len(paths) > 1:
                switch_to()
            if cuda:
                torch.cuda.reset_peak_memory_stats(rig.device)
            timing = rig.step()
            if i >= warmup:
                timings[path].append(timing)
                if cuda:
                    cuda_peaks[path] = max(cuda_peaks[path], torch.cuda.max_memory_allocated(rig.device) / 2**20)
    return timings, cuda_peaks


def held_memory(rig: StepRig, paths: Paths) -> dict[str, float]:
    """The MiB one training forward leaves held, per path (ending on the measured one)."""
    live, held = live_bytes_counter(rig.device), {}
    for path, switch_to in paths.items():
        if len(paths) > 1:
            switch_to()
        held[path] = held_megabytes(rig.forward, live, rig.sync)
    return held


def compare_paths(timings: dict[str, list[Timing]], cuda_peaks: dict[str, float], held: dict[str, float],
                  cuda: bool) -> dict[str, Any]:
    """The result's entries of the paths the measured one alternated with, and the ratios of the medians."""
    comparison: dict[str, Any] = {}
    medians = {path: statistics.median(sum(t) for t in timings[path]) for path in timings}
    for other in timings:
        if other == "measured":
            continue
        comparison.update({f"{other}_step_ms": 1000 * medians[other],
                           f"{other}_step_ms_all": [round(1000 * sum(t), 3) for t in timings[other]],
                           f"{other}_peak_memory_mb": cuda_peaks[other] if cuda else None,
                           f"{other}_held_mb": held[other]})
        if other == "per_sample":
            comparison["coupling_cost"] = medians["measured"] / medians[other]
    if "eager" in timings or "reference" in timings:  # the compiled step against eager, else the reference
        comparison["speedup"] = medians["eager" if "eager" in timings else "reference"] / medians["measured"]
    if "eager" in timings:
        comparison["speedup_over_reference"] = medians["reference"] / medians["measured"]
    return comparison


def profile_step(rig: StepRig, rows: int) -> str:
    """One more step under torch.profiler: its `rows` busiest operators (self CUDA time on CUDA, else CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = rig.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        rig.step()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


def result_dict(s: BenchSettings, rig: StepRig, times: list[Timing], memory: dict[str, Any],
                comparison: dict[str, Any], profile_table: str | None, load_before: float) -> dict[str, Any]:
    """What `benchmark` returns (and `--json` prints): the settings, the measured path's medians, `memory`
    (peak, what it is, held and before the model), the machine and `comparison`."""
    model, dev = rig.model, rig.device
    steps = [sum(t) for t in times]
    step_s = statistics.median(steps)
    used = sorted({m.backend for m in model.modules() if isinstance(m, LIF)})
    return dict(
        model=s.model_name, batch_size=rig.batch_size, T=rig.arch["T"], img_size=rig.arch["img_size"],
        input_shape=list(rig.inputs.shape), num_classes=model.num_classes, params=count_parameters(model),
        model_kwargs=s.model_kwargs or {}, device=s.device, backend=",".join(used) or s.backend,
        requested_backend=s.backend, batch_coupled_ssa=model.config["batch_coupled_ssa"],
        amp=rig.amp_name, channels_last=s.channels_last, grad_checkpointing=s.grad_checkpointing,
        compile=rig.compiled, compile_mode=s.compile_mode if rig.compiled else None, compile_s=rig.compile_s,
        **({"compile_error": rig.compile_error} if rig.compile_error else {}),
        reference=s.reference, warmup=s.warmup, repeats=s.repeats,
        images_per_s=rig.batch_size / step_s, step_ms=1000 * step_s,
        forward_ms=1000 * statistics.median(t[0] for t in times),
        backward_ms=1000 * statistics.median(t[1] for t in times),
        optimizer_ms=1000 * statistics.median(t[2] for t in times),
        step_ms_all=[round(1000 * step, 3) for step in steps], **memory,
        torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_name(), cpu_count=os.cpu_count(),
        gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0], profile=profile_table,
        alternate=s.alternate, alternate_ssa=s.alternate_ssa, **comparison,
    )


def benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Time `settings.warmup` untimed and `settings.repeats` timed training steps of `settings.model_name`
    (`BenchSettings` describes each setting and what it adds to the result); return the medians (milliseconds),
    images/s, peak memory and the memory one training forward leaves held (MiB), and the settings."""
    s = settings
    check_settings(s)
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    load_before, rss_before_model = os.getloadavg()[0], rss_peak_mb()
    rig = prepare(s)
    paths = path_switches(s, rig)
    timings, cuda_peaks = time_paths(rig, paths, s.warmup, s.repeats)
    held = held_memory(rig, paths)
    if rig.device.type == "cuda":  # taken before the profiled step, which would add to the CPU's peak RSS
        peak_mb, kind = cuda_peaks["measured"], "cuda max_memory_allocated"
    else:
        peak_mb, kind = rss_peak_mb(), "process peak RSS"
    memory = dict(peak_memory_mb=peak_mb, memory=kind, held_mb=held["measured"], rss_before_model_mb=rss_before_model)
    comparison = compare_paths(timings, cuda_peaks, held, rig.device.type == "cuda")
    profile_table = profile_step(rig, s.profile_rows) if s.profile_rows else None
    return result_dict(s, rig, timings["measured"], memory, comparison, profile_table, load_before)
