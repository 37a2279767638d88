"""Energy per image and firing rates of MSViT / QKFormer models and the baselines (Spikformer, Spikingformer, the
Spike-driven Transformer v1 and V2), measured from the spikes of an evaluation run, by one rule for every family.

    python -m msvit.energy --config cifar10/cifar10.yml [--checkpoint PATH | --compare A B ...] [--batches N]
                           [--plot DIR] [--json] [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--key value ...]

Modules: `meter` (the hooks that count), `conv_rules` (its plan for V2's conv layers and RepConv), `readings`
(what a meter hands the report: its `Readings`, and `stage_of`), `report` (what the counts mean: one dict),
`products` (the attention products' rules, `conv_flops`), `text` (the tables), `figures` (the PNGs); the package re-exports these. Not imported by it: `cli` (the command line,
`python -m msvit.energy`: `msvit.energy.cli.main` / `run`), `dense` (the rate-independent energy of a model's
dense layers, `python -m msvit.zoo --energy`), `ann` (a timm ANN's MACs x 4.6 pJ, counted on the meta device) and
`table` (MSViT's ImageNet comparison table as this codebase sees it, `python -m msvit.zoo --table`).

The energy model of the papers (Spikformer, QKFormer, MSViT), on a 45 nm chip:

- Dense input: the first convolution of the stem (`patch_embed1.proj_conv`) sees the analog image (or raw
  DVS event counts) and performs multiply-accumulates, E_MAC = 4.6 pJ each. A static image is the same at
  every time step, and the default forward computes that convolution once per image, so it is charged
  once: FLOPs(conv1) per image, the papers' formula. Event frames differ from step to step: FLOPs(conv1)
  x T. (The reference path recomputes the static image's convolution on every step; it is charged the same.)
- Spiking input: a layer performs one accumulate per arriving spike and weight it reaches,
  SOPs(l) = fr(l) x T x FLOPs(l), E_AC = 0.9 pJ each. fr(l) is the mean of the layer's input over the
  evaluation set: the fraction of ones for spike tensors, the mean count for residual streams (which
  carry 0, 1, 2, ...). FLOPs(l) is the MAC count of the equivalent dense layer for one image and one
  time step (conv: C_out x C_in/groups x prod(kernel) x prod(output size); Linear: in x out).
- Attention products: QKTA/MSSA sum Q (and P) over each head's channels, fr(Q) x T x C x N additions,
  and gate K with the mask, fr(A) x T x C x N; SSA computes K^T V and Q (K^T V), each with FLOPs
  N x C x d (d = C / heads) scaled by fr(K) resp. fr(Q); SDSA (the Spike-driven Transformer) sums K*V over
  the tokens, one addition per K spike, fr(K) x T x C x N, and applies the channel mask to Q, fr(Q) x T x C x N.
  (`msvit.energy.products` holds these rules.)
- Membrane shortcuts (Spikingformer, SDT): every branch starts with a neuron, so its first convolution is
  charged at that neuron's output rate (the attention's q/k/v at `shortcut_lif`'s).
- The head (Linear on the token- and time-averaged last stage): fr(head input) x T x in x out. SDT's head reads
  the spikes of its head neuron at each step: the same count. Spikingformer's reads the real-valued stream, with
  no neuron before it: in x out MACs per image.
- The Spike-driven Transformer V2 (`conv_rules`): its convs that read spikes are charged as above; SepConv's second
  pointwise conv reads the depthwise conv's real output and is charged its dense MACs at every image and step; a
  RepConv (1x1 -> BN padded with its image of zero -> depthwise 3x3 -> 1x1 -> BN) folds exactly into one zero-padded
  3x3 conv on its input spikes and is charged as that conv, fr x T x C_out x C_in x 9 x H x W; its attention's
  products as SSA's; `head_kd` as the head.
- Batch norms (folded into the convolutions), max-pools and residual additions cost nothing.

Firing rates are reported as the mean over all images and time steps and per time step t (the fraction of
ones at step t), for every neuron's output and every layer's input; the mean is the mean of the per-step rates.

`EnergyMeter` collects these counts with forward hooks that exist only inside its `with` block. The hooks
only launch reductions on the device (no host synchronisation); `report()` reads everything at once.
The q/k/v/p convolutions of the attentions are measured from the attention module's input (their common
input; in the membrane form, the shortcut neuron's output), so a forward path that fuses them into one call is
measured the same way.
"""
from .figures import figure_data, write_figures
from .meter import E_AC_PJ, E_MAC_PJ, EnergyMeter, conv_flops
from .products import attention_products
from .readings import Readings, stage_of
from .report import PJ_TO_MJ
from .text import format_firing, format_report, format_totals

__all__ = ["EnergyMeter", "Readings", "format_report", "format_totals", "format_firing", "figure_data",
           "write_figures", "conv_flops", "attention_products", "stage_of", "E_MAC_PJ", "E_AC_PJ", "PJ_TO_MJ"]
