"""The blocks every family builds from: stems, attentions, MLPs, the transformer block, and the convolutional blocks of
the Spike-driven Transformer V2 (`conv`), and STMixer's token mixing (`mixing`) and stem (`stems.ProtectedStem`).

Every module takes and returns `[T, B, C, H, W]`. Convolutions and batch norms run on the `[T*B, ...]` view;
neurons integrate along the leading T axis, except the output neuron of a batch-coupled SSA, which integrates
along T*B as the authors' release does (see `AttentionBase`). Attribute names follow the authors' releases
(`proj_conv`, `q_bn`, ...), so their checkpoints load with few renames (see `msvit.models._checkpoint`).
"""
from .attention import (MASK_THRESHOLD, SSA_SCALE, AttentionBase, RepConvSelfAttention, SpikeDrivenSelfAttention,
                        SpikingSelfAttention, TokenAttention, erode)
from .block import Block, DropPath
from .conv import CONV_BLOCK_EXPANSION, BNAndPad, MSConvBlock, MSDownsampling, RepConv, SepConv
from .mlp import MLP, MembraneMLP
from .mixing import SpikingTokenMixer, TokenMixing
from .stems import STEMS, LayerStem, PatchEmbed, ProtectedStem, StemLayer, batch_norm_of_copies, pooled_layers

__all__ = ["AttentionBase", "TokenAttention", "SpikingSelfAttention", "SpikeDrivenSelfAttention",
           "RepConvSelfAttention", "SSA_SCALE", "MASK_THRESHOLD", "erode", "Block", "DropPath", "MLP", "MembraneMLP",
           "STEMS", "PatchEmbed", "StemLayer", "LayerStem", "batch_norm_of_copies", "pooled_layers", "BNAndPad",
           "RepConv", "SepConv", "MSConvBlock", "MSDownsampling", "CONV_BLOCK_EXPANSION", "ProtectedStem", "TokenMixing",
           "SpikingTokenMixer"]
