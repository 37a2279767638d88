"""One LIF neuron's speed: `lif_bandwidth()` times its forward and backward calls (and, on CUDA with CuPy, the
fused kernels alone) against the bytes they must move; `format_lif()` prints the result."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch

from ..errors import UserError
from ..neurons import LIF
from .device import check_device, cpu_name

LIF_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# the largest LIF input of msvit_cifar_4_384 at the recipe's batch: [T, B, C, H, W] of the first stage
LIF_SHAPE = (4, 64, 192, 32, 32)
# nominal DRAM bandwidth (GB/s) of GPUs this is likely to meet, by a substring of torch's device name
NOMINAL_GBPS = {"H200": 4800, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                "A100 80GB PCIe": 1935, "A100": 1555, "V100": 900, "RTX 4090": 1008, "RTX 3090": 936}


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
