"""The surrogate gradients a neuron can train with: spikingjelly's sigmoid (the releases') and Dspike.

Dspike (Li et al., "Differentiable Spike: Rethinking Gradient-Descent for Training Spiking Neural Networks",
NeurIPS 2021) replaces the spike's derivative by that of a tanh scaled to rise from 0 to 1 over a region
around the threshold. On `u = v - v_threshold`, with temperature `gamma` (the paper's b) and half-width `region`:

    Dspike(u) = tanh(gamma * clamp(u, -region, region)) / (2 * tanh(gamma * region)) + 1/2
    d spike / d u = gamma * (1 - tanh(gamma * u)^2) / (2 * tanh(gamma * region))   where |u| <= region, else 0

the form of the authors' release (`DSPIKE`, region 1) that STMixer trains with as `ZDSPIKE` (gamma 2.5, region 1,
`models/spiking_layer.py` of brain-intelligence-lab/STMixer_demo). Forward is the Heaviside step `u >= 0`, as
spikingjelly's surrogates fire. The slope integrates to 1 over the region, as a surrogate of a unit step should.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SURROGATES", "DSPIKE_REGION", "Dspike", "DspikeFunction", "dspike_slope"]

SURROGATES = ("sigmoid", "dspike")
DSPIKE_REGION = 1.0


def dspike_slope(u: torch.Tensor, gamma: float, region: float = DSPIKE_REGION) -> torch.Tensor:
    """Dspike's d spike / d u at `u = v - v_threshold`: zero outside [-region, region]."""
    t = torch.tanh(gamma * u)
    slope = (1.0 - t * t) * (gamma / (2.0 * math.tanh(gamma * region)))
    return slope.masked_fill(u.abs() > region, 0.0)


class DspikeFunction(torch.autograd.Function):
    """`spikes = DspikeFunction.apply(u, gamma, region)`: the step `u >= 0` forward, Dspike's slope backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: float, region: float) -> torch.Tensor:
        if u.requires_grad:
            ctx.save_for_backward(u)
        ctx.gamma, ctx.region = gamma, region
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        (u,) = ctx.saved_tensors
        return grad_spikes * dspike_slope(u, ctx.gamma, ctx.region), None, None


class Dspike(nn.Module):
    """Dspike as a neuron's `surrogate_function` (called on `v - v_threshold`, as spikingjelly's are)."""

    def __init__(self, gamma: float = 2.5, region: float = DSPIKE_REGION) -> None:
        super().__init__()
        if not (gamma > 0 and region > 0):
            raise ValueError(f"Dspike needs a positive gamma and region, got {gamma} and {region}")
        self.gamma, self.region = float(gamma), float(region)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return DspikeFunction.apply(u, self.gamma, self.region)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, region={self.region:g}"

