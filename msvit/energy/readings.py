"""What `msvit.energy`'s counting half hands its reporting half: a meter's `Readings` on the host, and the stage a
module belongs to (`stage_of`), which the meter, the report and the figures all group by."""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Readings", "stage_of"]

# the one-stage baselines: patch_embed, block; the Spike-driven Transformer V2: its units by the release's names
_STAGE = re.compile(r"^(patch_embed\d*|stage\d+|block\d*|head(?:_kd)?|downsample\d+(?:_\d+)?|ConvBlock\d+_\d+)(\.|$)")


@dataclass
class Readings:
    """What a meter accumulated, on the host: per layer (total, numel, ops, steps) and per neuron (total,
    numel, steps), `steps` being the sums per time step (None where there are none)."""
    images: int
    T: int
    layers: dict[str, tuple[float, int, float, list[float] | None]]
    neurons: dict[str, tuple[float, int, list[float] | None]]


def stage_of(name: str) -> str:
    """The stage a module belongs to, from its name: patch_embed<i>, stage<i>, head, or model (the baselines'
    one-stage models: patch_embed, block, head; V2: downsample<i>[_<j>], ConvBlock<i>_<j>, block<i>, head_kd)."""
    m = _STAGE.match(name)
    return m.group(1) if m else "model"
