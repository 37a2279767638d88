"""Training-step benchmark: `python -m msvit.bench --model msvit_cifar_4_384 --device cpu`.

Times full training steps (zero_grad, forward, loss, backward, AdamW step) of a registered model on
random data at its dataset's real input size, and reports the median step time split into forward
(zero_grad + forward + loss), backward and optimizer, images/s, peak memory and the parameter count.

    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --time-step 4 --device cpu
    python -m msvit.bench --all --models msvit_cifar_4_384,qkformer_cifar_4_384 --json
    python -m msvit.bench --model msvit_cifar_4_384 --model-kwargs '{embed_dim: 32, num_heads: 2}'
    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --alternate      # optimised vs reference path
    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --alternate-ssa  # batch-coupled vs per-sample SSA

Peak memory is `torch.cuda.max_memory_allocated()` over the timed steps on CUDA, and the peak
resident set size of the whole process (imports included) on CPU; `--all` therefore runs every
model in a fresh subprocess. `held_mb` is what one more training forward leaves allocated, the
activations kept for backward: CUDA's allocated bytes, or on CPU the heap bytes in use that glibc
counts (exact, where the peak RSS also holds the allocator's cached blocks). From Python:
`benchmark("msvit_cifar_4_384", batch_size=8)` returns the same dict as `--json` prints.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import timm
import torch
from torch import nn

from .config import COMPILE_MODES, ArgumentParser, check_model_kwargs, parse_model_kwargs
from .console import print_json, stdout_to_stderr
from .errors import UserError, cli_entry
from .models import ARCHS, MODEL_NAMES, compile_model, count_parameters, set_batch_coupled_ssa
from .neurons import BACKENDS, LIF, cupy_unavailable_reason

__all__ = ["DEFAULT_BATCH", "benchmark", "check_counts", "format_table", "lif_bandwidth", "main"]

# per-GPU batch sizes of the recipes (cifar10.yml, dvs128-gesture.yml, imagenet.yml)
DEFAULT_BATCH = {"cifar": 64, "dvs": 16, "imagenet": 32}
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
LIF_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# the largest LIF input of msvit_cifar_4_384 at the recipe's batch: [T, B, C, H, W] of the first stage
LIF_SHAPE = (4, 64, 192, 32, 32)
# nominal DRAM bandwidth (GB/s) of GPUs this is likely to meet, by a substring of torch's device name
NOMINAL_GBPS = {"H200": 4800, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                "A100 80GB PCIe": 1935, "A100": 1555, "V100": 900, "RTX 4090": 1008, "RTX 3090": 936}
Autocast = Callable[[], contextlib.AbstractContextManager]  # a factory of autocast (or null) contexts


def check_model_name(name: str) -> None:
    if name not in ARCHS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def check_device(device: str, backend: str) -> None:
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; choose cpu or cuda")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
    if backend == "cupy" and device != "cuda":
        raise UserError("--backend cupy runs on CUDA tensors only; use --device cuda or --backend torch/auto")
    if backend == "cupy" and (reason := cupy_unavailable_reason()) is not None:
        raise UserError(f"--backend cupy cannot run: {reason}")


def check_counts(batch_size: int | None = None, warmup: int = 0, repeats: int = 1, threads: int | None = None,
                 profile_rows: int = 0) -> None:
    """The counts of a run are in range (None: the default, which is)."""
    for flag, value, low in (("--batch-size", batch_size, 1), ("--warmup", warmup, 0), ("--repeats", repeats, 1),
                             ("--threads", threads, 1), ("--profile", profile_rows, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be {low} or more, got {value}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def live_bytes_counter(device: torch.device) -> Callable[[], int] | None:
    """A function returning the bytes allocated now: CUDA's allocator, or on CPU the heap in use as glibc counts
    it (`mallinfo2`: arena chunks and mmapped ones, exact, unlike the peak RSS); None without either."""
    if device.type == "cuda":
        return lambda: torch.cuda.memory_allocated(device)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def live() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return live


def held_megabytes(forward: Callable[[], Any], live: Callable[[], int] | None,
                   sync: Callable[[], None]) -> float | None:
    """MiB that one training forward leaves allocated: what autograd keeps for backward, and the output."""
    if live is None:
        return None
    gc.collect()
    sync()
    before = live()
    out = forward()
    sync()
    held = live() - before
    del out
    return held / 2**20


def make_batch(stem: str, batch_size: int, T: int, in_chans: int, img_size: int, num_classes: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normal images `[B, C, H, W]`, or small integer event counts `[B, T, C, H, W]` for DVS."""
    if stem == "dvs":
        inputs = torch.randint(0, 4, (batch_size, T, in_chans, img_size, img_size), device=device).float()
    else:
        inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    return inputs, torch.randint(0, num_classes, (batch_size,), device=device)


def reference_switch() -> Callable[[nn.Module], Any]:
    """`msvit.use_reference_implementation`, which switches a model to the unoptimised forward path."""
    import msvit

    switch = getattr(msvit, "use_reference_implementation", None)
    if switch is None:
        raise UserError("--reference needs msvit.use_reference_implementation(model), "
                        "which this version of msvit does not provide yet")
    return switch


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
    switch = reference_switch() if reference or alternate else None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    load_before = os.getloadavg()[0]
    rss_before_model = rss_peak_mb()

    given, labels = dict(model_kwargs or {}), {key: f"model_kwargs.{key}" for key in model_kwargs or {}}
    for key, value, flag in (("T", T, "--time-step"), ("img_size", img_size, "--img-size"),
                             ("batch_coupled_ssa", batch_coupled_ssa, "--batch-coupled-ssa"),
                             ("neuron_backend", backend, "--backend")):
        if value is not None:
            given[key], labels[key] = value, flag
    kwargs = check_model_kwargs(model_name, given, labels)
    arch = {**ARCHS[model_name], **kwargs}
    T, img_size = arch["T"], arch["img_size"]
    batch_size = batch_size or DEFAULT_BATCH[arch["stem"]]
    model = timm.create_model(model_name, **kwargs)
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


def _cuda_kernel_ms(prof: Any, marker: str, calls: int) -> float | None:
    """Device milliseconds per call of the CUDA kernels whose name contains `marker` (None if none ran)."""
    total_us = sum(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
                   for e in prof.key_averages() if marker in e.key)
    return total_us / 1000 / calls if total_us else None


def lif_bandwidth(shape: Sequence[int] = LIF_SHAPE, device: str = "cuda", backend: str = "auto",
                  dtype: str = "float32", warmup: int = 3, repeats: int = 20,
                  reference: bool = False) -> dict[str, Any]:
    """Time one multi-step LIF neuron on a `[T, ...]` input: the forward and backward calls (as the
    model makes them) and, on CUDA with the CuPy backend, the fused kernels alone (torch.profiler).
    `reference` times spikingjelly's own node (`LIF.fused = False`) instead of msvit's.

    Bandwidth counts the bytes the CuPy kernels must move, with N neurons and T steps. msvit's forward
    kernel reads x and v_init and writes h, spikes and v_last, (3T + 2) N elements; its backward reads
    the spike and v_last gradients and h (where it fired is `h >= threshold`) and writes the x and
    v_init gradients, (3T + 2) N. spikingjelly's kernels also write (forward) and read (backward) the
    membrane sequence: (4T + 1) N and (5T + 1) N. Call bandwidths use the same counts, so they show what
    the work around the kernel costs; the yardsticks are a device-to-device copy of the input (2 x its
    bytes moved) and the device's nominal bandwidth.
    """
    check_device(device, backend)
    if dtype not in LIF_DTYPES or (dtype == "float16" and device == "cpu"):
        raise UserError(f"--lif-dtype {dtype!r}: choose float32, or float16 on CUDA")
    dev, dt = torch.device(device), LIF_DTYPES[dtype]
    T, neurons = shape[0], math.prod(shape[1:])
    lif = LIF(backend=backend)
    lif.fused = not reference
    x = torch.randn(*shape, device=dev, dtype=dt).mul_(2).requires_grad_()
    grad_spikes = torch.randn_like(x)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, 1000 * (time.perf_counter() - t0)

    def one_call() -> tuple[float, float]:
        x.grad = None
        spikes, fwd_ms = timed(lambda: lif(x))
        _, bwd_ms = timed(lambda: spikes.backward(grad_spikes))
        lif.reset()
        return fwd_ms, bwd_ms

    for _ in range(warmup):
        one_call()
    times = [one_call() for _ in range(repeats)]
    fwd_ms = statistics.median(t[0] for t in times)
    bwd_ms = statistics.median(t[1] for t in times)
    used = lif.backend
    kernel_fwd_ms = kernel_bwd_ms = None
    if dev.type == "cuda" and used == "cupy":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                one_call()
            sync()
        kernel_fwd_ms = _cuda_kernel_ms(prof, "LIFNode_fptt" if reference else "msvit_lif_forward", repeats)
        kernel_bwd_ms = _cuda_kernel_ms(prof, "LIFNode_bptt" if reference else "msvit_lif_backward", repeats)

    size = torch.finfo(dt).bits // 8
    fwd_elements, bwd_elements = ((4 * T + 1, 5 * T + 1) if reference and used == "cupy" else (3 * T + 2, 3 * T + 2))
    fwd_bytes, bwd_bytes = fwd_elements * neurons * size, bwd_elements * neurons * size
    copy = torch.empty_like(x)
    copy_ms = statistics.median(timed(lambda: copy.copy_(x))[1] for _ in range(max(repeats, 5)))
    gbps = lambda nbytes, ms: nbytes / ms / 1e6 if ms else None  # noqa: E731 (bytes per ms -> GB/s)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    nominal = next((v for k, v in NOMINAL_GBPS.items() if gpu and k in gpu), None)
    result = dict(
        shape=list(shape), neurons=neurons, T=T, dtype=dtype, device=device, backend=used,
        requested_backend=backend, reference=reference, forward_bytes=fwd_bytes, backward_bytes=bwd_bytes,
        forward_ms=fwd_ms, backward_ms=bwd_ms, kernel_forward_ms=kernel_fwd_ms, kernel_backward_ms=kernel_bwd_ms,
        forward_gbps=gbps(fwd_bytes, fwd_ms), backward_gbps=gbps(bwd_bytes, bwd_ms),
        kernel_forward_gbps=gbps(fwd_bytes, kernel_fwd_ms), kernel_backward_gbps=gbps(bwd_bytes, kernel_bwd_ms),
        copy_ms=copy_ms, copy_gbps=gbps(2 * x.numel() * size, copy_ms), nominal_gbps=nominal,
        spike_rate=float(lif(x.detach()).float().mean()), gpu=gpu, cpu=cpu_name(), torch=torch.__version__,
        threads=torch.get_num_threads(), warmup=warmup, repeats=repeats,
    )
    lif.reset()
    return result


def format_lif(r: dict[str, Any]) -> str:
    """The LIF timings as a few readable lines."""
    def line(name: str, ms: float | None, gbps: float | None) -> str:
        if ms is None:
            return f"  {name:<16} -"
        share = f", {100 * gbps / r['nominal_gbps']:.0f}% of nominal" if gbps and r["nominal_gbps"] else ""
        return f"  {name:<16} {ms:9.3f} ms  {gbps:8.1f} GB/s{share}"

    variant = " (spikingjelly's node)" if r["reference"] else ""
    lines = [f"LIF {r['dtype']} {'x'.join(map(str, r['shape']))} ({r['neurons']:,} neurons, T {r['T']}) on "
             f"{r['gpu'] or r['cpu']}, backend {r['backend']}{variant}, torch {r['torch']}, "
             f"median of {r['repeats']}, spike rate {r['spike_rate']:.3f}",
             line("forward call", r["forward_ms"], r["forward_gbps"]),
             line("backward call", r["backward_ms"], r["backward_gbps"])]
    if r["kernel_forward_ms"] is not None or r["kernel_backward_ms"] is not None:
        lines += [line("forward kernel", r["kernel_forward_ms"], r["kernel_forward_gbps"]),
                  line("backward kernel", r["kernel_backward_ms"], r["kernel_backward_gbps"])]
    lines.append(line("device copy", r["copy_ms"], r["copy_gbps"]))
    if r["nominal_gbps"]:
        lines.append(f"  nominal DRAM bandwidth {r['nominal_gbps']} GB/s")
    return "\n".join(lines)


COLUMNS = (("model", "model", "{}"), ("batch", "batch_size", "{}"), ("T", "T", "{}"),
           ("input", "input_shape", "{}"), ("img/s", "images_per_s", "{:.2f}"),
           ("ms/step", "step_ms", "{:.1f}"), ("fwd ms", "forward_ms", "{:.1f}"),
           ("bwd ms", "backward_ms", "{:.1f}"), ("opt ms", "optimizer_ms", "{:.1f}"),
           ("peak MiB", "peak_memory_mb", "{:.0f}"), ("held MiB", "held_mb", "{:.0f}"),
           ("params", "params", "{:,}"))


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The settings shared by the runs, then one row per model (failed runs show their error)."""
    ok = [r for r in results if "error" not in r]
    lines = []
    if ok:
        r = ok[0]
        flags = [f for f in ("reference", "alternate", "alternate_ssa", "channels_last", "grad_checkpointing", "compile")
                 if r.get(f)]
        flags += [] if r.get("alternate_ssa") else [f"SSA {'batch-coupled' if r['batch_coupled_ssa'] else 'per sample'}"]
        flags += [f"compile mode {r['compile_mode']}"] if r.get("compile_mode") not in (None, "default") else []
        flags += [f"amp {r['amp']}"] if r["amp"] else []
        lines.append(f"device {r['device']} ({r['gpu'] or r['cpu']}, {r['threads']} threads), backend {r['backend']}, "
                     f"torch {r['torch']}, warmup {r['warmup']}, median of {r['repeats']}"
                     + (f", {', '.join(flags)}" if flags else ""))
        lines.append(f"peak memory: {r['memory']}; load average {r['loadavg_before']:.2f} -> {r['loadavg_after']:.2f}")
    columns = COLUMNS
    if ok and ok[0]["device"] == "cpu":  # RSS includes the imports: show what was there before the model
        columns += (("pre-model MiB", "rss_before_model_mb", "{:.0f}"),)
    if ok and ok[0]["compile"]:
        columns += (("compile s", "compile_s", "{:.1f}"),)
    if ok and ok[0]["alternate"]:
        # what the measured path alternated with
        others = ("reference", "eager") if ok[0]["compile"] else ("reference",)
        for other in others:
            columns += ((f"{other} ms/step", f"{other}_step_ms", "{:.1f}"),
                        (f"{other} held MiB", f"{other}_held_mb", "{:.0f}"))
            if ok[0]["device"] == "cuda":
                columns += ((f"{other} peak MiB", f"{other}_peak_memory_mb", "{:.0f}"),)
        columns += (("speed-up", "speedup", "{:.2f}x"),)
        if ok[0]["compile"]:
            columns += (("over reference", "speedup_over_reference", "{:.2f}x"),)
    if ok and ok[0].get("alternate_ssa"):
        columns += (("per-sample ms/step", "per_sample_step_ms", "{:.1f}"),
                    ("coupled/per-sample", "coupling_cost", "{:.3f}x"))
        if ok[0]["device"] == "cuda":
            columns += (("per-sample peak MiB", "per_sample_peak_memory_mb", "{:.0f}"),)
    rows = [[head for head, _, _ in columns]]
    rows += [["-" if r.get(key) is None else fmt.format("x".join(map(str, r[key])) if key == "input_shape"
                                                        else r[key]) for _, key, fmt in columns] for r in ok]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    lines += [f"{r['model']}: error: {r['error']}" for r in results if "error" in r]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m msvit.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--all", action="store_true", help="every registered model, each in a fresh subprocess")
    p.add_argument("--models", help="with --all: only these, comma-separated (implies --all)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's (CIFAR 64, DVS 16, ImageNet 32)")
    p.add_argument("--time-step", "--T", dest="T", type=int, help="time steps; default: the model's (4, DVS 16)")
    p.add_argument("--img-size", type=int, help="default: the model's dataset size (32, 128, 224)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="LIF neuron backend (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps, median reported (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's choice")
    p.add_argument("--model-kwargs", default="{}", help="model arguments as a YAML mapping, checked as train.py "
                   "checks them, e.g. '{embed_dim: 32, num_heads: 2}' (JSON works too)")
    p.add_argument("--batch-coupled-ssa", choices=("true", "false"), help="SSA output neuron along T*B as in the "
                   "release (true, the models' default) or per sample (false)")
    p.add_argument("--reference", action="store_true", help="msvit.use_reference_implementation(model)")
    p.add_argument("--alternate", action="store_true", help="alternate reference and optimised steps (with "
                   "--compile: reference, optimised eager and compiled) in one process and report the speed-ups")
    p.add_argument("--alternate-ssa", action="store_true", help="alternate per-sample and batch-coupled SSA steps "
                   "in one process and report what the coupling costs")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each block's activations in "
                   "backward (model.set_grad_checkpointing)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model (and 4-D inputs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager if it fails)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode with --compile; reduce-overhead: CUDA graphs on GPU")
    p.add_argument("--amp", action="store_true", help="autocast: float16 + GradScaler on CUDA, bfloat16 on CPU")
    p.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), help="override the --amp dtype")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="profile one more step and print its ROWS busiest operators (not with --all)")
    p.add_argument("--lif", action="store_true", help="time one LIF neuron (forward, backward, CuPy kernels) "
                   "and report its memory bandwidth instead of a model")
    p.add_argument("--lif-shape", default="x".join(map(str, LIF_SHAPE)), help="with --lif: T x neuron dims "
                   "(default: %(default)s)")
    p.add_argument("--lif-dtype", default="float32", choices=tuple(LIF_DTYPES), help="with --lif (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def child_argv(args: argparse.Namespace, model: str) -> list[str]:
    """The command line that benchmarks `model` alone with the settings of `args`, printing JSON."""
    argv = ["--model", model, "--json", "--device", args.device, "--backend", args.backend,
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--model-kwargs", args.model_kwargs]
    for dest, flag in (("batch_size", "--batch-size"), ("T", "--time-step"), ("img_size", "--img-size"),
                       ("threads", "--threads"), ("amp_dtype", "--amp-dtype"),
                       ("batch_coupled_ssa", "--batch-coupled-ssa"), ("compile_mode", "--compile-mode")):
        if getattr(args, dest) is not None:
            argv += [flag, str(getattr(args, dest))]
    for flag in ("reference", "alternate", "alternate_ssa", "channels_last", "grad_checkpointing", "compile", "amp"):
        if getattr(args, flag):
            argv.append(f"--{flag.replace('_', '-')}")
    return argv


def run_child(argv: list[str]) -> dict[str, Any]:
    """Benchmark in a fresh interpreter (so the CPU peak RSS is this model's); errors become a dict."""
    proc = subprocess.run([sys.executable, "-m", "msvit.bench", *argv], capture_output=True, text=True)
    sys.stderr.write(proc.stderr)  # its warnings (such as a failed torch.compile) are the user's to see
    model = argv[argv.index("--model") + 1]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(model=model, error=last.removeprefix("error: "))
    return json.loads(proc.stdout.strip().splitlines()[-1])


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    kwargs = parse_model_kwargs(args.model_kwargs)
    check_counts(args.batch_size, args.warmup, args.repeats, args.threads, args.profile)
    with stdout_to_stderr(args.json):  # with --json, stdout holds the JSON object alone
        result = _run(args, kwargs)
    if args.json:
        print_json(result)
    elif args.lif:
        print(format_lif(result))
    else:
        print(format_table(result.get("results", [result])))
        if result.get("profile"):
            print(result["profile"])
    if any("error" in r for r in result.get("results", ())):
        sys.exit(1)


def _run(args: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What `main` measures for `args`: one model's result, {'results': [...]} for --all, or the LIF's."""
    if args.lif:
        try:
            shape = tuple(int(n) for n in args.lif_shape.lower().split("x"))
        except ValueError:
            raise UserError(f"--lif-shape must look like 4x64x192x32x32, got {args.lif_shape!r}") from None
        if len(shape) < 2 or min(shape) < 1:
            raise UserError(f"--lif-shape needs T and at least one positive neuron dimension, got {args.lif_shape!r}")
        return lif_bandwidth(shape, args.device, args.backend, args.lif_dtype, args.warmup, args.repeats,
                             args.reference)
    if args.all or args.models:
        names = args.models.split(",") if args.models else list(MODEL_NAMES)
        if args.profile:
            raise UserError("--profile times one model; use --model NAME instead of --all")
        for name in names:
            check_model_name(name)
        check_device(args.device, args.backend)
        results = []
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            results.append(run_child(child_argv(args, name)))
        return {"results": results}
    if not args.model:
        raise UserError(f"give --model NAME or --all; models: {', '.join(MODEL_NAMES)}")
    return benchmark(args.model, args.batch_size, args.T, args.device, args.backend, args.warmup,
                     args.repeats, args.img_size, kwargs, args.reference, args.channels_last,
                     args.compile, args.amp, args.amp_dtype, args.threads, profile_rows=args.profile,
                     alternate=args.alternate,
                     batch_coupled_ssa=None if args.batch_coupled_ssa is None else args.batch_coupled_ssa == "true",
                     alternate_ssa=args.alternate_ssa, grad_checkpointing=args.grad_checkpointing,
                     compile_mode=args.compile_mode)


if __name__ == "__main__":
    main()
