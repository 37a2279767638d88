"""MSSA and QKTA specifics: the p branch runs along the raster token sequence, the mask is per head and
token, QKTA is MSSA without p, and SSA computes LIF(Q (K^T V) / 8)."""
import pytest
import torch

from msvit.layers import SSA_SCALE, SpikingSelfAttention, TokenAttention

T, B, C, H, W, HEADS = 1, 1, 4, 3, 5, 2


def _quiet_eval(attn: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with identity batch norms, so the convs alone decide what fires."""
    attn.eval()
    for m in attn.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_var.fill_(1 - m.eps)
    return attn


def _capture_mask(attn):
    seen = {}
    attn.attn_lif.register_forward_hook(lambda m, i, o: seen.__setitem__("mask", o))
    return seen


def test_p_branch_is_kernel_3_conv_along_token_sequence_with_row_wrap():
    attn = _quiet_eval(TokenAttention(C, HEADS, attn_threshold=0.5, multi_scale=True))
    assert isinstance(attn.p_conv, torch.nn.Conv1d)
    assert attn.p_conv.kernel_size == (3,) and attn.p_conv.padding == (1,)
    with torch.no_grad():
        attn.q_conv.weight.zero_()
        attn.k_conv.weight.fill_(1.0)
        attn.p_conv.weight.zero_()
        attn.p_conv.weight[0, 0, 0] = 2.0  # output token n reads input token n-1 of channel 0
    x = torch.zeros(T, B, C, H, W)
    x[0, 0, 0, 0, W - 1] = 1.0  # last token of the first row
    seen = _capture_mask(attn)
    attn(x)
    mask = seen["mask"]
    assert mask.shape == (T, B, HEADS, 1, H * W)  # one gate per head and token
    fired = mask.nonzero().tolist()
    # only head 0 fires, at the first token of the second row: the sequence wraps rows;
    # a 2-D 3x3 window would instead reach (row 0, col W-2..W-1) and (row 1, col W-2..W-1)
    assert fired == [[0, 0, 0, 0, W]]


def test_mask_is_per_head_and_gates_k():
    attn = _quiet_eval(TokenAttention(C, HEADS, attn_threshold=0.5, multi_scale=False))
    with torch.no_grad():
        attn.q_conv.weight.zero_()
        attn.q_conv.weight[2, 2, 0] = 2.0  # head 1 (channels 2, 3) counts channel 2
        attn.k_conv.weight.copy_(2 * torch.eye(C).unsqueeze(-1))  # K = input spikes
    x = torch.zeros(T, B, C, H, W)
    x[0, 0, :, 1, 2] = 1.0  # token 7 spikes on every channel
    x[0, 0, 0, 0, 0] = 1.0  # token 0 spikes on channel 0 only (head 0), but head 0's Q stays silent
    seen = _capture_mask(attn)
    k_seen = {}
    attn.k_lif.register_forward_hook(lambda m, i, o: k_seen.__setitem__("k", o))
    attn.proj_conv.register_forward_hook(lambda m, i, o: k_seen.__setitem__("gated", i[0]))
    attn(x)
    assert seen["mask"].nonzero().tolist() == [[0, 0, 1, 0, 7]]
    gated = k_seen["gated"].reshape(C, H * W)
    k = k_seen["k"].reshape(C, H * W)
    assert k[0, 0] == 1 and gated[0, 0] == 0  # head 0 closed at token 0
    assert torch.equal(gated[2:, 7], k[2:, 7]) and gated[:2].sum() == 0 and gated[2:].sum() == 2


def test_qkta_is_mssa_without_p():
    torch.manual_seed(0)
    mssa = _quiet_eval(TokenAttention(8, 2, attn_threshold=1.0, multi_scale=True))
    qkta = _quiet_eval(TokenAttention(8, 2, attn_threshold=1.0, multi_scale=False))
    with torch.no_grad():  # Q, K and the projection pass spikes through: the output shows the gating
        for conv in (mssa.q_conv, mssa.k_conv, mssa.proj_conv):
            conv.weight.copy_(2 * torch.eye(8).unsqueeze(-1))
        mssa.proj_conv.bias.zero_()
    state = {k: v for k, v in mssa.state_dict().items() if not k.startswith("p_")}
    assert set(mssa.state_dict()) - set(state) == {"p_conv.weight", "p_bn.weight", "p_bn.bias",
                                                   "p_bn.running_mean", "p_bn.running_var",
                                                   "p_bn.num_batches_tracked"}
    qkta.load_state_dict(state, strict=True)
    with torch.no_grad():
        mssa.p_conv.weight.zero_()
        mssa.p_bn.bias.fill_(-10.0)  # P never fires: MSSA's count reduces to QKTA's
    x = (torch.rand(2, 2, 8, 4, 4) < 0.5).float()
    assert torch.equal(mssa(x), qkta(x)) and qkta(x).sum() > 0
    with torch.no_grad():
        mssa.p_bn.bias.fill_(10.0)  # P fires everywhere: the masks open wider, outputs differ
    assert not torch.equal(mssa(x), qkta(x))


def test_ssa_matches_explicit_formula():
    torch.manual_seed(0)
    dim, heads = 8, 2
    ssa = _quiet_eval(SpikingSelfAttention(dim, heads, attn_threshold=0.5))
    x = (torch.rand(T, B, dim, 2, 3) < 0.6).float()
    grabbed = {}
    for b in ("q", "k", "v"):
        getattr(ssa, f"{b}_lif").register_forward_hook(lambda m, i, o, b=b: grabbed.__setitem__(b, o))
    ssa.attn_lif.register_forward_hook(lambda m, i, o: grabbed.__setitem__("attn_in", i[0]))
    ssa(x)
    d, n = dim // heads, 6
    q, k, v = (grabbed[b].reshape(heads, d, n).transpose(1, 2) for b in "qkv")  # [h, N, d]
    expected = (q @ (k.transpose(1, 2) @ v)) * SSA_SCALE  # [h, N, d]
    assert SSA_SCALE == 0.125
    assert torch.allclose(grabbed["attn_in"].reshape(heads, d, n).transpose(1, 2), expected)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        TokenAttention(10, 3, attn_threshold=1.0, multi_scale=True)
