"""MSViT: spiking vision transformers with multi-scale spiking attention, QKFormer, and the baselines of
their comparison tables (Spikformer, Spikingformer, the Spike-driven Transformer).

Importing the package registers every model with timm:
    >>> import timm, msvit
    >>> model = timm.create_model("msvit_cifar_4_384", num_classes=100)
    >>> model = msvit.load_model("runs/cifar10/best.pth")  # a run's model with its weights, in eval mode
"""
from .models import (ALL_MODEL_NAMES, ARCHS, BASELINE_NAMES, MODEL_NAMES, CheckpointError, SpikingTransformer,
                     count_parameters, load_checkpoint, set_batch_coupled_ssa, use_reference_implementation)
from .neurons import LIF, reset_neurons, set_neuron_backend
from .zoo import load_model

__all__ = ["ARCHS", "MODEL_NAMES", "ALL_MODEL_NAMES", "BASELINE_NAMES", "SpikingTransformer", "count_parameters",
           "use_reference_implementation", "set_batch_coupled_ssa", "LIF", "reset_neurons", "set_neuron_backend",
           "load_checkpoint", "load_model", "CheckpointError"]
__version__ = "0.1.0"
