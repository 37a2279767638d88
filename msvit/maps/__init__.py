"""Spike and attention maps of MSViT / QKFormer models, one PNG sheet per image.

    python -m msvit.maps --config digits/digits.yml [--checkpoint PATH] [--images 4 | --files A.png B.jpg ...]
                         [--out maps] [--block -1] [--queries 3] [--json] [--key value ...]

Per image, `collect_maps` records (with forward hooks that exist only during the call, the model in eval mode,
no gradients):

- each stage's output spike count (the residual stream after the stage's last block, counts 0/1/2...), summed
  over channels and time steps, on the stage's token grid `[H, W]`;
- in stages with token attention (QKTA, MSSA), for one block per stage (`block`, default -1: the last), the
  binary mask of the attention neuron `attn_lif` per head and time step, `[heads, T, H, W]` (its `[T, B, heads,
  1, N]` output with the N tokens in raster order);
- in SSA stages, for that block, the scores of the `queries` query tokens with the most Q spikes in each head:
  score(i, j) = sum over T and the head's channels d of q[t, d, i] * k[t, d, j] (q, k: the spikes of `q_lif` and
  `k_lif`; a head takes a contiguous group of C / heads channels), `[heads, K, H, W]`. The batch-coupled SSA
  couples only the output neuron, so these scores are per sample.

Modules: `collect` (the hooks), `sheet` (`draw_sheet`, the PNG), `cli` (the command line).
"""
from .collect import check_block, collect_maps
from .sheet import draw_sheet, input_display, sheet_size

__all__ = ["collect_maps", "check_block", "draw_sheet", "input_display", "sheet_size"]
