"""The model families, one module each, registered with timm on import (`timm.list_models(module='qkformer')`):

- `msvit` (MSViT: `SpikingTransformer` with MSSA) and `qkformer` (QKFormer: the same class with QKTA);
- `spikformer`, `spikingformer` and `spike_driven_transformer` (v1): the baselines, one stage of blocks each over
  `OneStageTransformer` (`_one_stage`);
- `spike_driven_transformer_v2` (Meta-SpikeFormer, the `metaspikformer_*` models): a baseline of four stages, conv
  then transformer, over `SpikingNetwork` (`_network`);
- `stmixer` (STMixer, the `stmixer_*` models): a one-stage baseline whose blocks mix tokens with learned matrices.

The `_`-prefixed modules are plumbing: `_network` (what every network shares, activation checkpointing), `_timm`
(timm's contract and registration), `_registry` (every model by name), `_checkpoint` (ours and the authors'
layouts), `_manipulate` (switches on a built model) and `_inputs` (an example batch per input kind).
"""
from . import (msvit, qkformer, spike_driven_transformer, spike_driven_transformer_v2, spikformer, spikingformer,
               stmixer)
from ._checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from ._manipulate import compile_model, count_parameters, set_batch_coupled_ssa, use_reference_implementation
from ._one_stage import OneStageTransformer
from ._registry import (ALL_ARCHS, ALL_MODEL_NAMES, ARCHS, BASELINE_ARCHS, BASELINE_NAMES, MODEL_NAMES, closest_model,
                        model_class, unknown_model)
from .msvit import SpikingTransformer
from .spike_driven_transformer import SpikeDrivenTransformer
from .spike_driven_transformer_v2 import MetaSpikeFormer
from .spikformer import Spikformer
from .spikingformer import Spikingformer
from .stmixer import STMixer

__all__ = ["SpikingTransformer", "OneStageTransformer", "Spikformer", "Spikingformer", "SpikeDrivenTransformer",
           "MetaSpikeFormer", "STMixer", "ARCHS", "MODEL_NAMES", "ALL_ARCHS", "ALL_MODEL_NAMES", "BASELINE_ARCHS", "BASELINE_NAMES",
           "model_class",
           "closest_model", "unknown_model", "compile_model", "count_parameters", "set_batch_coupled_ssa",
           "use_reference_implementation", "load_checkpoint", "read_checkpoint", "CheckpointError"]
