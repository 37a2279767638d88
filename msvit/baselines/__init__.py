"""The baselines of the comparison tables, registered with timm beside MSViT and QKFormer: Spikformer,
Spikingformer and the Spike-driven Transformer (v1), one module per family over shared blocks."""
from .base import OneStageTransformer
from .sdt import SDT_ARCHS, SpikeDrivenTransformer
from .spikformer import SPIKFORMER_ARCHS, Spikformer
from .spikingformer import SPIKINGFORMER_ARCHS, Spikingformer

__all__ = ["OneStageTransformer", "Spikformer", "Spikingformer", "SpikeDrivenTransformer", "BASELINE_CLASSES",
           "BASELINE_ARCHS"]

BASELINE_CLASSES = {**{name: Spikformer for name in SPIKFORMER_ARCHS},
                    **{name: Spikingformer for name in SPIKINGFORMER_ARCHS},
                    **{name: SpikeDrivenTransformer for name in SDT_ARCHS}}
BASELINE_ARCHS = {**SPIKFORMER_ARCHS, **SPIKINGFORMER_ARCHS, **SDT_ARCHS}
