"""An example batch for a model's kind of input: what benchmarks, the zoo's energy table and smoke tests feed."""
from __future__ import annotations

import torch

__all__ = ["make_batch"]


def make_batch(stem: str, batch_size: int, T: int, in_chans: int, img_size: int, num_classes: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normal images `[B, C, H, W]`, or small integer event counts `[B, T, C, H, W]` for DVS (`stem`
    'dvs', as `_timm.input_kind` tells); and random targets below `num_classes`."""
    if stem == "dvs":
        inputs = torch.randint(0, 4, (batch_size, T, in_chans, img_size, img_size), device=device).float()
    else:
        inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    return inputs, torch.randint(0, num_classes, (batch_size,), device=device)
