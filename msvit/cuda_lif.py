"""The CuPy backend's LIF: one fused CUDA kernel over time for forward and one for backward.

spikingjelly's CuPy node computes the same thing, but around its kernel it copies five scalars to
the GPU on every call (host syncs), zero-fills and concatenates buffers, and returns the spikes as a
view of one buffer that also holds the membrane and charge sequences: whatever keeps the spikes for
backward (the next convolution) keeps three times their size alive. Here the scalars are kernel
arguments, the buffers are uninitialised and separate, only the charge `h` is saved for backward
(where it fired is `h >= threshold` again, so no spike sequence is kept) and no membrane sequence is stored. Arithmetic follows the torch backend operation by operation
(`h = v + (x - v) / tau`, each step rounded to the tensor's dtype as torch rounds it), so spikes
are identical to it in float32 and float16; the backward works in float32. In float16, where the
neuron count per step is even and the tensors 4-byte aligned (nearly always), each thread runs two
adjacent neurons and loads and stores them as one `__half2`, as wide per warp as float32's accesses.

`tests/test_cuda_kernel_on_cpu.py` compiles this source as C++ and runs it on the CPU; `tests/test_gpu.py`
runs it through CuPy on a GPU.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["CupyLIF", "SUPPORTED_DTYPES", "kernel_names", "source"]

_THREADS = 256

# `scalar_t` is float or __half; `load`/`store` convert to/from float, `rnd` rounds a float result
# to scalar_t and back, as a torch elementwise op on a tensor of that dtype would. `lif_step` and
# `lif_grad_step` are one neuron's time step; the kernels only differ in how they move neurons.
_SOURCE = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ float load(const float v) { return v; }
__device__ __forceinline__ float load(const __half v) { return __half2float(v); }
__device__ __forceinline__ void store(float* p, const float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, const float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ float rnd(const float v, const float*) { return v; }
__device__ __forceinline__ float rnd(const float v, const __half*) { return __half2float(__float2half_rn(v)); }

// charge h = v + (x - v) / tau, fire where h >= threshold, hard reset to 0: returns h, updates v
__device__ __forceinline__ float lif_step(const float x, float& v, const float tau, const float threshold, bool& fire)
{
    const scalar_t* tag = nullptr;
    // no contraction into fma: the same roundings as torch's sub, div and add
    const float d = rnd(__fdiv_rn(rnd(__fsub_rn(x, v), tag), tau), tag);
    const float h = rnd(__fadd_rn(v, d), tag);
    fire = h >= threshold;
    v = fire ? 0.0f : h;
    return h;
}

// backpropagates one step: returns d loss / d x_t; grad_v holds the gradient reaching v_t from later
// steps on entry and the one reaching v_{t-1} on return. h is the stored charge, the very value the
// forward compared, so h >= threshold tells where it fired without a stored spike sequence.
__device__ __forceinline__ float lif_grad_step(const float grad_spike, const float h, float& grad_v,
                                               const float tau, const float threshold, const float alpha)
{
    // sigmoid surrogate: d spike / d h = alpha * sg * (1 - sg), sg = sigmoid(alpha * (h - threshold))
    const float sg = 1.0f / (1.0f + expf(-alpha * (h - threshold)));
    // detached hard reset: v_t = h_t (1 - s_t), so v_t's gradient passes to h_t only where it did not fire
    const float grad_h = grad_spike * alpha * sg * (1.0f - sg) + (h >= threshold ? 0.0f : grad_v);
    grad_v = grad_h * (1.0f - 1.0f / tau);  // d h_t / d v_{t-1} = 1 - 1 / tau
    return grad_h / tau;
}

extern "C" __global__ void msvit_lif_forward_SUFFIX(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ v_init, scalar_t* __restrict__ h_out,
    scalar_t* __restrict__ spikes, scalar_t* __restrict__ v_last,
    const long long neurons, const int steps, const float tau, const float threshold)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= neurons) return;
    float v = load(v_init[i]);
    for (int t = 0; t < steps; ++t) {
        const long long k = t * neurons + i;
        bool fire;
        store(h_out + k, lif_step(load(x[k]), v, tau, threshold, fire));
        store(spikes + k, fire ? 1.0f : 0.0f);
    }
    store(v_last + i, v);
}

extern "C" __global__ void msvit_lif_backward_SUFFIX(
    const scalar_t* __restrict__ grad_spikes, const scalar_t* __restrict__ grad_v_last,
    const scalar_t* __restrict__ h_seq, scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_v_init,
    const long long neurons, const int steps, const float tau, const float threshold, const float alpha)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= neurons) return;
    float grad_v = load(grad_v_last[i]);
    for (int t = steps - 1; t >= 0; --t) {
        const long long k = t * neurons + i;
        store(grad_x + k, lif_grad_step(load(grad_spikes[k]), load(h_seq[k]), grad_v, tau, threshold, alpha));
    }
    store(grad_v_init + i, grad_v);
}
"""

# float16 only: each thread runs two adjacent neurons and moves them as one __half2, so a warp reads
# and writes 128 contiguous bytes per access instead of 64. Needs an even neuron count per step and
# 4-byte aligned tensors (`_paired` checks both); `pairs` is half the neuron count.
_PAIRED_SOURCE = r"""
extern "C" __global__ void msvit_lif_forward_fp16x2(
    const __half2* __restrict__ x, const __half2* __restrict__ v_init, __half2* __restrict__ h_out,
    __half2* __restrict__ spikes, __half2* __restrict__ v_last,
    const long long pairs, const int steps, const float tau, const float threshold)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    float2 v = __half22float2(v_init[i]);
    for (int t = 0; t < steps; ++t) {
        const long long k = t * pairs + i;
        const float2 xk = __half22float2(x[k]);
        bool fire_a, fire_b;
        const float h_a = lif_step(xk.x, v.x, tau, threshold, fire_a);
        const float h_b = lif_step(xk.y, v.y, tau, threshold, fire_b);
        h_out[k] = __floats2half2_rn(h_a, h_b);
        spikes[k] = __floats2half2_rn(fire_a ? 1.0f : 0.0f, fire_b ? 1.0f : 0.0f);
    }
    v_last[i] = __floats2half2_rn(v.x, v.y);
}

extern "C" __global__ void msvit_lif_backward_fp16x2(
    const __half2* __restrict__ grad_spikes, const __half2* __restrict__ grad_v_last,
    const __half2* __restrict__ h_seq, __half2* __restrict__ grad_x, __half2* __restrict__ grad_v_init,
    const long long pairs, const int steps, const float tau, const float threshold, const float alpha)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    float2 grad_v = __half22float2(grad_v_last[i]);
    for (int t = steps - 1; t >= 0; --t) {
        const long long k = t * pairs + i;
        const float2 grad_s = __half22float2(grad_spikes[k]), h = __half22float2(h_seq[k]);
        const float grad_a = lif_grad_step(grad_s.x, h.x, grad_v.x, tau, threshold, alpha);
        const float grad_b = lif_grad_step(grad_s.y, h.y, grad_v.y, tau, threshold, alpha);
        grad_x[k] = __floats2half2_rn(grad_a, grad_b);
    }
    grad_v_init[i] = __floats2half2_rn(grad_v.x, grad_v.y);
}
"""

_TYPES = {torch.float32: ("float", "fp32"), torch.float16: ("__half", "fp16")}
SUPPORTED_DTYPES = tuple(_TYPES)


def source(dtype: torch.dtype) -> str:
    """The CUDA source of the kernels for one dtype (float16 adds the paired kernels)."""
    ctype, suffix = _TYPES[dtype]
    return (_SOURCE + (_PAIRED_SOURCE if dtype == torch.float16 else "")).replace("scalar_t", ctype).replace("SUFFIX", suffix)


def kernel_names(dtype: torch.dtype) -> list[str]:
    suffixes = [_TYPES[dtype][1]] + (["fp16x2"] if dtype == torch.float16 else [])
    return [f"msvit_lif_{direction}_{suffix}" for suffix in suffixes for direction in ("forward", "backward")]


@functools.lru_cache(maxsize=None)
def _functions(dtype: torch.dtype, device_index: int) -> dict[str, Any]:
    """The compiled kernels for one dtype on one device, by name (CuPy caches the binary on disk)."""
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source(dtype))
        return {name: module.get_function(name) for name in kernel_names(dtype)}


def _paired(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can move these float16 tensors `[T, ...]` (or `[...]`) two neurons at a time:
    an even neuron count per step and 4-byte aligned storage (a view may start at an odd element)."""
    return (tensors[0].dtype == torch.float16 and tensors[-1].numel() % 2 == 0
            and all(t.data_ptr() % 4 == 0 for t in tensors))


def _kernel(direction: str, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, int]:
    """The kernel for `direction` ("forward"/"backward") and its neuron count argument; the last of
    `tensors` is the per-step membrane or its gradient."""
    dtype, neurons = tensors[0].dtype, tensors[-1].numel()
    paired = _paired(*tensors)
    suffix = _TYPES[dtype][1] + ("x2" if paired else "")
    return _functions(dtype, tensors[0].device.index)[f"msvit_lif_{direction}_{suffix}"], neurons // 2 if paired else neurons


@contextlib.contextmanager
def _on_torch_stream(device: torch.device) -> Iterator[None]:
    import cupy

    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        yield


def _launch(kernel: Any, device: torch.device, threads: int, *args: Any) -> None:
    with _on_torch_stream(device):
        kernel(((threads + _THREADS - 1) // _THREADS,), (_THREADS,), args)


class CupyLIF(torch.autograd.Function):
    """`spikes, v_last = CupyLIF.apply(x_seq, v_init, tau, v_threshold, alpha)` on CUDA tensors,
    `x_seq` of shape `[T, ...]` in float32 or float16, `v_init` of shape `x_seq.shape[1:]`."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v_init: torch.Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        if x_seq.dtype not in _TYPES:
            raise TypeError(f"the CuPy LIF kernel takes float32 or float16 input, got {x_seq.dtype}")
        x_seq = x_seq.contiguous()
        v_init = v_init.to(x_seq.dtype).contiguous()
        h_seq, spikes = torch.empty_like(x_seq), torch.empty_like(x_seq)
        v_last = torch.empty_like(v_init)
        kernel, count = _kernel("forward", (x_seq, v_init))
        _launch(kernel, x_seq.device, count, x_seq.data_ptr(), v_init.data_ptr(), h_seq.data_ptr(), spikes.data_ptr(),
                v_last.data_ptr(), np.int64(count), np.int32(x_seq.shape[0]), np.float32(tau), np.float32(v_threshold))
        ctx.save_for_backward(h_seq)
        ctx.constants = (tau, v_threshold, alpha)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, grad_v_last: torch.Tensor):
        (h_seq,) = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.constants
        grad_spikes = grad_spikes.to(h_seq.dtype).contiguous()
        grad_v_last = grad_v_last.to(h_seq.dtype).contiguous()
        grad_x, grad_v_init = torch.empty_like(h_seq), torch.empty_like(grad_v_last)
        kernel, count = _kernel("backward", (grad_spikes, grad_v_last))
        _launch(kernel, h_seq.device, count, grad_spikes.data_ptr(), grad_v_last.data_ptr(), h_seq.data_ptr(),
                grad_x.data_ptr(), grad_v_init.data_ptr(), np.int64(count),
                np.int32(h_seq.shape[0]), np.float32(tau), np.float32(v_threshold), np.float32(alpha))
        return grad_x, grad_v_init, None, None, None

