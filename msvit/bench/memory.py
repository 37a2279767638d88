"""The process's memory: its peak resident set size, the bytes allocated now (CUDA's allocator or glibc's heap),
and what one training forward leaves held for backward."""
from __future__ import annotations

import ctypes
import gc
import resource
from typing import Any, Callable

import torch


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
