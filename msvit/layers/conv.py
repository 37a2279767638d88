"""The convolutional blocks of the Spike-driven Transformer V2 (Meta-SpikeFormer, BICLab/Spike-Driven-Transformer-V2):
its downsampling, the separable convolution and the conv block of its first two stages, and the re-parameterisable
convolution (`RepConv`, with its `BNAndPad`) that its attention uses for q, k, v and the projection.

Every module takes and returns `[T, B, C, H, W]` (`RepConv` and `BNAndPad` work on the `[T*B, C, H, W]` view);
attribute names are the release's, so its state_dicts load as they are. The residual stream is real-valued
(membrane shortcut): every branch starts with a neuron and ends with a batch norm.
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import Neurons, as_settings
from ._time import fold_time, unfold_time
from .stems import batch_norm_of_copies

__all__ = ["BNAndPad", "RepConv", "SepConv", "MSConvBlock", "MSDownsampling", "CONV_BLOCK_EXPANSION"]

CONV_BLOCK_EXPANSION = 4  # the conv block's hidden width: C -> 4C -> C, hard-coded in the release's reshape


class BNAndPad(nn.Module):
    """Batch norm, then a border of `pad_pixels` filled with the batch norm's image of zero, taken from the running
    statistics (`bias - running_mean * weight / sqrt(running_var + eps)`, detached), in training as in evaluation.
    So a convolution after it sees, at the border, what a zero-padded input would give in evaluation: the
    sequence 1x1 conv -> this -> 3x3 conv without padding folds into one 3x3 conv with zero padding."""

    def __init__(self, pad_pixels: int, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad_pixels = int(pad_pixels)

    def pad_values(self) -> torch.Tensor:
        """The padding value per channel, `[C]`: the batch norm's image of zero by its running statistics."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if not bn.affine:
            return -bn.running_mean * scale
        return bn.bias.detach() - bn.running_mean * bn.weight.detach() * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)  # first: in training this updates the running statistics the padding reads
        p = self.pad_pixels
        if p <= 0:
            return out
        out = nn.functional.pad(out, [p] * 4)
        values = self.pad_values().view(1, -1, 1, 1)
        out[:, :, :p, :] = values
        out[:, :, -p:, :] = values
        out[:, :, :, :p] = values
        out[:, :, :, -p:] = values
        return out


class RepConv(nn.Module):
    """The release's RepConv, a sequence (not RepVGG's parallel branches): bias-free 1x1 conv C_in -> C_in,
    `BNAndPad` (1 pixel), depthwise 3x3 conv without padding, bias-free 1x1 conv C_in -> C_out, batch norm.
    On `[N, C_in, H, W]`; keys `body.0`, `body.1.bn`, `body.2.0`, `body.2.1`, `body.2.2` as released."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            BNAndPad(1, in_channels),
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, groups=in_channels, bias=False),
                          nn.Conv2d(in_channels, out_channels, 1, bias=False),
                          nn.BatchNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SepConv(nn.Module):
    """MobileNetV2's inverted separable convolution in spikes: `BN(pw(dw7x7(LIF(BN(pw(LIF(x)))))))`, C -> 2C -> C,
    bias-free convolutions. The depthwise conv reads spikes; the second pointwise conv reads its real output."""

    def __init__(self, dim: int, neurons: Neurons = "auto", expansion: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        neurons = as_settings(neurons)
        hidden = int(expansion * dim)
        self.lif1 = neurons.make()
        self.pwconv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = neurons.make()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = self.lif2(unfold_time(self.bn1(self.pwconv1(fold_time(self.lif1(x)))), T))
        return unfold_time(self.bn2(self.pwconv2(self.dwconv(fold_time(x)))), T)


class MSConvBlock(nn.Module):
    """The release's MS_ConvBlock: `x + SepConv(x)`, then `+ BN(conv3x3(LIF(BN(conv3x3(LIF(.))))))`, C -> 4C -> C
    with bias-free 3x3 convolutions (the 4x is hard-coded in the release)."""

    def __init__(self, dim: int, neurons: Neurons = "auto") -> None:
        super().__init__()
        neurons = as_settings(neurons)
        hidden = CONV_BLOCK_EXPANSION * dim
        self.Conv = SepConv(dim, neurons)
        self.lif1 = neurons.make()
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = neurons.make()
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = x + self.Conv(x)
        h = self.lif2(unfold_time(self.bn1(self.conv1(fold_time(self.lif1(x)))), T))
        return x + unfold_time(self.bn2(self.conv2(fold_time(h))), T)


class MSDownsampling(nn.Module):
    """The release's MS_DownSampling: `BN(conv(LIF(x)))` with a biased conv (`first_layer`: no neuron, the stem's
    7x7/2 conv on the image). A static image reaches the first layer as one image expanded over T (stride 0 along
    T): its conv and batch norm then run once per image (`once_per_image`, the default path) rather than on T
    identical copies (the reference path), with the same output and running statistics."""

    once_per_image = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2,
                 padding: int = 1, first_layer: bool = False, neurons: Neurons = "auto") -> None:
        super().__init__()
        self.encode_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(out_channels)
        self.first_layer = bool(first_layer)
        if not first_layer:
            self.encode_lif = as_settings(neurons).make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        if not self.first_layer:
            x = self.encode_lif(x)
        elif (self.once_per_image and x.stride(0) == 0 and not isinstance(self.encode_bn, nn.SyncBatchNorm)):
            y = batch_norm_of_copies(self.encode_bn, self.encode_conv(x[0]), T)
            return y.expand(T, *y.shape)
        return unfold_time(self.encode_bn(self.encode_conv(fold_time(x))), T)
