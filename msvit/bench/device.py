"""The hardware a benchmark runs on: whether the requested device and LIF backend can run, and the CPU's name."""
from __future__ import annotations

import platform

import torch

from ..errors import UserError
from ..neurons import BACKENDS, cupy_unavailable_reason


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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
