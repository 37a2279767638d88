"""What every spiking network of this package shares (MSViT/QKFormer's `SpikingTransformer` and the baselines):
direct or event input over T time steps, a forward pass from neurons at rest through a list of spiking units
(patch embeddings and blocks), activation checkpointing, spikes saved for backward as bits, and timm's head
contract (`forward_features`, `forward_head`, `reset_classifier`, per-step logits for TET training).

Activation checkpointing of a spiking unit (a patch embedding or a block): `checkpointed(module, x)` keeps only `x`
for backward and recomputes the unit there, from membranes at rest and without touching the batch norms' running
statistics a second time (`set_grad_checkpointing`)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..neurons import reset_neurons
from ..neurons.spike_bits import packed_saved_spikes
from ._timm import check_timm_arguments, classifier_head, pool_features

__all__ = ["SpikingNetwork", "checkpointed"]


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


class SpikingNetwork(nn.Module):
    """Base of the models: a subclass builds `self.units()` (run in order on `[T, B, C, H, W]`), `self.head`
    (`classifier_head`), `self.head_drop` and sets `T`, `num_classes`, `num_features`, `global_pool`, `config`."""

    T: int
    num_classes: int
    num_features: int
    global_pool: str
    config: dict[str, Any]

    def units(self) -> list[nn.Module]:
        """The spiking units from the input to the last features, in order."""
        raise NotImplementedError

    def time_major(self, x: torch.Tensor) -> torch.Tensor:
        """Images `[B, C, H, W]` -> `[T, B, C, H, W]` (direct encoding); frames `[B, T, ...]` -> `[T, B, ...]`."""
        if x.dim() == 4:
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == 5:
            return x.transpose(0, 1)
        raise ValueError(f"expected [B, C, H, W] images or [B, T, C, H, W] frames, got shape {tuple(x.shape)}")

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: with it, every patch embedding and block keeps only its input for backward and
        recomputes its activations there (same spikes and gradients, far less memory, one more forward)."""
        self.grad_checkpointing = enable

    # spikes saved for backward as bits (`msvit.neurons.spike_bits`); off on the reference path
    pack_saved_spikes = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`forward`'s input (`[B, C, H, W]` images or `[B, T, C, H, W]` frames) -> the last unit's output
        `[B, T, C', H', W']` (a batch-first view). Starts and ends with every neuron at rest."""
        reset_neurons(self)
        try:
            x = self.time_major(x)
            packing = self.pack_saved_spikes and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            with packed_saved_spikes(packing):
                checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
                for unit in self.units():
                    x = checkpointed(unit, x) if checkpointing else unit(x)
            return x.transpose(0, 1)
        finally:
            reset_neurons(self)  # no membrane state (or graph) outlives the call

    # True: logits per time step, `[B, T, num_classes]`, whose mean over T is the usual output (TET training)
    per_step_logits = False

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`[B, T, C, H, W]` features -> `[B, num_classes]`: `global_pool` ('avg': the mean over tokens, then
        over time), dropout, head; with `per_step_logits`, not averaged over time: `[B, T, num_classes]`. With
        global_pool '' the features stay unpooled, and a head maps the channels at every position and time
        step: `[B, T, H, W, num_classes]`."""
        x = self.head_drop(pool_features(x, self.global_pool, self.per_step_logits))
        if pre_logits:
            return x
        return self.head(x.movedim(2, -1) if not self.global_pool and self.num_classes > 0 else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: nn.Identity, the pooled features come out); None keeps the pooling."""
        if global_pool is not None:
            check_timm_arguments({"global_pool": global_pool}, lambda key: f"global_pool {global_pool!r}")
            self.global_pool = self.config["global_pool"] = global_pool
        self.num_classes = self.config["num_classes"] = num_classes
        self.head = classifier_head(self.num_features, num_classes)

    def no_weight_decay(self) -> set[str]:
        """Empty: only biases and batch-norm affines go without, all 1-D, which timm's optimizers exclude."""
        return set()
