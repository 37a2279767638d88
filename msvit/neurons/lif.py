"""Spiking neurons: spikingjelly's multi-step LIF with an automatic CuPy/torch backend choice.

Every neuron in MSViT and QKFormer is the same leaky integrate-and-fire unit
(tau 2, hard reset to 0, detached reset, sigmoid surrogate with alpha 4); only
the threshold differs. `tau` is an argument for the releases that change it
(Spikingformer's DVS models use 1.5); every backend takes it per call. On the GPU the CuPy backend runs the loop over time as one
CUDA kernel (`msvit.neurons.lif_cuda`); the torch backend runs everywhere, on CPU as a C
kernel (`msvit.neurons.lif_cpu`) where a compiler works, else as one autograd node of torch
operations. `LIF.fused = False` switches to spikingjelly 0.0.0.0.14's own node (its
per-step torch loop or its CuPy kernel), the reference all are tested against.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
from types import ModuleType
from typing import Iterator

import torch
from torch import nn

from . import lif_cpu
from .lif_cuda import SUPPORTED_DTYPES, CupyLIF
from .spike_bits import mark_spikes
from .surrogates import DSPIKE_REGION, SURROGATES, Dspike
from ..errors import ConfigError, UserError


@contextlib.contextmanager
def quiet_spikingjelly() -> Iterator[None]:
    """The block's imports of spikingjelly neither print nor change the logging setup.

    spikingjelly 0.0.0.0.14 reports its missing optional packages at import ("No module named 'cupy'",
    "'lava'") with `logging.info` on the root logger, which (as `logging.info` does when the root logger has no
    handler) also calls `logging.basicConfig()`: a stderr handler left on the root logger of whoever imports
    msvit, so a program that configures its own logging (timm's scripts) printed each line twice. A temporary
    handler on the root logger stops that call, and `logging.disable` the INFO lines themselves."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(guard)


def import_spikingjelly(name: str) -> ModuleType:
    """`importlib.import_module(name)` for a spikingjelly module, quietly (`quiet_spikingjelly`): every import
    of spikingjelly in msvit goes through here or through this module's own imports below."""
    with quiet_spikingjelly():
        return importlib.import_module(name)


sj_neuron = import_spikingjelly("spikingjelly.clock_driven.neuron")
surrogate = import_spikingjelly("spikingjelly.clock_driven.surrogate")
MemoryModule = import_spikingjelly("spikingjelly.clock_driven.base").MemoryModule

__all__ = ["LIF", "BACKENDS", "KINDS", "make_surrogate", "BackendUnavailableError", "cupy_unavailable_reason", "implementation", "reset_neurons",
           "set_neuron_backend", "import_spikingjelly", "quiet_spikingjelly"]

BACKENDS = ("auto", "cupy", "torch")
KINDS = ("lif", "if", "plif")
TAU = 2.0
V_RESET = 0.0
SURROGATE_ALPHA = 4.0


def make_surrogate(name: str, alpha: float = SURROGATE_ALPHA, gamma: float = 2.5,
                   region: float = DSPIKE_REGION) -> nn.Module:
    """The surrogate `name`: spikingjelly's `Sigmoid(alpha, spiking=True)` or `Dspike(gamma, region)`."""
    if name == "sigmoid":
        return surrogate.Sigmoid(alpha=float(alpha), spiking=True)
    if name == "dspike":
        return Dspike(gamma, region)
    raise ConfigError(f"unknown surrogate {name!r}; choose one of {', '.join(SURROGATES)}")


@functools.lru_cache(maxsize=None)
def cupy_unavailable_reason() -> str | None:
    """Why the CuPy backend cannot run here, or None when it can.

    spikingjelly swallows CuPy's import error and only says "not installed";
    this imports CuPy itself so the real error reaches the user.
    """
    if not torch.cuda.is_available():
        return "no CUDA device is available to torch"
    try:
        importlib.import_module("cupy")
    except Exception as exc:  # any import failure: missing wheel, CUDA mismatch, ...
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        return (f"cupy could not be imported ({detail}); install the wheel matching torch's CUDA "
                f"build (torch {torch.version.cuda}): cupy-cuda12x or cupy-cuda13x")
    if sj_neuron.neuron_kernel is None:
        return "spikingjelly failed to load its CuPy kernels (spikingjelly.clock_driven.neuron_kernel)"
    return None


def implementation(model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Which LIF code the neurons of `model` run on `device` for `dtype` inputs, in words (for run headers)."""
    neurons = [m for m in model.modules() if isinstance(m, LIF)]
    if not neurons:
        return "no LIF neurons"
    requested = {m.requested_backend for m in neurons}
    if not all(m.fused for m in neurons):
        return "spikingjelly's node (reference path)"
    if not all(m.kernels_apply for m in neurons):
        return "spikingjelly's per-step torch loop (neuron settings outside the fused kernels)"
    if device.type == "cuda" and requested != {"torch"} and cupy_unavailable_reason() is None:
        return "CuPy kernel" if dtype in SUPPORTED_DTYPES else "torch operations (dtype not in the CuPy kernel)"
    if device.type == "cpu" and dtype == torch.float32:
        reason = lif_cpu.unavailable_reason()
        return "C kernel" if reason is None else f"torch operations (C kernel unavailable: {reason})"
    return "torch operations"


class _FusedLIF(torch.autograd.Function):
    """The torch backend's LIF loop as one autograd node (hard reset to 0, detached reset).

    Forward charges exactly as spikingjelly does (`h = v + (x - v) / tau`, the same three roundings;
    a spike where `h >= thr`, which equals its `h - thr >= 0`; reset `v = h * (1 - s)`), so spikes
    are bit-identical. Backward is the BPTT that autograd derives from spikingjelly's per-step graph,
    with the surrogate slopes computed once over all steps, in place over the charge buffer: the
    sequential part is an add and a multiply per step. On CPU most of the cost of such elementwise
    work is first touching freshly allocated large buffers, so every step writes into preallocated
    memory and the only new sequence-sized tensors are the charge/slope buffer, the fired flags (kept
    for backward as booleans, not as spikes of the input's dtype), the spikes and, in backward, the
    input gradient. No membrane sequence is stored.
    """

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v_init: torch.Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        h_seq = torch.empty_like(x_seq)
        fired = torch.empty(x_seq.shape, dtype=torch.bool, device=x_seq.device)
        v, v_next = v_init, torch.empty_like(x_seq[0])
        for t in range(x_seq.shape[0]):
            h = torch.sub(x_seq[t], v, out=h_seq[t]).div_(tau).add_(v)  # v + (x - v) / tau
            torch.ge(h, v_threshold, out=fired[t])
            v = v_next.copy_(h).masked_fill_(fired[t], V_RESET)
        spikes = fired.to(x_seq.dtype)
        # spikingjelly's sigmoid surrogate, d spike / d h = alpha * sg * (1 - sg) with
        # sg = sigmoid(alpha * (h - thr)); stored divided by tau, the factor every input gradient needs
        sg = h_seq.sub_(v_threshold).mul_(alpha).sigmoid_()
        slope = sg.addcmul_(sg, sg, value=-1.0).mul_(alpha / tau)
        ctx.save_for_backward(slope, fired)  # where it fired as booleans: a quarter of float32 spikes' memory
        ctx.tau = tau
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, grad_v_last: torch.Tensor):
        slope, fired = ctx.saved_tensors
        tau = ctx.tau
        decay = 1.0 - 1.0 / tau                      # d h_t / d v_{t-1}
        grad_x = torch.mul(grad_spikes, slope)       # through each step's own spike, already / tau
        carried = grad_v_last / tau                  # (gradient reaching v_t from later steps) / tau
        for t in range(grad_x.shape[0] - 1, -1, -1):
            # the detached reset v_t = h_t (1 - s_t) passes it on only where step t did not fire
            g = grad_x[t].add_(carried.masked_fill_(fired[t], 0.0))
            torch.mul(g, decay, out=carried)
        return grad_x, carried.mul_(tau), None, None, None


class LIF(sj_neuron.MultiStepLIFNode):
    """Multi-step spiking neuron on `[T, ...]` input with the backend chosen per call.

    `kind` 'lif' (the releases'), 'if' (spikingjelly's `IFNode` charge, `v + x`: no leak, `tau` unused) or 'plif'
    (spikingjelly's `ParametricLIFNode` charge with a learnable `w`, `1 / tau = sigmoid(w)`, started at `tau`;
    `w` is the only state_dict entry a neuron adds). `surrogate_function` (default spikingjelly's sigmoid,
    alpha 4) and `detach_reset` as in spikingjelly. The fused kernels run where they compute the same thing
    (`kernels_apply`: LIF, sigmoid surrogate, detached reset), else spikingjelly's per-step torch loop.
    `v_threshold` is a plain attribute, not one of spikingjelly's memories: its `reset()` would restore the
    value the node was built with, and `msvit.reset_neurons` resets before every batch.

    `backend='auto'` runs the CuPy kernel for CUDA tensors when CuPy works and the
    torch backend otherwise; `'cupy'` fails here, at construction, with the reason
    when it cannot work; `'torch'` always uses the torch backend.
    """

    def __init__(self, v_threshold: float = 1.0, backend: str = "auto", tau: float = TAU, *, kind: str = "lif",
                 surrogate_function: nn.Module | None = None, detach_reset: bool = True) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown neuron kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind != "if" and not tau > 1.0:  # 1 / tau is the share of the input charged each step
            raise ConfigError(f"LIF tau must be greater than 1, got {tau}")
        if surrogate_function is None:
            surrogate_function = surrogate.Sigmoid(alpha=SURROGATE_ALPHA, spiking=True)
        super().__init__(tau=float(tau), decay_input=True, v_threshold=v_threshold, v_reset=V_RESET,
                         surrogate_function=surrogate_function, detach_reset=bool(detach_reset), backend="torch")
        delattr(self, "v_threshold")  # out of spikingjelly's memories, which reset() would restore
        self.v_threshold = float(v_threshold)
        self.kind = kind
        if kind == "plif":
            self.w = nn.Parameter(torch.as_tensor(-math.log(float(tau) - 1.0)))  # spikingjelly's init_tau
        self.requested_backend = validate_backend(backend)

    # False: spikingjelly's own node, its per-step torch loop or its CuPy kernel (the reference path)
    fused = True
    # inside torch.compile: "kernel" runs the C kernel (CPU, float32) as custom operators, one graph with the
    # kernel opaque to inductor; "loop" runs spikingjelly's per-step torch loop, which inductor generates and
    # fuses with the layers around it. CUDA inputs always take the loop there (the CuPy kernel breaks graphs).
    compiled_as = "loop"

    @property
    def kernels_apply(self) -> bool:
        """Whether the fused kernels (and spikingjelly's CuPy LIF kernel) compute this neuron: LIF charge,
        spikingjelly's sigmoid surrogate, detached hard reset (any tau, threshold and alpha)."""
        return (self.kind == "lif" and self.detach_reset and type(self.surrogate_function) is surrogate.Sigmoid
                and self.surrogate_function.spiking)

    def neuronal_charge(self, x: torch.Tensor) -> None:
        """One step's charge on spikingjelly's torch loop: its LIF, IF or parametric LIF equation."""
        if self.kind == "if":
            sj_neuron.IFNode.neuronal_charge(self, x)
        elif self.kind == "plif":
            sj_neuron.ParametricLIFNode.neuronal_charge(self, x)
        else:
            super().neuronal_charge(x)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.kernels_apply:  # spikingjelly's torch loop: its CuPy kernel is the LIF's, sigmoid only
            self.backend = "torch"
            return super().forward(x_seq)
        traced_loop = torch.compiler.is_compiling() and not self._kernel_in_graph(x_seq)
        # in a compiled graph spikingjelly's loop must be its torch one: its CuPy kernel would break the graph
        self.backend = "torch" if traced_loop else self._resolve(x_seq)
        if not self.fused or traced_loop:
            return super().forward(x_seq)
        if isinstance(self.v, torch.Tensor):
            # the one check for every fused path: the kernels index v_init by x_seq's shape and would overrun
            if self.v.shape != x_seq.shape[1:]:
                raise ValueError(f"LIF membrane of shape {tuple(self.v.shape)} cannot continue on input "
                                 f"{tuple(x_seq.shape)}; call msvit.reset_neurons(model) between batches")
            v_init = self.v
        else:
            v_init = torch.full_like(x_seq[0], self.v)
        spikes, self.v = self._function(x_seq).apply(x_seq, v_init, self.tau, self.v_threshold,
                                                      self.surrogate_function.alpha)
        mark_spikes(spikes)
        return spikes

    def _kernel_in_graph(self, x_seq: torch.Tensor) -> bool:
        """Whether a compiled graph runs the C kernel's custom operators for this input (else the torch loop)."""
        return (self.compiled_as == "kernel" and x_seq.device.type == "cpu" and x_seq.dtype == torch.float32
                and lif_cpu.available())

    def _function(self, x_seq: torch.Tensor) -> type[torch.autograd.Function]:
        """The fused implementation for this input: the CuPy kernel (float32/float16 on CUDA), the C
        kernel (float32 on CPU, where a compiler works; as custom operators inside torch.compile), else the
        loop of torch operations."""
        if torch.compiler.is_compiling():  # reached only where _kernel_in_graph
            return lif_cpu.CpuLIFOp
        if self.backend == "cupy":
            return CupyLIF if x_seq.dtype in SUPPORTED_DTYPES else _FusedLIF
        if x_seq.device.type == "cpu" and x_seq.dtype == torch.float32 and lif_cpu.available():
            return lif_cpu.CpuLIF
        return _FusedLIF

    def _resolve(self, x: torch.Tensor) -> str:
        if self.requested_backend != "auto":
            return self.requested_backend
        return "cupy" if x.is_cuda and cupy_unavailable_reason() is None else "torch"

    def extra_repr(self) -> str:
        kind = "" if self.kind == "lif" else f"kind={self.kind}, "
        tau = "" if self.kind == "if" else f", tau={self.tau}"
        rest = "" if self.detach_reset else ", detach_reset=False"  # the surrogate shows as the child module
        return f"{kind}v_threshold={self.v_threshold}{tau}, backend={self.requested_backend}{rest}"


class BackendUnavailableError(UserError, RuntimeError):
    """The CuPy backend was asked for where it cannot run."""


def validate_backend(backend: str) -> str:
    """Check a backend name (ConfigError), and that CuPy can run when it is asked for explicitly
    (BackendUnavailableError, naming why); both are one-line user errors."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cupy":
        reason = cupy_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"neuron backend 'cupy' cannot run: {reason}; "
                                          f"set neuron_backend to auto or torch")
    return backend


def set_neuron_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every LIF neuron of `model` to `backend` ('auto', 'cupy' or 'torch')."""
    backend = validate_backend(backend)
    for m in model.modules():
        if isinstance(m, LIF):
            m.requested_backend = backend
    return model


def reset_neurons(model: nn.Module) -> None:
    """Return every stateful spiking module of `model` to its initial (zero) membrane state."""
    for m in model.modules():
        if isinstance(m, MemoryModule):
            m.reset()
