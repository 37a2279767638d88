"""The CuPy backend's LIF: one fused CUDA kernel over time for forward and one for backward.

spikingjelly's CuPy node computes the same thing, but around its kernel it copies five scalars to
the GPU on every call (host syncs), zero-fills and concatenates buffers, and returns the spikes as a
view of one buffer that also holds the membrane and charge sequences: whatever keeps the spikes for
backward (the next convolution) keeps three times their size alive. Here the scalars are kernel
arguments, the buffers are uninitialised and separate, only the charge `h` is saved for backward
and no membrane sequence is stored. Arithmetic follows the torch backend operation by operation
(`h = v + (x - v) / tau`, each step rounded to the tensor's dtype as torch rounds it), so spikes
are identical to it in float32 and float16; the backward works in float32.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["CupyLIF", "SUPPORTED_DTYPES"]

_THREADS = 256

# `scalar_t` is float or __half; `load`/`store` convert to/from float, `rnd` rounds a float result
# to scalar_t and back, as a torch elementwise op on a tensor of that dtype would.
_SOURCE = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ float load(const float v) { return v; }
__device__ __forceinline__ float load(const __half v) { return __half2float(v); }
__device__ __forceinline__ void store(float* p, const float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, const float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ float rnd(const float v, const float*) { return v; }
__device__ __forceinline__ float rnd(const float v, const __half*) { return __half2float(__float2half_rn(v)); }

extern "C" __global__ void msvit_lif_forward_SUFFIX(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ v_init, scalar_t* __restrict__ h_out,
    scalar_t* __restrict__ spikes, scalar_t* __restrict__ v_last,
    const long long neurons, const int steps, const float tau, const float threshold)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= neurons) return;
    const scalar_t* tag = x;
    float v = load(v_init[i]);
    for (int t = 0; t < steps; ++t) {
        const long long k = t * neurons + i;
        // no contraction into fma: the same roundings as torch's sub, div and add
        const float d = rnd(__fdiv_rn(rnd(__fsub_rn(load(x[k]), v), tag), tau), tag);
        const float h = rnd(__fadd_rn(v, d), tag);
        const bool fire = h >= threshold;
        store(h_out + k, h);
        store(spikes + k, fire ? 1.0f : 0.0f);
        v = fire ? 0.0f : h;
    }
    store(v_last + i, v);
}

extern "C" __global__ void msvit_lif_backward_SUFFIX(
    const scalar_t* __restrict__ grad_spikes, const scalar_t* __restrict__ grad_v_last,
    const scalar_t* __restrict__ h_seq, const scalar_t* __restrict__ spikes,
    scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_v_init,
    const long long neurons, const int steps, const float tau, const float threshold, const float alpha)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= neurons) return;
    const float decay = 1.0f - 1.0f / tau;  // d h_t / d v_{t-1}
    float grad_v = load(grad_v_last[i]);    // gradient reaching v_t from later steps
    for (int t = steps - 1; t >= 0; --t) {
        const long long k = t * neurons + i;
        // sigmoid surrogate: d spike / d h = alpha * sg * (1 - sg), sg = sigmoid(alpha * (h - threshold))
        const float sg = 1.0f / (1.0f + expf(-alpha * (load(h_seq[k]) - threshold)));
        const float grad_h = load(grad_spikes[k]) * alpha * sg * (1.0f - sg)
                             + grad_v * (1.0f - load(spikes[k]));  // detached hard reset: v_t = h_t (1 - s_t)
        store(grad_x + k, grad_h / tau);
        grad_v = grad_h * decay;
    }
    store(grad_v_init + i, grad_v);
}
"""

_TYPES = {torch.float32: ("float", "fp32"), torch.float16: ("__half", "fp16")}
SUPPORTED_DTYPES = tuple(_TYPES)


@functools.lru_cache(maxsize=None)
def _kernels(dtype: torch.dtype, device_index: int) -> tuple:
    """The compiled (forward, backward) kernels for one dtype on one device (CuPy caches the binary)."""
    import cupy

    ctype, suffix = _TYPES[dtype]
    source = _SOURCE.replace("scalar_t", ctype).replace("SUFFIX", suffix)
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source)
        return module.get_function(f"msvit_lif_forward_{suffix}"), module.get_function(f"msvit_lif_backward_{suffix}")


def _launch(kernel, device: torch.device, neurons: int, *args) -> None:
    import cupy

    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        kernel(((neurons + _THREADS - 1) // _THREADS,), (_THREADS,), args)


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
        steps, neurons = x_seq.shape[0], v_init.numel()
        h_seq, spikes = torch.empty_like(x_seq), torch.empty_like(x_seq)
        v_last = torch.empty_like(v_init)
        forward_kernel, _ = _kernels(x_seq.dtype, x_seq.device.index)
        _launch(forward_kernel, x_seq.device, neurons, x_seq.data_ptr(), v_init.data_ptr(), h_seq.data_ptr(),
                spikes.data_ptr(), v_last.data_ptr(), np.int64(neurons), np.int32(steps), np.float32(tau), np.float32(v_threshold))
        ctx.save_for_backward(h_seq, spikes)
        ctx.constants = (tau, v_threshold, alpha)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, grad_v_last: torch.Tensor):
        h_seq, spikes = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.constants
        grad_spikes = grad_spikes.to(h_seq.dtype).contiguous()
        grad_v_last = grad_v_last.to(h_seq.dtype).contiguous()
        grad_x, grad_v_init = torch.empty_like(h_seq), torch.empty_like(grad_v_last)
        _, backward_kernel = _kernels(h_seq.dtype, h_seq.device.index)
        neurons = grad_v_last.numel()
        _launch(backward_kernel, h_seq.device, neurons, grad_spikes.data_ptr(), grad_v_last.data_ptr(),
                h_seq.data_ptr(), spikes.data_ptr(), grad_x.data_ptr(), grad_v_init.data_ptr(), np.int64(neurons),
                np.int32(h_seq.shape[0]), np.float32(tau), np.float32(v_threshold), np.float32(alpha))
        return grad_x, grad_v_init, None, None, None

