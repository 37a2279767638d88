"""MSSA and QKTA specifics: the p branch runs along the raster token sequence, the mask is per head and
token, QKTA is MSSA without p, and SSA computes LIF(Q (K^T V) / 8)."""
import pytest
import torch

from msvit.layers import SSA_SCALE, SpikingSelfAttention, TokenAttention
from msvit.neurons import reset_neurons

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


# ------------------------------------------------------------------ T >= 2, B >= 2 against a per-sample, per-step loop

LOOP_T, LOOP_B, LOOP_C, LOOP_H, LOOP_W, LOOP_HEADS = 3, 3, 8, 2, 3, 2


def _lif_step(v: torch.Tensor, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the LIF (tau 2, hard reset to 0): returns (spikes, membrane after the step)."""
    h = v + (x - v) / 2
    spikes = (h >= threshold).float()
    return spikes, h * (1 - spikes)


def _busy_eval(attn: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with random batch-norm statistics and affine parameters that make most neurons fire sometimes."""
    torch.manual_seed(3)
    attn.eval()
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.3, 1.3)
    return attn


def _fresh_call(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A forward from neurons at rest (a model resets them itself; a bare attention keeps its membranes)."""
    reset_neurons(attn)
    return attn(x)


def _loop_reference(attn, x: torch.Tensor, coupled: bool) -> dict[str, torch.Tensor]:
    """The attention computed sample by sample and step by step from its own layers, one neuron state per
    (neuron, sample); with `coupled` the SSA output neuron keeps one state, visited in the order (t, b)."""
    T, B, C = x.shape[:3]
    heads, d = attn.num_heads, C // attn.num_heads
    ssa = isinstance(attn, SpikingSelfAttention)
    branches = [b for b in ("q", "k", "p", "v") if hasattr(attn, f"{b}_conv")]
    state = {name: [torch.zeros(()) for _ in range(B)] for name in [*branches, "attn", "proj"]}
    out = torch.zeros_like(x)
    masks = []
    for t in range(T):  # time-major, then sample: the order of the release's flattened [T*B] sequence
        for b in range(B):
            tokens = x[t, b].reshape(1, C, -1)  # one sample, one step: [1, C, N]
            spikes = {}
            for name in branches:
                pre = getattr(attn, f"{name}_bn")(getattr(attn, f"{name}_conv")(tokens))[0]
                spikes[name], state[name][b] = _lif_step(state[name][b], pre, 1.0)
            if ssa:
                q, k, v = (spikes[n].reshape(heads, d, -1).transpose(1, 2) for n in "qkv")  # [h, N, d] each
                scores = torch.stack([q[i] @ (k[i].T @ v[i]) for i in range(heads)]) * attn.scale  # [h, N, d]
                fired, state["attn"][b] = _lif_step(state["attn"][b], scores.transpose(1, 2), attn.attn_lif.v_threshold)
                gated = fired.reshape(C, -1)
            else:
                count = spikes["q"].reshape(heads, d, -1).sum(1)
                if "p" in spikes:
                    count = count + spikes["p"].reshape(heads, d, -1).sum(1)
                mask, state["attn"][b] = _lif_step(state["attn"][b], count, attn.attn_lif.v_threshold)  # [h, N]
                masks.append(mask)
                gated = (mask[:, None, :] * spikes["k"].reshape(heads, d, -1)).reshape(C, -1)
            pre = attn.proj_bn(attn.proj_conv(gated[None]))[0]
            slot = 0 if (coupled and ssa) else b
            out[t, b], state["proj"][slot] = (lambda s, v: (s.reshape(x.shape[2:]), v))(
                *_lif_step(state["proj"][slot], pre, 1.0))
    return {"out": out, "mask_sum": sum(m.sum() for m in masks) if masks else None}


@pytest.mark.parametrize("kind", ["mssa", "qkta"])
def test_token_attention_matches_a_per_sample_per_step_loop(kind):
    torch.manual_seed(1)
    attn = _busy_eval(TokenAttention(LOOP_C, LOOP_HEADS, attn_threshold=1.0 if kind == "mssa" else 0.5,
                                     multi_scale=kind == "mssa"))
    x = (torch.rand(LOOP_T, LOOP_B, LOOP_C, LOOP_H, LOOP_W) < 0.5).float()
    with torch.no_grad():
        got = _fresh_call(attn, x)
        expected = _loop_reference(attn, x, coupled=False)
        alone = _fresh_call(attn, x[:, 1:2])
    assert expected["mask_sum"] > 0 and 0 < got.sum() < got.numel()  # masks open and outputs fire: not vacuous
    assert torch.equal(got, expected["out"])
    assert torch.equal(alone, got[:, 1:2])  # a sample's output does not depend on the others of its batch


@pytest.mark.parametrize("coupled", [True, False], ids=["batch-coupled", "per-sample"])
def test_ssa_matches_a_per_sample_per_step_loop(coupled):
    torch.manual_seed(2)
    attn = _busy_eval(SpikingSelfAttention(LOOP_C, LOOP_HEADS, attn_threshold=1.0, batch_coupled=coupled))
    x = (torch.rand(LOOP_T, LOOP_B, LOOP_C, LOOP_H, LOOP_W) < 0.5).float()
    with torch.no_grad():
        got = _fresh_call(attn, x)
        expected = _loop_reference(attn, x, coupled)["out"]
        other = _loop_reference(attn, x, not coupled)["out"]
    assert 0 < got.sum() < got.numel()
    assert not torch.equal(expected, other)  # this input is one where the coupling changes the output
    assert torch.equal(got, expected)


def test_ssa_scale_and_qkv_bias_match_the_loop_and_the_reference_path():
    """Spikformer's variants: scale 0.25 (its CIFAR10-DVS model) and biased q/k/v (its CIFAR model), per sample.
    The stacked projection adds the three biases; one convolution per branch gives the same spikes."""
    torch.manual_seed(3)
    attn = _busy_eval(SpikingSelfAttention(LOOP_C, LOOP_HEADS, attn_threshold=1.0, batch_coupled=False, scale=0.25,
                                           qkv_bias=True))
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(attn, f"{name}_conv").bias.uniform_(-0.5, 0.5)
            getattr(attn, f"{name}_bn").bias.uniform_(1.0, 2.0)  # q, k and v fire often, so Q(K^T V) is large
    assert attn.q_conv.bias is not None and "scale=0.25" in repr(attn)
    x = (torch.rand(LOOP_T, LOOP_B, LOOP_C, LOOP_H, LOOP_W) < 0.5).float()
    fired = []
    attn.attn_lif.register_forward_hook(lambda m, i, out: fired.append(out.sum().item()))
    with torch.no_grad():
        got = _fresh_call(attn, x)
        expected = _loop_reference(attn, x, coupled=False)["out"]
        attn.fuse_projections = False
        separate = _fresh_call(attn, x)
        attn.scale = SSA_SCALE
        _fresh_call(attn, x)
    assert 0 < got.sum() < got.numel()
    assert torch.equal(got, expected) and torch.equal(separate, got)
    assert fired[0] == fired[1] > fired[2]  # the scale reaches the attention neuron: at 0.125 it fires less
