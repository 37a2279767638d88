"""The training-step benchmark: `benchmark()` times zero_grad + forward + loss, backward and the AdamW step of a
registered model on random data, alone or alternating with the reference path or per-sample SSA; the checks of
its settings, its batch, one timed step and its mixed precision."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
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

# per-GPU batch sizes of the recipes (cifar10.yml, dvs128-gesture.yml, imagenet.yml)
DEFAULT_BATCH = {"cifar": 64, "dvs": 16, "imagenet": 32}
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
Autocast = Callable[[], contextlib.AbstractContextManager]  # a factory of autocast (or null) contexts


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


def train_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, criterion: nn.Module, autocast: Autocast,
               scaler: torch.amp.GradScaler | None, sync: Callable[[], None]) -> tuple[float, float, float]:
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


def benchmark(model_name: str, batch_size: int | None = None, T: int | None = None, device: str = "cpu",
              backend: str = "auto", warmup: int = 2, repeats: int = 5, img_size: int | None = None,
              model_kwargs: dict[str, Any] | None = None, reference: bool = False,
              channels_last: bool = False, compile: bool = False, amp: bool = False,
              amp_dtype: str | None = None, threads: int | None = None, seed: int = 0,
              profile_rows: int = 0, alternate: bool = False,
              batch_coupled_ssa: bool | None = None, alternate_ssa: bool = False,
              grad_checkpointing: bool = False, compile_mode: str = "default") -> dict[str, Any]:
    """Time `warmup` untimed and `repeats` timed training steps of `model_name`; return the medians
    (milliseconds), images/s, peak memory and the memory one training forward leaves held (MiB), and the
    settings. `None` means the model's default (T, img_size) or the recipe's batch size; `model_kwargs` go to
    `timm.create_model`, checked as train.py checks them (`config.check_model_kwargs`), and so does
    `batch_coupled_ssa` when given (None: the model's default, the release's batch-coupled SSA). With
    `profile_rows`, one more step runs under torch.profiler and the result's `profile` holds its busiest
    operators (by self CUDA time on CUDA, self CPU time on CPU) as a table.

    `alternate` times the reference path against the optimised one on the same model and batch in this process:
    every warm-up and timed step becomes a reference step followed by an optimised step
    (`msvit.use_reference_implementation` switched in between), which cancels most of the drift between separate
    runs. The result then adds `reference_step_ms`, `speedup` (reference / optimised median),
    `reference_held_mb` and, on CUDA, `reference_peak_memory_mb`; CPU peak RSS covers both paths. With
    `compile`, each round is a reference step, an optimised eager step and a compiled step (`eager_step_ms`,
    `speedup` eager / compiled, `speedup_over_reference` reference / compiled); `compile_s` is the first
    compiled step, compilation included, timed apart from the steps. `compile_mode` is torch.compile's mode
    ('reduce-overhead': CUDA graphs on GPU).

    `alternate_ssa` alternates the same way between per-sample and batch-coupled SSA (the measured
    path, reported as the model's), and adds `per_sample_step_ms`, `coupling_cost` (batch-coupled /
    per-sample median) and, on CUDA, `per_sample_peak_memory_mb`."""
    check_model_name(model_name)
    check_device(device, backend)
    check_counts(batch_size, warmup, repeats, threads, profile_rows)
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise UserError(f"unknown --amp-dtype {amp_dtype!r}; choose float16 or bfloat16")
    if reference and alternate:
        raise UserError("--reference times the reference path alone; --alternate already includes it")
    if alternate and alternate_ssa:
        raise UserError("--alternate and --alternate-ssa each compare two paths; choose one")
    if compile_mode not in COMPILE_MODES:
        raise UserError(f"unknown --compile-mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if compile_mode != "default" and not compile:
        raise UserError(f"--compile-mode {compile_mode} needs --compile")
    if alternate_ssa and batch_coupled_ssa is not None:
        raise UserError("--alternate-ssa times both SSA settings; drop --batch-coupled-ssa")
    switch = use_reference_implementation if reference or alternate else None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    load_before = os.getloadavg()[0]
    rss_before_model = rss_peak_mb()

    model, arch = create_bench_model(model_name, T, img_size, backend, model_kwargs, batch_coupled_ssa)
    T, img_size = arch["T"], arch["img_size"]
    batch_size = batch_size or DEFAULT_BATCH[arch["stem"]]
    model.set_grad_checkpointing(grad_checkpointing)
    if reference:
        switched = switch(model)
        model = switched if isinstance(switched, nn.Module) else model
    model.to(dev).train()
    inputs, targets = make_batch(arch["stem"], batch_size, T, arch["in_chans"], img_size,
                                 model.num_classes, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)

    autocast, scaler, amp_name = mixed_precision(dev, amp, amp_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    runner, compiled, compile_s, compile_error = model, False, None, None
    if compile:
        try:  # torch.compile is lazy: failures show up at the first call, so make that call here
            start = time.perf_counter()
            runner = compile_model(model, compile_mode)
            train_step(runner, inputs, targets, optimizer, criterion, autocast, scaler, sync)
            compiled, compile_s = True, time.perf_counter() - start
        except Exception as exc:  # any backend/dynamo failure: warn and measure eager mode
            compile_error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            print(f"warning: torch.compile failed ({compile_error}); "
                  f"benchmarking the eager model", file=sys.stderr)
            runner = model
    current = {"runner": runner}

    def step() -> tuple[float, float, float]:
        return train_step(current["runner"], inputs, targets, optimizer, criterion, autocast, scaler, sync)

    # the paths timed in turn, each with what switches the model to it; the last one is the measured path
    if alternate and compiled:  # the reference path and the optimised path in eager mode, then compiled
        def run_as(reference: bool, chosen: nn.Module) -> None:
            switch(model, reference)
            current.update(runner=chosen)

        paths = {"reference": lambda: run_as(True, model), "eager": lambda: run_as(False, model),
                 "measured": lambda: run_as(False, runner)}
    elif alternate:  # also where compiling failed: the eager optimised path against the reference
        paths = {"reference": lambda: switch(model, True), "measured": lambda: switch(model, False)}
    elif alternate_ssa:
        paths = {"per_sample": lambda: set_batch_coupled_ssa(model, False),
                 "measured": lambda: set_batch_coupled_ssa(model, True)}
    else:
        paths = {"measured": lambda: None}
    timings: dict[str, list[tuple[float, float, float]]] = {path: [] for path in paths}
    cuda_peaks = dict.fromkeys(paths, 0.0)
    for i in range(warmup + repeats):
        for path, switch_to in paths.items():
            if len(paths) > 1:
                switch_to()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            timing = step()
            if i >= warmup:
                timings[path].append(timing)
                if dev.type == "cuda":
                    cuda_peaks[path] = max(cuda_peaks[path], torch.cuda.max_memory_allocated(dev) / 2**20)
    live, held = live_bytes_counter(dev), {}
    for path, switch_to in paths.items():  # the memory one training forward leaves held, per path
        if len(paths) > 1:
            switch_to()

        def forward() -> torch.Tensor:
            with autocast():
                return current["runner"](inputs)
        held[path] = held_megabytes(forward, live, sync)
    if dev.type == "cuda":
        peak_mb, memory = cuda_peaks["measured"], "cuda max_memory_allocated"
    else:
        peak_mb, memory = rss_peak_mb(), "process peak RSS"
    times = timings["measured"]
    comparison: dict[str, Any] = {}
    medians = {path: statistics.median(sum(t) for t in timings[path]) for path in paths}
    for other in paths:
        if other == "measured":
            continue
        comparison.update({f"{other}_step_ms": 1000 * medians[other],
                           f"{other}_step_ms_all": [round(1000 * sum(t), 3) for t in timings[other]],
                           f"{other}_peak_memory_mb": cuda_peaks[other] if dev.type == "cuda" else None,
                           f"{other}_held_mb": held[other]})
        if other == "per_sample":
            comparison["coupling_cost"] = medians["measured"] / medians[other]
    if "eager" in paths or "reference" in paths:  # the compiled step against eager, else against the reference
        comparison["speedup"] = medians["eager" if "eager" in paths else "reference"] / medians["measured"]
    if "eager" in paths:
        comparison["speedup_over_reference"] = medians["reference"] / medians["measured"]

    profile_table = None
    if profile_rows:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        profile_table = prof.key_averages().table(sort_by=sort, row_limit=profile_rows, max_name_column_width=60)

    steps = [sum(t) for t in times]
    step_s = statistics.median(steps)
    used = sorted({m.backend for m in model.modules() if isinstance(m, LIF)})
    return dict(
        model=model_name, batch_size=batch_size, T=T, img_size=img_size, input_shape=list(inputs.shape),
        num_classes=model.num_classes, params=count_parameters(model), model_kwargs=model_kwargs or {},
        device=device, backend=",".join(used) or backend, requested_backend=backend,
        batch_coupled_ssa=model.config["batch_coupled_ssa"],
        amp=amp_name, channels_last=channels_last, grad_checkpointing=grad_checkpointing,
        compile=compiled, compile_mode=compile_mode if compiled else None, compile_s=compile_s,
        **({"compile_error": compile_error} if compile_error else {}),
        reference=reference, warmup=warmup, repeats=repeats,
        images_per_s=batch_size / step_s, step_ms=1000 * step_s,
        forward_ms=1000 * statistics.median(t[0] for t in times),
        backward_ms=1000 * statistics.median(t[1] for t in times),
        optimizer_ms=1000 * statistics.median(t[2] for t in times),
        step_ms_all=[round(1000 * s, 3) for s in steps],
        peak_memory_mb=peak_mb, memory=memory, held_mb=held["measured"], rss_before_model_mb=rss_before_model,
        torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_name(), cpu_count=os.cpu_count(),
        gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0], profile=profile_table,
        alternate=alternate, alternate_ssa=alternate_ssa, **comparison,
    )
