"""STMixer's surrogate modules (Deng et al., NeurIPS 2024; brain-intelligence-lab/STMixer_demo,
`models/surrogate_module.py` at 38a0786): the ANN side branches of surrogate module learning (SML), which read a
spiking network's intermediate stream during training only and give it a classifier of their own.

    proj_conv  conv1x1 (no bias), BN, GELU, on the stream averaged over the T time steps, `[B, C, N]`
    encoder.j  x + spatial_mix(x), then x + channel_mix(x): spatial_mix = GELU, conv1x1, BN, GELU, a learned N x N
               token-mixing matrix per head (`attn.linear_mix.{h}`), GELU, conv1x1, BN; channel_mix = GELU,
               conv1x1 (C -> 4C), BN, GELU, conv1x1, BN; no bias anywhere
    head       the mean over tokens -> Linear

Module and parameter names are the release's, so its `sml{i}.*` keys load unchanged. Initialisation as the
release's: Kaiming normal (fan out, ReLU) for every convolution and Linear weight, PyTorch's default elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SurrogateModule", "side_branch_layers"]


def side_branch_layers(depth: int) -> list[int]:
    """The mixer blocks of each side branch of a `depth`-block STMixer, as the release builds them: depth // 2
    branches, the first after the stem, then one after every second block; branch i has max(L - i, 1) blocks, L
    = 1, 2, 3, 3, 3 for depth (rounded down to even) 2, 4, 6, 8, 10. Other depths: ValueError (the release
    defines none)."""
    if not 2 <= depth <= 11:
        raise ValueError(f"depth {depth}: the release defines side branches for depth 2 to 11")
    most = {2: 1, 4: 2}.get(depth - depth % 2, 3)
    return [max(most - i, 1) for i in range(depth // 2)]


class _TokenMixing(nn.Module):
    """One learned N x N matrix per head over the token axis (the release's `STM`, its Linear per head kept)."""

    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_mix = nn.ModuleList([nn.Linear(tokens, tokens, bias=False) for _ in range(heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        weight = torch.stack([linear.weight for linear in self.linear_mix])  # [heads, N out, N in]
        y = torch.einsum("bhcn,hmn->bhcm", x.reshape(b, self.heads, c // self.heads, n), weight)
        return y.reshape(b, c, n)


def _conv_bn(dim_in: int, dim_out: int) -> list[nn.Module]:
    return [nn.Conv1d(dim_in, dim_out, kernel_size=1, bias=False), nn.BatchNorm1d(dim_out)]


class _SpatialMix(nn.Module):
    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.GELU(), *_conv_bn(dim, dim), nn.GELU())
        self.attn = _TokenMixing(dim, tokens, heads)
        self.fc2 = nn.Sequential(nn.GELU(), *_conv_bn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.attn(self.fc1(x)))


class _ChannelMix(nn.Module):
    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.GELU(), *_conv_bn(dim, dim * ratio), nn.GELU())
        self.fc2 = nn.Sequential(*_conv_bn(dim * ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class _MixerBlock(nn.Module):
    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.spatial_mix = _SpatialMix(dim, tokens, heads)
        self.channel_mix = _ChannelMix(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.spatial_mix(x)
        return x + self.channel_mix(x)


class SurrogateModule(nn.Module):
    """`SurrogateModule(in_dim, dim, tokens, num_classes, heads, layers)(x)`: the time-major stream `[T, B, C, H,
    W]` (H x W = `tokens`) -> logits `[B, num_classes]`."""

    def __init__(self, in_dim: int, dim: int, tokens: int, num_classes: int, heads: int, layers: int) -> None:
        super().__init__()
        self.proj_conv = nn.Sequential(*_conv_bn(in_dim, dim), nn.GELU())
        self.encoder = nn.Sequential(*[_MixerBlock(dim, tokens, heads) for _ in range(layers)])
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the mean over T (the release averages groups of T consecutive samples of its time-major batch, the
        # same at T=1, its only setting)
        x = self.proj_conv(x.mean(0).flatten(2))
        return self.head(self.encoder(x).mean(-1))
