"""Switches on a built model: the reference path, the SSA's batch coupling, compilation, and its parameter count."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import AttentionBase, SpikingSelfAttention
from ..neurons import LIF
from ._network import SpikingNetwork
from .msvit import SpikingTransformer

__all__ = ["compile_model", "use_reference_implementation", "set_batch_coupled_ssa", "count_parameters"]


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """`torch.compile(model)` for fixed input shapes (inductor's dynamic shapes fail on CPU with torch 2.14); the
    model traces as one graph. `mode` is torch.compile's: 'reduce-overhead' replays CUDA graphs on GPU."""
    return torch.compile(model, dynamic=False, mode=mode)


def use_reference_implementation(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch `model` to the straightforward forward path (or back): spikingjelly's per-step LIF loop,
    one convolution per attention branch and the stem's first layer on every time step. Same weights,
    same spikes, same results up to float rounding; the default optimised path is faster and lighter.
    Used by parity tests and benchmarks."""
    for module in model.modules():
        if isinstance(module, LIF):
            module.fused = not enabled
        elif isinstance(module, AttentionBase):
            module.fuse_projections = not enabled
        elif hasattr(module, "once_per_image"):  # a stem (PatchEmbed, the baselines' LayerStem)
            module.once_per_image = not enabled
        elif isinstance(module, SpikingNetwork):
            module.pack_saved_spikes = not enabled
    return model


def set_batch_coupled_ssa(model: nn.Module, coupled: bool) -> nn.Module:
    """Switch the SSA output neurons of `model` between the release's batch-coupled integration (True)
    and per-sample integration (False). The weights are the same; only how samples share a membrane changes.
    Only QKFormer's and MSViT's releases couple the batch; every other family runs per sample in every release,
    so coupling one of them is a ConfigError."""
    if coupled and any(isinstance(m, SpikingNetwork) and not isinstance(m, SpikingTransformer)
                       for m in model.modules()):
        raise ConfigError("the baselines (Spikformer, Spikingformer, SDT v1 and V2, STMixer) run their SSA per sample in "
                          "every release: batch_coupled_ssa cannot be switched on for them")
    for module in model.modules():
        if isinstance(module, SpikingSelfAttention):
            module.batch_coupled = bool(coupled)
        if isinstance(module, SpikingTransformer):
            module.config["batch_coupled_ssa"] = bool(coupled)
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
