"""What every spiking network of this package shares (MSViT/QKFormer's `SpikingTransformer` and the baselines):
direct or event input over T time steps, a forward pass from neurons at rest through a list of spiking units
(patch embeddings and blocks), activation checkpointing, spikes saved for backward as bits, and timm's head
contract (`forward_features`, `forward_head`, `reset_classifier`, per-step logits for TET training) and its
backbone contract (`feature_info`, `forward_intermediates`, `prune_intermediate_layers`) over the units grouped per
feature map (`feature_groups`, which a family that is a backbone gives).

Activation checkpointing of a spiking unit (a patch embedding or a block): `checkpointed(module, x)` keeps only `x`
for backward and recomputes the unit there, from membranes at rest and without touching the batch norms' running
statistics a second time (`set_grad_checkpointing`)."""
from __future__ import annotations

import contextlib
from typing import Any, Collection, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.models._features import feature_take_indices

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

    def run_units(self, x: torch.Tensor, groups: Sequence[Sequence[nn.Module]],
                  take: Collection[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`forward`'s input (`[B, C, H, W]` images or `[B, T, C, H, W]` frames) through `groups` of units in
        order -> the last output `[B, T, C', H', W']` (a batch-first view) and the time-major outputs
        `[T, B, C', H', W']` of the groups whose index is in `take`. Starts and ends with every neuron at rest."""
        reset_neurons(self)
        try:
            x, taken = self.time_major(x), []
            packing = self.pack_saved_spikes and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            with packed_saved_spikes(packing):
                checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
                for index, group in enumerate(groups):
                    for unit in group:
                        x = checkpointed(unit, x) if checkpointing else unit(x)
                    if index in take:
                        taken.append(x)
            return x.transpose(0, 1), taken
        finally:
            reset_neurons(self)  # no membrane state (or graph) outlives the call

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`forward`'s input (`[B, C, H, W]` images or `[B, T, C, H, W]` frames) -> the last unit's output
        `[B, T, C', H', W']` (a batch-first view). Starts and ends with every neuron at rest."""
        return self.run_units(x, [self.units()])[0]

    # the feature maps of `forward_intermediates` (and of timm's features_only=True): False, averaged over the T
    # time steps, `[B, C, H, W]`; True, per step, `[B, T, C, H, W]` (create_model's `per_step_features`)
    per_step_features = False
    # timm's: per feature map, its channels `num_chs`, its stride `reduction` and the unit that outputs it `module`
    feature_info: list[dict[str, Any]]

    def feature_groups(self) -> list[list[nn.Module]]:
        """`units()` grouped per feature map: the output of group i is feature i (`feature_info[i]`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no intermediate features")

    def keep_feature_groups(self, count: int) -> None:
        """Drop every unit after the first `count` feature groups (`prune_intermediate_layers`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no intermediate features")

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              per_step: bool | None = None) -> Any:
        """timm's backbone forward, from every neuron at rest as `forward`: the feature maps at `indices` (None:
        all; n: the last n; a sequence: those, negative from the end), in order, each the output of its
        `feature_info` module averaged over the T steps, `[B, C, H, W]`, or per step with `per_step` (None: the
        model's `per_step_features`), `[B, T, C, H, W]`; `output_fmt` 'NHWC' moves the channels last. With
        `intermediates_only` (or `stop_early`) the units after the last map taken do not run; otherwise the
        return is `(forward_features(x), maps)`. `norm` has no effect: these models have no final norm."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt {output_fmt!r}: these models give 'NCHW' or 'NHWC' feature maps")
        per_step = self.per_step_features if per_step is None else per_step
        groups = self.feature_groups()
        take, last = feature_take_indices(len(groups), indices)
        x, taken = self.run_units(x, groups[:last + 1] if stop_early or intermediates_only else groups, set(take))
        maps = [t.transpose(0, 1) if per_step else t.mean(0) for t in taken]
        maps = [m.movedim(-3, -1) for m in maps] if output_fmt == "NHWC" else maps
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's: drop the units after the last feature map at `indices` (the features end there) and, with
        `prune_head` or when the end was cut, the head (`reset_classifier(0, '')`: unpooled features out).
        Returns the indices, counted from the start. `prune_norm` has no effect (no final norm)."""
        groups = self.feature_groups()
        take, last = feature_take_indices(len(groups), indices)
        if last < len(groups) - 1:
            self.keep_feature_groups(last + 1)
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or last < len(groups) - 1:
            self.reset_classifier(0, "")
        return take

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
