"""Make a small random model's spiking neurons busy, so that tests exercise what they check.

At initialisation SSA's attention neuron rarely fires (sparse Q, K, V spikes scaled by 0.125), so its
output neuron, the one whose batch coupling the tests compare, sees almost nothing; and a model in
evaluation mode with fresh batch-norm statistics is not the model it is in training.
"""
import torch
from torch import nn

from msvit.layers import SpikingSelfAttention


def excite_ssa(model: nn.Module, bias: float = 1.5) -> nn.Module:
    """Bias every SSA's Q/K/V batch norms by `bias`, so its attention and output neurons fire."""
    with torch.no_grad():
        for attn in (m for m in model.modules() if isinstance(m, SpikingSelfAttention)):
            for branch in "qkv":
                getattr(attn, f"{branch}_bn").bias.fill_(bias)
    return model


def calibrate_batch_norms(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every batch norm's running statistics to exactly those of `x` (one training-mode forward with a
    cumulative average), so evaluation mode normalises as training mode does on this batch."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    was_training = model.training
    with torch.no_grad():
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()(x)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return model
