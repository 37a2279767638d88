"""`msvit.energy`'s rules for the Spike-driven Transformer V2's layers (`msvit.layers.conv` and its attention) and
STMixer's (its stem and token mixer), which the meter plans through `plan_conv_layer`:

- `MSDownsampling`: the first one's conv sees the image, MACs (once per static image, as every stem's first conv);
  the others' convs read their `encode_lif` spikes, accumulates at that rate.
- `SepConv`: `pwconv1` and `dwconv` read spikes (`lif1`, `lif2`), accumulates at their rates; `pwconv2` reads the
  depthwise conv's real-valued output (no neuron between them), so it multiplies: its dense MACs at every image and
  time step.
- `MSConvBlock`: `conv1` and `conv2` read spikes, accumulates.
- `RepConv` (q, k, v and the projection): 1x1 conv -> BNAndPad -> depthwise 3x3 -> 1x1 -> BN is one chain of affine
  maps with no neuron inside, and the padding with the batch norm's image of zero makes it fold exactly (in
  evaluation) into one 3x3 convolution with zero padding and a bias on the chain's input spikes: it is charged as
  that convolution, C_out x C_in x 9 x H x W accumulates per image and step at its input's firing rate. The batch
  norms and the padded border cost nothing (the border's constant values fold into the bias), and the real values
  inside the chain are never charged as MACs.
- The attention's products, as SSA's: K^T V and Q (K^T V), N x C x d each at the rates of K resp. Q (`products`).
- STMixer's `ProtectedStem`: `proj_conv` and the protection shortcut `short_conv` both see the image, MACs (once per
  static image); `proj1_conv` .. `proj4_conv` read their neurons' spikes, accumulates at that rate.
- STMixer's `SpikingTokenMixer`: `fc1_conv` and `fc2_conv` read spikes, accumulates; the STM (`stm`, kind
  "attention") multiplies each channel's spikes by its head's N x N matrix: C x N x N per image and step at the rate
  of its input spikes (`stm_lif`'s). The FFN is a `MembraneMLP`, and the head reads the real-valued stream (MACs),
  as Spikingformer's.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from ..layers import (MSConvBlock, MSDownsampling, ProtectedStem, RepConv, RepConvSelfAttention, SepConv,
                      SpikingTokenMixer)
from .products import attention_products, conv_flops

__all__ = ["CONV_LAYERS", "plan_conv_layer", "repconv_flops"]

CONV_LAYERS = (MSDownsampling, SepConv, MSConvBlock, RepConvSelfAttention, ProtectedStem, SpikingTokenMixer)

Deps = dict[int, list[tuple[Any, Callable[[int], int]]]]


def repconv_flops(rep: RepConv, in_size: tuple[int, ...]) -> int:
    """MACs per sample of the 3x3 convolution (zero padding 1, stride 1) that `rep` folds into."""
    return rep.out_channels * rep.in_channels * 9 * math.prod(in_size)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _spiking(meter: Any, name: str, conv: nn.Module, planned: set[int]) -> None:
    planned.add(id(conv))
    meter._hooks.append((conv, "pre", meter._conv_hook(meter._layer(name, "AC"))))


def _dense_every_step(meter: Any, name: str, conv: nn.Module, planned: set[int]) -> None:
    """A conv on real values inside the network: its dense MACs for every image and time step."""
    acc = meter._layer(name, "MAC")
    planned.add(id(conv))

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        flops = conv_flops(module, x.shape[2:])
        acc.add(0, flops, ops=float(flops * x.shape[0]))
    meter._hooks.append((conv, "pre", hook))


def _repconv(meter: Any, name: str, rep: RepConv, planned: set[int]) -> None:
    acc = meter._layer(name, "AC")
    planned.update(id(m) for m in rep.modules())

    def hook(module: RepConv, args: tuple) -> None:
        x = args[0]  # [T*B, C_in, H, W] spikes
        (s, steps), n = meter._sums(x), x.numel()
        flops = repconv_flops(module, tuple(x.shape[2:]))
        acc.add(n, flops, ops=s * (flops * x.shape[0] / n), total=s, steps=steps)
    meter._hooks.append((rep, "pre", hook))


def _token_mixing(meter: Any, name: str, mixer: SpikingTokenMixer, planned: set[int]) -> None:
    """The STM product: C x N x N per image and step at its input spikes' rate."""
    acc = meter._layer(name, "attention")

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]  # [T, B, C, N] spikes
        (s, steps), n = meter._sums(x), x.numel()
        flops = x.shape[-2] * x.shape[-1] * x.shape[-1]
        acc.add(n, flops, ops=s * (flops * math.prod(x.shape[:-2]) / n), total=s, steps=steps)
    meter._hooks.append((mixer.stm, "pre", hook))


def _stmixer(meter: Any, name: str, m: nn.Module, planned: set[int]) -> None:
    if isinstance(m, ProtectedStem):
        for conv_name in ("proj_conv", "short_conv"):  # both on the image
            conv = getattr(m, conv_name)
            planned.add(id(conv))
            meter._hooks.append((conv, "pre", meter._dense_hook(meter._layer(_join(name, conv_name), "MAC"))))
        for layer in m.NAMES[1:]:
            _spiking(meter, _join(name, f"{layer}_conv"), getattr(m, f"{layer}_conv"), planned)
        return
    _spiking(meter, _join(name, "fc1_conv"), m.fc1_conv, planned)
    _token_mixing(meter, _join(name, "stm"), m, planned)
    _spiking(meter, _join(name, "fc2_conv"), m.fc2_conv, planned)


def plan_conv_layer(meter: Any, name: str, m: nn.Module, planned: set[int], lif_deps: Deps,
                    first_dense: bool) -> bool:
    """Plan the hooks of one of `CONV_LAYERS` on `meter` (an `EnergyMeter` being set up); returns whether the first
    dense layer is still to come."""
    if isinstance(m, MSDownsampling):
        conv = _join(name, "encode_conv")
        if m.first_layer and first_dense:
            planned.add(id(m.encode_conv))
            meter._hooks.append((m.encode_conv, "pre", meter._dense_hook(meter._layer(conv, "MAC"))))
            return False
        _spiking(meter, conv, m.encode_conv, planned)
    elif isinstance(m, SepConv):
        _spiking(meter, _join(name, "pwconv1"), m.pwconv1, planned)
        _spiking(meter, _join(name, "dwconv"), m.dwconv, planned)
        _dense_every_step(meter, _join(name, "pwconv2"), m.pwconv2, planned)
    elif isinstance(m, MSConvBlock):
        _spiking(meter, _join(name, "conv1"), m.conv1, planned)
        _spiking(meter, _join(name, "conv2"), m.conv2, planned)
    elif isinstance(m, (ProtectedStem, SpikingTokenMixer)):
        _stmixer(meter, name, m, planned)
        return first_dense and not isinstance(m, ProtectedStem)
    elif isinstance(m, RepConvSelfAttention):
        for branch in ("q_conv", "k_conv", "v_conv", "proj_conv"):
            _repconv(meter, _join(name, branch), getattr(m, branch)[0], planned)
        for product, lif, flops_of in attention_products(m):
            lif_deps.setdefault(id(lif), []).append((meter._layer(_join(name, product), "attention"), flops_of))
    return first_dense
