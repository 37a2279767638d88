"""Activation checkpointing of a spiking unit (a patch embedding or a block): `checkpointed(module, x)` keeps
only `x` for backward and recomputes the unit there, from membranes at rest and without touching the batch
norms' running statistics a second time (`SpikingTransformer.set_grad_checkpointing`)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .neurons import reset_neurons

__all__ = ["checkpointed"]


def _run_from_rest(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` from membranes at rest, leaving none behind (its LIFs process all T steps in one call): a
    recomputation in backward would otherwise keep every LIF's last membrane alive until the next forward."""
    reset_neurons(module)
    try:
        return module(x)
    finally:
        reset_neurons(module)


@contextlib.contextmanager
def _running_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """While `module` is recomputed for backward, its batch norms normalise with the batch's statistics as
    before but leave their running statistics as the first pass updated them."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` keeping only `x` for backward (torch.utils.checkpoint; drop-path masks are redrawn from the
    saved generator state, so they match)."""
    return checkpoint(_run_from_rest, module, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _running_statistics_frozen(module)))
