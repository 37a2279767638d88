"""Spike tensors saved for backward as bits.

A spike tensor holds only 0 and 1, yet the convolutions, products and poolings that take one save it for
their backward in its float dtype: 4 bytes a spike in float32, 2 under AMP. While `packed_saved_spikes()` is
active, every tensor an operation saves that views a spike tensor (an output of a LIF, registered by
`mark_spikes`) is kept as bits instead and expanded back when backward needs it: the same values in 1/32
(1/16 under AMP) of the memory, for one pass over the spikes in forward and one in backward.

A marked tensor counts only while it is alive and unchanged: an in-place change bumps its version counter
and a freed storage can be reused, and either way its views are then saved as they are.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from typing import Any, Iterator

import torch

__all__ = ["mark_spikes", "pack_bits", "packed_saved_spikes", "unpack_bits"]

# multiplying 8 little-endian bytes, each 0 or 1, by this constant gathers them in the top byte (byte i -> bit 7 - i)
_GATHER = 0x8040201008040201 - (1 << 64)  # as a signed 64-bit integer
_MIN_NUMEL = 4096  # smaller tensors are not worth two extra passes

_active = threading.local()  # .spikes: {storage pointer: (weakref to the marked tensor, its version)} while active


def pack_bits(t: torch.Tensor) -> torch.Tensor:
    """The values of `t` (each 0 or 1) as bits, eight to a byte, in row-major order."""
    fired = t.reshape(-1) != 0
    if fired.numel() % 8:
        fired = torch.cat([fired, fired.new_zeros(8 - fired.numel() % 8)])
    return ((fired.view(torch.uint8).view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


@functools.lru_cache(maxsize=None)
def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(7, -1, -1, dtype=torch.uint8, device=device)


def unpack_bits(bits: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The contiguous tensor of `shape` and `dtype` that `pack_bits` packed into `bits`."""
    return ((bits.unsqueeze(1) >> _shifts(bits.device)) & 1).view(-1)[:shape.numel()].to(dtype).view(shape)


class _PackedSpikes:
    __slots__ = ("bits", "shape", "dtype")

    def __init__(self, t: torch.Tensor) -> None:
        self.bits, self.shape, self.dtype = pack_bits(t), t.shape, t.dtype


def mark_spikes(spikes: torch.Tensor) -> None:
    """Register a LIF output: while `packed_saved_spikes()` is active, what views it is saved as bits."""
    registry = getattr(_active, "spikes", None)
    if registry is not None and spikes.numel() >= _MIN_NUMEL:
        registry[spikes.untyped_storage().data_ptr()] = (weakref.ref(spikes), spikes._version)


def _is_spikes(t: torch.Tensor, registry: dict[int, tuple[weakref.ref, int]]) -> bool:
    entry = registry.get(t.untyped_storage().data_ptr()) if t.is_floating_point() else None
    if entry is None:
        return False
    marked = entry[0]()
    # alive (so its storage was not freed and reused) and not changed in place since it was marked
    return marked is not None and marked._version == entry[1]


@contextlib.contextmanager
def packed_saved_spikes(enabled: bool = True) -> Iterator[None]:
    """Within the block, tensors saved for backward that view marked spikes are kept as bits."""
    if not enabled or getattr(_active, "spikes", None) is not None:  # off, or an enclosing block already packs
        yield
        return
    registry: dict[int, tuple[weakref.ref, int]] = {}

    def pack(t: torch.Tensor) -> Any:
        return _PackedSpikes(t) if t.numel() >= _MIN_NUMEL and _is_spikes(t, registry) else t

    def unpack(saved: Any) -> torch.Tensor:
        return unpack_bits(saved.bits, saved.shape, saved.dtype) if isinstance(saved, _PackedSpikes) else saved

    _active.spikes = registry
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _active.spikes = None
