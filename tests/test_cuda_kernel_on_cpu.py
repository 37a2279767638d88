"""The CuPy backend's CUDA kernels run on the CPU: their source compiled as C++ against a small stand-in for
`cuda_fp16.h` (the CUDA built-ins as plain C++, `__half` as `_Float16`), one call per CUDA thread.

This checks, without a GPU, what the kernels compute and how `CupyLIF` picks and launches them (the scalar
kernels, and float16's paired `__half2` kernels where the neuron count is even and the tensors aligned)
against spikingjelly's per-step node. `tests/test_gpu.py` runs the same kernels through CuPy on a GPU.
"""
import contextlib
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from msvit.neurons import lif_cuda
from msvit.neurons import LIF

# the CUDA names the kernels use, for one host thread standing in for every CUDA thread in turn
CUDA_STAND_IN = r"""
#pragma once
#include <math.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct CudaIndex { unsigned x, y, z; };
extern "C" { CudaIndex blockIdx, threadIdx, blockDim; }
typedef _Float16 __half;
struct __half2 { __half x, y; };
struct float2 { float x, y; };
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline __half2 __floats2half2_rn(float a, float b) { return {(__half)a, (__half)b}; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
"""


class EmulatedKernel:
    """Called as CuPy calls a kernel, `kernel(grid, block, args)`: runs every (block, thread) in turn."""

    def __init__(self, library: ctypes.CDLL, name: str, launched: list[str]) -> None:
        self.function, self.name, self.launched = getattr(library, name), name, launched
        self.index = {axis: ctypes.c_uint.in_dll(library, axis) for axis in ("blockIdx", "threadIdx", "blockDim")}

    def __call__(self, grid: tuple[int], block: tuple[int], args: tuple) -> None:
        self.launched.append(self.name)
        converted = [ctypes.c_void_p(a) if isinstance(a, int) else
                     {np.int64: ctypes.c_longlong, np.int32: ctypes.c_int, np.float32: ctypes.c_float}[type(a)](a)
                     for a in args]
        self.index["blockDim"].value = block[0]
        for b in range(grid[0]):
            self.index["blockIdx"].value = b
            for t in range(block[0]):
                self.index["threadIdx"].value = t
                self.function(*converted)


@pytest.fixture(scope="module")
def cpu_libraries(tmp_path_factory):
    """One shared library per dtype, built from `lif_cuda.source(dtype)`."""
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        pytest.skip(f"needs a C++ compiler ({compiler} not found)")
    folder = tmp_path_factory.mktemp("cuda-on-cpu")
    (folder / "cuda_fp16.h").write_text(CUDA_STAND_IN)
    libraries = {}
    for dtype in lif_cuda.SUPPORTED_DTYPES:
        name = str(dtype).split(".")[-1]
        (folder / f"{name}.cpp").write_text(lif_cuda.source(dtype))
        built = folder / f"{name}.so"
        proc = subprocess.run([compiler, "-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", f"-I{folder}",
                               str(folder / f"{name}.cpp"), "-o", str(built)], capture_output=True, text=True)
        if proc.returncode != 0 and "_Float16" in proc.stderr:
            pytest.skip(f"{compiler} has no _Float16 to stand in for __half")
        assert proc.returncode == 0, proc.stderr
        libraries[dtype] = ctypes.CDLL(str(built))
    return libraries


@pytest.fixture
def launched(cpu_libraries, monkeypatch):
    """`CupyLIF` runs the CPU-built kernels on CPU tensors; returns the list of kernel names it launches."""
    names: list[str] = []

    def functions(dtype, device_index):
        return {name: EmulatedKernel(cpu_libraries[dtype], name, names) for name in lif_cuda.kernel_names(dtype)}

    monkeypatch.setattr(lif_cuda, "_functions", functions)
    monkeypatch.setattr(lif_cuda, "_on_torch_stream", lambda device: contextlib.nullcontext())  # no CUDA stream
    return names


def _run_twice(lif, x_seq, split):
    """Two calls in a row, the second starting from the membrane the first leaves."""
    return torch.cat([lif(x_seq[:split]), lif(x_seq[split:])])


def _cupy_lif(x_seq, split, tau):
    """The spikes and final membrane of the CuPy kernels, called as `LIF` calls them, and what they save."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spikes, v = lif_cuda.CupyLIF.apply(x_seq[:split], torch.zeros_like(x_seq[0]), tau, 1.0, 4.0)
        more, v = lif_cuda.CupyLIF.apply(x_seq[split:], v, tau, 1.0, 4.0)
    return torch.cat([spikes, more]), v, saved


# (shape, storage offset in elements, float16 kernels expected forward and backward): 666 neurons per step move
# as pairs over two blocks of 256 threads; an odd count cannot, nor can an input view that starts at an odd
# element (not 4-byte aligned), though its gradients, allocated by autograd, can
CASES = [((5, 2, 333), 0, ("fp16x2", "fp16x2")), ((4, 3, 5, 7), 0, ("fp16", "fp16")),
         ((5, 2, 333), 1, ("fp16", "fp16x2")), ((4, 2, 3, 37), 0, ("fp16x2", "fp16x2"))]


@pytest.mark.parametrize("tau", [2.0, 1.5])  # 1.5: Spikingformer's DVS neurons
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape,offset,expected", CASES, ids=["pairs", "odd-count", "misaligned", "pairs-4d"])
def test_cuda_kernels_match_spikingjelly_node(launched, dtype, shape, offset, expected, tau):
    torch.manual_seed(0)
    values = torch.randn(shape) * 1.5 + 0.8
    leaf = torch.empty(values.numel() + offset, dtype=dtype)[offset:].view(shape)  # offset 1: a misaligned view
    leaf.copy_(values).requires_grad_()
    weights = torch.randn(shape)
    split = shape[0] // 2

    spikes, v, saved = _cupy_lif(leaf, split, tau)
    ((spikes.float() * weights).sum() + 0.3 * v.float().sum()).backward()

    reference = LIF(backend="torch", tau=tau)
    reference.fused = False  # spikingjelly's own per-step node
    ref_leaf = leaf.detach().clone().requires_grad_()
    ref_spikes = _run_twice(reference, ref_leaf, split)
    ((ref_spikes.float() * weights).sum() + 0.3 * reference.v.float().sum()).backward()

    forward, backward = expected if dtype == torch.float16 else ("fp32", "fp32")
    assert launched == [f"msvit_lif_forward_{forward}"] * 2 + [f"msvit_lif_backward_{backward}"] * 2
    assert spikes.dtype == dtype and 0.05 < spikes.float().mean() < 0.95  # the neurons fire, and not always
    assert torch.equal(spikes, ref_spikes)
    assert torch.equal(v, reference.v)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=1e-2)
    assert torch.allclose(leaf.grad.float(), ref_leaf.grad.float(), **tol)
    assert leaf.grad.abs().amax() > 0.1  # the surrogate gradient flows
    # each call keeps only its charge h for backward (where it fired is h >= threshold), no spike sequence
    assert [tuple(t.shape) for t in saved] == [tuple(leaf[:split].shape), tuple(leaf[split:].shape)]
    assert not any(((t == 0) | (t == 1)).all() for t in saved)


def test_paired_kernels_only_where_pairs_are_aligned():
    half = torch.zeros(4, 6, dtype=torch.float16)
    assert lif_cuda._paired(half, half[0])
    assert not lif_cuda._paired(half.float(), half[0].float())                      # float32 moves singly
    assert not lif_cuda._paired(half[:, :5].contiguous(), half[0, :5].contiguous())  # an odd count per step
    assert not lif_cuda._paired(torch.zeros(25, dtype=torch.float16)[1:].view(4, 6), half[0])  # 2-byte aligned
