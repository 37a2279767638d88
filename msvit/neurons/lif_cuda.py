"""The CuPy backend's LIF: one fused CUDA kernel over time for forward and one for backward.

spikingjelly's CuPy node computes the same thing, but around its kernel it copies five scalars to
the GPU on every call (host syncs), zero-fills and concatenates buffers, and returns the spikes as a
view of one buffer that also holds the membrane and charge sequences: whatever keeps the spikes for
backward (the next convolution) keeps three times their size alive. Here the scalars are kernel
arguments, the buffers are uninitialised and separate, only the charge `h` is saved for backward
(where it fired is `h >= threshold` again, so no spike sequence is kept) and no membrane sequence is
stored. Arithmetic follows the torch backend operation by operation (`h = v + (x - v) / tau`, each
step rounded to the tensor's dtype as torch rounds it), so spikes are identical to it in float32 and
float16; the backward works in float32. In float16, where the neuron count per step is even and the
tensors 4-byte aligned (nearly always), each thread runs two adjacent neurons and loads and stores them
as one `__half2`, as wide per warp as float32's accesses.

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

# The helpers, once per module: `scalar_t` is float or __half, the dtype whose rounding the arithmetic
# follows; `rnd` rounds a float result to scalar_t and back, as a torch elementwise op on a tensor of that
# dtype would. `lif_step` and `lif_grad_step` are one neuron's time step. `load` and `store` move LANES
# neurons between memory and floats: one float or __half, or two neurons as one __half2.
_HELPERS = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ void load(const float v, float* out) { out[0] = v; }
__device__ __forceinline__ void load(const __half v, float* out) { out[0] = __half2float(v); }
__device__ __forceinline__ void load(const __half2 v, float* out) {
    const float2 f = __half22float2(v);
    out[0] = f.x;
    out[1] = f.y;
}
__device__ __forceinline__ void store(float* p, const float* in) { *p = in[0]; }
__device__ __forceinline__ void store(__half* p, const float* in) { *p = __float2half_rn(in[0]); }
__device__ __forceinline__ void store(__half2* p, const float* in) { *p = __floats2half2_rn(in[0], in[1]); }
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
"""

# The kernels, once per variant: each thread runs LANES adjacent neurons, moved as one `vec_t`; `count` is
# the number of vec_t per step (the neurons / LANES).
_KERNELS = r"""
extern "C" __global__ void msvit_lif_forward_SUFFIX(
    const vec_t* __restrict__ x, const vec_t* __restrict__ v_init, vec_t* __restrict__ h_out,
    vec_t* __restrict__ spikes, vec_t* __restrict__ v_last,
    const long long count, const int steps, const float tau, const float threshold)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float v[LANES], xs[LANES], h[LANES], s[LANES];
    load(v_init[i], v);
    for (int t = 0; t < steps; ++t) {
        const long long k = t * count + i;
        load(x[k], xs);
        for (int l = 0; l < LANES; ++l) {
            bool fire;
            h[l] = lif_step(xs[l], v[l], tau, threshold, fire);
            s[l] = fire ? 1.0f : 0.0f;
        }
        store(h_out + k, h);
        store(spikes + k, s);
    }
    store(v_last + i, v);
}

extern "C" __global__ void msvit_lif_backward_SUFFIX(
    const vec_t* __restrict__ grad_spikes, const vec_t* __restrict__ grad_v_last,
    const vec_t* __restrict__ h_seq, vec_t* __restrict__ grad_x, vec_t* __restrict__ grad_v_init,
    const long long count, const int steps, const float tau, const float threshold, const float alpha)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float grad_v[LANES], grad_s[LANES], h[LANES], grad[LANES];
    load(grad_v_last[i], grad_v);
    for (int t = steps - 1; t >= 0; --t) {
        const long long k = t * count + i;
        load(grad_spikes[k], grad_s);
        load(h_seq[k], h);
        for (int l = 0; l < LANES; ++l) grad[l] = lif_grad_step(grad_s[l], h[l], grad_v[l], tau, threshold, alpha);
        store(grad_x + k, grad);
    }
    store(grad_v_init + i, grad_v);
}
"""

# dtype -> (scalar_t, [(kernel name suffix, vec_t, LANES)]): float16 also moves neurons in pairs (__half2),
# a warp then reading and writing 128 contiguous bytes per access instead of 64; that needs an even neuron
# count per step and 4-byte aligned tensors (`_paired` checks both)
_TYPES = {torch.float32: ("float", [("fp32", "float", 1)]),
          torch.float16: ("__half", [("fp16", "__half", 1), ("fp16x2", "__half2", 2)])}
SUPPORTED_DTYPES = tuple(_TYPES)


def source(dtype: torch.dtype) -> str:
    """The CUDA source of the kernels for one dtype (float16's has both the single and the paired kernels)."""
    scalar, variants = _TYPES[dtype]
    kernels = [_KERNELS.replace("SUFFIX", suffix).replace("vec_t", vec).replace("LANES", str(lanes))
               for suffix, vec, lanes in variants]
    return _HELPERS.replace("scalar_t", scalar) + "".join(kernels)


def kernel_names(dtype: torch.dtype) -> list[str]:
    return [f"msvit_lif_{direction}_{suffix}" for suffix, _, _ in _TYPES[dtype][1]
            for direction in ("forward", "backward")]


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
    lanes = 2 if _paired(*tensors) else 1
    suffix = next(suffix for suffix, _, n in _TYPES[dtype][1] if n == lanes)
    return _functions(dtype, tensors[0].device.index)[f"msvit_lif_{direction}_{suffix}"], neurons // lanes


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

