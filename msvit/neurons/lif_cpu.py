"""The torch backend's LIF on CPU as a small C kernel, compiled on first use (like the CuPy kernel on GPU).

On CPU the LIF loop written with torch operations makes a dozen passes over memory per step and its cost
is dominated by memory traffic, not arithmetic. This kernel makes one pass forward (charge, fire, reset,
and the surrogate's input `z = alpha * (h - thr)` for backward) and, after a sigmoid of `z` into the
gradient's buffer, one pass backward. Only `z` is kept for backward: its sign says where the neurons
fired, so the spikes are not saved. It is plain C99 built with the system compiler (`$CC`, else `cc`)
into a cache folder (`$MSVIT_CACHE_DIR`, else `~/.cache/msvit`), run on torch's number of threads with
pthreads, and vectorised for AVX2 where the CPU has it (GCC on x86-64). Arithmetic is the torch path's,
operation by operation, without contraction into fused multiply-adds, so spikes are bit-identical. When
no compiler works, `kernel()` is None and the LIF uses torch operations.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["CpuLIF", "CpuLIFOp", "available", "kernel", "unavailable_reason", "lif_forward_op", "lif_backward_op"]

_log = logging.getLogger("msvit")

_SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 1024  /* neurons per block: the membrane state of a block stays in L1 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

typedef struct {
    const float *x, *v_init, *grad_spikes, *grad_v_last, *z_in;
    float *z, *spikes, *v_last, *grad_x, *grad_v_init;
    int64_t neurons, steps;
    float tau, threshold, alpha;
} Args;

typedef void (*RangeFn)(const Args *, int64_t, int64_t);

/* h = v + (x - v) / tau; spike where h >= threshold; v = 0 there, h elsewhere; z = (h - threshold) * alpha */
MULTIVERSION static void forward_range(const Args *a, int64_t begin, int64_t end) {
    float v[BLOCK];
    for (int64_t b = begin; b < end; b += BLOCK) {
        const int64_t n = end - b < BLOCK ? end - b : BLOCK;
        memcpy(v, a->v_init + b, n * sizeof(float));
        for (int64_t t = 0; t < a->steps; ++t) {
            const float *x = a->x + t * a->neurons + b;
            float *s = a->spikes + t * a->neurons + b;
            float *z = a->z ? a->z + t * a->neurons + b : 0;
            for (int64_t j = 0; j < n; ++j) {
                const float d = (x[j] - v[j]) / a->tau;
                const float h = v[j] + d;
                const int fire = h >= a->threshold;
                s[j] = fire ? 1.0f : 0.0f;
                v[j] = fire ? 0.0f : h;
                if (z) z[j] = (h - a->threshold) * a->alpha;
            }
        }
        memcpy(a->v_last + b, v, n * sizeof(float));
    }
}

/* BPTT with a detached hard reset: grad_h = grad_s * alpha * sg * (1 - sg) + (1 - s) * carried,
   grad_x = grad_h / tau, carried <- grad_h * (1 - 1 / tau); carried starts as the v_last gradient.
   grad_x holds sg = sigmoid(z) on entry. The step fired (s = 1) where z >= 0: z = (h - threshold) * alpha
   with alpha > 0 has the sign of h - threshold, and a float difference is >= 0 exactly where h >= threshold,
   so no spike sequence needs to be kept for backward. */
MULTIVERSION static void backward_range(const Args *a, int64_t begin, int64_t end) {
    float carried[BLOCK];
    const float decay = 1.0f - 1.0f / a->tau;
    for (int64_t b = begin; b < end; b += BLOCK) {
        const int64_t n = end - b < BLOCK ? end - b : BLOCK;
        memcpy(carried, a->grad_v_last + b, n * sizeof(float));
        for (int64_t t = a->steps - 1; t >= 0; --t) {
            const int64_t off = t * a->neurons + b;
            const float *gs = a->grad_spikes + off, *z = a->z_in + off;
            float *gx = a->grad_x + off;
            for (int64_t j = 0; j < n; ++j) {
                const float sg = gx[j], slope = a->alpha * sg * (1.0f - sg);
                const float gh = gs[j] * slope + (z[j] >= 0.0f ? 0.0f : carried[j]);
                gx[j] = gh / a->tau;
                carried[j] = gh * decay;
            }
        }
        memcpy(a->grad_v_init + b, carried, n * sizeof(float));
    }
}

typedef struct { RangeFn fn; const Args *args; int64_t begin, end; } Job;

static void *run_job(void *p) {
    const Job *job = (const Job *)p;
    job->fn(job->args, job->begin, job->end);
    return 0;
}

/* split the neurons into `threads` ranges of whole blocks; the calling thread takes the first */
static int run_parallel(RangeFn fn, const Args *a, int threads) {
    enum { MAX_THREADS = 256 };
    pthread_t ids[MAX_THREADS];
    Job jobs[MAX_THREADS];
    const int64_t blocks = (a->neurons + BLOCK - 1) / BLOCK;
    if (threads > blocks) threads = (int)blocks;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    int created[MAX_THREADS] = {0};
    for (int i = 0; i < threads; ++i) {
        const int64_t begin = blocks * i / threads * BLOCK, stop = blocks * (i + 1) / threads * BLOCK;
        jobs[i] = (Job){fn, a, begin, stop < a->neurons ? stop : a->neurons};
    }
    for (int i = 1; i < threads; ++i) created[i] = pthread_create(&ids[i], 0, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (int i = 1; i < threads; ++i) {
        if (created[i]) pthread_join(ids[i], 0);
        else run_job(&jobs[i]);  /* no thread could be started: run its range here */
    }
    return 0;
}

int msvit_lif_forward(const float *x, const float *v_init, float *z, float *spikes, float *v_last,
                      int64_t neurons, int64_t steps, float tau, float threshold, float alpha, int threads) {
    const Args a = {.x = x, .v_init = v_init, .z = z, .spikes = spikes, .v_last = v_last, .neurons = neurons,
                    .steps = steps, .tau = tau, .threshold = threshold, .alpha = alpha};
    return run_parallel(forward_range, &a, threads);
}

int msvit_lif_backward(const float *grad_spikes, const float *grad_v_last, const float *z, float *grad_x,
                       float *grad_v_init, int64_t neurons, int64_t steps, float tau, float alpha, int threads) {
    const Args a = {.grad_spikes = grad_spikes, .grad_v_last = grad_v_last, .z_in = z, .grad_x = grad_x,
                    .grad_v_init = grad_v_init, .neurons = neurons, .steps = steps, .tau = tau, .alpha = alpha};
    return run_parallel(backward_range, &a, threads);
}
"""

# no -ffast-math and no FMA contraction: the charge must round exactly as torch's sub, div and add
_FLAGS = ["-O3", "-std=gnu99", "-ffp-contract=off", "-fPIC", "-shared", "-pthread"]


def _cache_dir() -> Path:
    return Path(os.environ.get("MSVIT_CACHE_DIR") or Path.home() / ".cache" / "msvit")


def _compile() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or "cc"
    digest = hashlib.sha256("\0".join([_SOURCE, compiler, *_FLAGS]).encode()).hexdigest()[:16]
    library = _cache_dir() / f"cpu_lif-{digest}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:  # build aside, then rename atomically
            source, built = Path(tmp) / "cpu_lif.c", Path(tmp) / library.name
            source.write_text(_SOURCE)
            proc = subprocess.run([compiler, *_FLAGS, str(source), "-o", str(built)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {' '.join(proc.stderr.split())[:300]}")
            os.replace(built, library)
    lib = ctypes.CDLL(str(library))
    pointers = [ctypes.c_void_p] * 5
    scalars = [ctypes.c_int64, ctypes.c_int64, ctypes.c_float]
    lib.msvit_lif_forward.argtypes = [*pointers, *scalars, ctypes.c_float, ctypes.c_float, ctypes.c_int]
    lib.msvit_lif_backward.argtypes = [*pointers, *scalars, ctypes.c_float, ctypes.c_int]
    lib.msvit_lif_forward.restype = lib.msvit_lif_backward.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("MSVIT_CPU_KERNEL", "1") == "0":
        return None, "disabled by MSVIT_CPU_KERNEL=0"
    try:
        return _compile(), None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _log.warning("CPU LIF kernel unavailable (%s); using torch operations", reason)
        return None, reason


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (see `unavailable_reason`)."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why the CPU kernel cannot be used, or None when it can."""
    return _load()[1]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CpuLIF(torch.autograd.Function):
    """`spikes, v_last = CpuLIF.apply(x_seq, v_init, tau, v_threshold, alpha)` on contiguous float32
    CPU tensors (`x_seq` `[T, ...]`, `v_init` `x_seq.shape[1:]`); needs `kernel()` to be available."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v_init: torch.Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        x_seq, v_init = x_seq.contiguous(), v_init.contiguous()
        spikes, v_last = torch.empty_like(x_seq), torch.empty_like(v_init)
        z = torch.empty_like(x_seq) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        kernel().msvit_lif_forward(_ptr(x_seq), _ptr(v_init), _ptr(z), _ptr(spikes), _ptr(v_last), v_init.numel(),
                                   x_seq.shape[0], tau, v_threshold, alpha, torch.get_num_threads())
        ctx.save_for_backward(z)  # the surrogate's input, which also tells where the neurons fired
        ctx.constants = (tau, alpha)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, grad_v_last: torch.Tensor):
        (z,) = ctx.saved_tensors
        tau, alpha = ctx.constants
        return *_backward_kernel(grad_spikes, grad_v_last, z, tau, alpha), None, None, None


def _backward_kernel(grad_spikes: torch.Tensor, grad_v_last: torch.Tensor, z: torch.Tensor, tau: float,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of x_seq and v_init (BPTT through the LIF, sigmoid surrogate) from the forward's `z`."""
    grad_spikes, grad_v_last = grad_spikes.float().contiguous(), grad_v_last.float().contiguous()
    grad_x, grad_v_init = torch.sigmoid(z), torch.empty_like(grad_v_last)  # the kernel turns sg into grad_x
    kernel().msvit_lif_backward(_ptr(grad_spikes), _ptr(grad_v_last), _ptr(z), _ptr(grad_x), _ptr(grad_v_init),
                                grad_v_last.numel(), z.shape[0], tau, alpha, torch.get_num_threads())
    return grad_x, grad_v_init


# ---------------------------------------------------------------- the same kernel as operators for torch.compile
# torch.compile cannot trace into ctypes calls: inside a compiled region the kernel runs as two custom operators
# with fake-tensor (shape) and autograd registrations, so the whole model stays one graph.

@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernel can run here; a constant for torch.compile (it is decided once per process)."""
    return kernel() is not None


@torch.library.custom_op("msvit::lif_cpu_forward", mutates_args=(), device_types="cpu")
def lif_forward_op(x_seq: torch.Tensor, v_init: torch.Tensor, tau: float, v_threshold: float, alpha: float,
                   keep_surrogate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spikes, last membrane and (with `keep_surrogate`) the surrogate's input `alpha * (h - thr)`."""
    x_seq, v_init = x_seq.contiguous(), v_init.contiguous()
    spikes, v_last = torch.empty_like(x_seq), torch.empty_like(v_init)
    z = torch.empty_like(x_seq) if keep_surrogate else x_seq.new_empty(0)
    kernel().msvit_lif_forward(_ptr(x_seq), _ptr(v_init), _ptr(z) if keep_surrogate else None, _ptr(spikes),
                               _ptr(v_last), v_init.numel(), x_seq.shape[0], tau, v_threshold, alpha,
                               torch.get_num_threads())
    return spikes, v_last, z


# The shapes (and contiguous strides, as the real operators return) for torch.compile's tracing.
@lif_forward_op.register_fake
def _(x_seq, v_init, tau, v_threshold, alpha, keep_surrogate):
    z = x_seq.new_empty(x_seq.shape) if keep_surrogate else x_seq.new_empty(0)
    return x_seq.new_empty(x_seq.shape), v_init.new_empty(v_init.shape), z


@torch.library.custom_op("msvit::lif_cpu_backward", mutates_args=(), device_types="cpu")
def lif_backward_op(grad_spikes: torch.Tensor, grad_v_last: torch.Tensor, z: torch.Tensor,
                    tau: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of x_seq and v_init (BPTT through the LIF, sigmoid surrogate)."""
    return _backward_kernel(grad_spikes, grad_v_last, z.contiguous(), tau, alpha)


@lif_backward_op.register_fake
def _(grad_spikes, grad_v_last, z, tau, alpha):
    return z.new_empty(z.shape), z.new_empty(grad_v_last.shape)


def _save_for_backward(ctx, inputs, output) -> None:
    _, _, tau, _, alpha, _ = inputs
    ctx.save_for_backward(output[2])  # z
    ctx.tau, ctx.alpha = tau, alpha


def _backward(ctx, grad_spikes, grad_v_last, grad_z):
    (z,) = ctx.saved_tensors
    grad_x, grad_v_init = lif_backward_op(grad_spikes, grad_v_last, z, ctx.tau, ctx.alpha)
    return grad_x, grad_v_init, None, None, None, None


lif_forward_op.register_autograd(_backward, setup_context=_save_for_backward)


class CpuLIFOp:
    """`CpuLIF`'s interface over the custom operators: what a compiled model runs."""

    @staticmethod
    def apply(x_seq: torch.Tensor, v_init: torch.Tensor, tau: float, v_threshold: float,
              alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.is_grad_enabled() and (x_seq.requires_grad or v_init.requires_grad)
        spikes, v_last, _ = lif_forward_op(x_seq, v_init, tau, v_threshold, alpha, keep)
        return spikes, v_last
