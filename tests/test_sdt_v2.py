"""The Spike-driven Transformer V2 (Meta-SpikeFormer, msvit.models.spike_driven_transformer_v2): the release's exact
parameter counts with and without head_kd, BNAndPad's border and RepConv's sequence by hand, the attention formula,
the release's key layout loading strictly, batch independence, kd's two heads, the argument checks, and the energy
rule for the new layers. Parity with the authors' own code was measured at development time (docs/baselines.md)."""
import pytest
import timm
import torch
from torch import nn

import msvit
from busy import calibrate_batch_norms
from msvit.config import check_model_kwargs
from msvit.energy import EnergyMeter
from msvit.errors import ConfigError
from msvit.layers import BNAndPad, RepConv, RepConvSelfAttention
from msvit.neurons import LIF
from msvit.zoo import load_model

# (model, params with kd=False, with kd=True): baselines.md §5.2, counted on the release's models.py
COUNTS = [("metaspikformer_8_256", 15_112_208, 15_473_208), ("metaspikformer_8_384", 31_333_864, 31_814_864),
          ("metaspikformer_8_512", 55_350_248, 55_991_248), ("metaspikformer_8_768", 123_741_160, 124_702_160)]
TINY = dict(embed_dim=[8, 16, 16, 32], num_heads=2, img_size=32, num_classes=5, T=2)


def tiny(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("metaspikformer_8_512", **{**TINY, **kwargs})


def images(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2


def busy(model: nn.Module) -> nn.Module:
    """In evaluation, with running statistics from a batch and every batch norm's bias raised: neurons fire."""
    calibrate_batch_norms(model, images(8))
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            bn.bias.add_(0.7)
    return model.eval()


@pytest.mark.parametrize("name,plain,with_kd", COUNTS, ids=[c[0] for c in COUNTS])
def test_parameter_counts_equal_the_release(name, plain, with_kd):
    for kd, expected in ((False, plain), (True, with_kd)):
        with torch.device("meta"):
            model = timm.create_model(name, kd=kd)
        assert msvit.count_parameters(model) == expected
    assert model.T == 1 and model.pretrained_cfg["first_conv"] == "downsample1_1.encode_conv"


def _bn(bn: nn.BatchNorm2d, mean, var, weight, bias) -> None:
    with torch.no_grad():
        for t, v in ((bn.running_mean, mean), (bn.running_var, var), (bn.weight, weight), (bn.bias, bias)):
            t.copy_(torch.tensor(v, dtype=t.dtype))
    bn.eps = 0.0


def test_bn_and_pad_fills_the_border_with_the_batch_norms_image_of_zero():
    layer = BNAndPad(1, 2).eval()
    _bn(layer.bn, [1.0, 2.0], [4.0, 9.0], [2.0, 3.0], [0.5, -1.0])
    x = torch.tensor([[[[1.0, 3.0], [5.0, -1.0]], [[2.0, 5.0], [8.0, -1.0]]]])
    out = layer(x)
    assert out.shape == (1, 2, 4, 4)
    # interior: (x - mean) / sqrt(var) * weight + bias; border: bias - mean * weight / sqrt(var) = -0.5, -3
    assert torch.equal(out[0, 0, 1:3, 1:3], torch.tensor([[0.5, 2.5], [4.5, -1.5]]))
    assert torch.equal(out[0, 1, 1:3, 1:3], torch.tensor([[-1.0, 2.0], [5.0, -4.0]]))
    border = torch.ones(4, 4, dtype=torch.bool)
    border[1:3, 1:3] = False
    assert (out[0, 0][border] == -0.5).all() and (out[0, 1][border] == -3.0).all()
    layer.bn.eps = 1e-5
    layer.train()  # in training too the border reads the running statistics, as this call updated them
    out = layer(x)
    assert torch.allclose(out[0, :, 0, 0], layer.pad_values()) and not torch.allclose(layer.pad_values(),
                                                                                       torch.tensor([-0.5, -3.0]))


def test_repconv_is_the_release_sequence():
    rep = RepConv(1, 2).eval()
    assert [k for k in rep.state_dict() if k.endswith("weight")] == [
        "body.0.weight", "body.1.bn.weight", "body.2.0.weight", "body.2.1.weight", "body.2.2.weight"]
    with torch.no_grad():
        rep.body[0].weight.fill_(2.0)                       # 1x1: y = 2x
        _bn(rep.body[1].bn, [0.5], [1.0], [1.0], [0.0])     # BN: y - 0.5, so the border holds -0.5
        rep.body[2][0].weight.zero_()[0, 0, 0, 0] = 1.0     # depthwise 3x3, no padding: the window's top-left tap
        rep.body[2][1].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        _bn(rep.body[2][2], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0])
    out = rep(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    # padded 4x4: border -0.5, interior [[1.5, -0.5], [-0.5, 1.5]]; the top-left taps: three border cells, then 1.5
    expected = torch.tensor([[-0.5, -0.5], [-0.5, 1.5]])
    assert torch.equal(out[0], torch.stack([expected, -expected]))


def test_repconv_folds_into_one_zero_padded_3x3_conv_in_evaluation():
    """What msvit.energy charges a RepConv as: the 3x3 conv (and a bias) it equals."""
    torch.manual_seed(0)
    rep = RepConv(3, 4).eval()
    for bn in (rep.body[1].bn, rep.body[2][2]):
        _bn(bn, torch.randn(bn.num_features).tolist(), (torch.rand(bn.num_features) + 0.5).tolist(),
            (torch.rand(bn.num_features) + 0.5).tolist(), torch.randn(bn.num_features).tolist())
    w1, dw, w2 = rep.body[0].weight[:, :, 0, 0], rep.body[2][0].weight[:, 0], rep.body[2][1].weight[:, :, 0, 0]
    a1 = rep.body[1].bn.weight / rep.body[1].bn.running_var.sqrt()
    a2 = rep.body[2][2].weight / rep.body[2][2].running_var.sqrt()
    folded = torch.einsum("o,oc,c,cxy,ci->oixy", a2, w2, a1, dw, w1)
    x = (torch.rand(2, 3, 5, 5) < 0.4).float()
    with torch.no_grad():
        bias = rep(torch.zeros(1, 3, 5, 5))[0, :, 2, 2]
        assert torch.allclose(rep(x), nn.functional.conv2d(x, folded, bias, padding=1), atol=1e-5)


def test_attention_is_lif_half_of_q_kt_v_scaled_with_head_lif_first_and_no_output_neuron():
    torch.manual_seed(0)
    attn = RepConvSelfAttention(8, 2, "torch").train()
    with torch.no_grad():  # q, k and v fire often, so the attention neuron fires too
        for b in "qkv":
            getattr(attn, f"{b}_conv")[1].bias.fill_(2.0)
    seen = {}
    for name in ("head_lif", "q_lif", "k_lif", "v_lif", "attn_lif"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    attn.proj_conv.register_forward_hook(lambda m, i, o: seen.update(proj=(i[0], o)))
    x = torch.randn(2, 3, 8, 4, 4) * 3  # [T, B, C, H, W]
    out = attn(x)
    msvit.reset_neurons(attn)
    assert torch.equal(seen["head_lif"][0], x) and attn.attn_lif.v_threshold == 0.5
    q, k, v = (seen[f"{b}_lif"][1].flatten(3).reshape(2, 3, 2, 4, 16) for b in "qkv")  # [T, B, heads, d, N]
    assert all(s.sum() > 0 for s in (q, k, v))
    expected = torch.einsum("tbhdn,tbhdm,tbhem->tbhen", q, k, v) * 0.125  # Q (K^T V) per token, then scaled
    assert torch.allclose(seen["attn_lif"][0], expected.reshape(2, 3, 8, 16), atol=1e-6)
    assert seen["attn_lif"][1].sum() > 0
    assert torch.equal(seen["proj"][0], seen["attn_lif"][1].flatten(0, 1).reshape(6, 8, 4, 4))
    assert torch.equal(out, seen["proj"][1].reshape(out.shape))  # the projection's BN, no output neuron
    assert not ((out == 0) | (out == 1)).all()


def _release_state(model: nn.Module) -> dict:
    """Our state_dict, checked against the release's key names (baselines.md §5.4)."""
    state = model.state_dict()
    for key, shape in {"downsample1_1.encode_conv.bias": (4,), "downsample1_2.encode_lif" + "": None,
                       "ConvBlock1_1.0.Conv.pwconv1.weight": (8, 4, 1, 1), "ConvBlock1_1.0.Conv.dwconv.weight":
                       (8, 1, 7, 7), "ConvBlock2_2.0.conv1.weight": (64, 16, 3, 3), "ConvBlock1_2.0.bn2.weight": (8,),
                       "block3.5.attn.q_conv.0.body.0.weight": (16, 16, 1, 1),
                       "block3.5.attn.q_conv.0.body.1.bn.running_mean": (16,),
                       "block3.0.attn.k_conv.0.body.2.0.weight": (16, 1, 3, 3),
                       "block3.0.attn.v_conv.0.body.2.1.weight": (16, 16, 1, 1),
                       "block4.1.attn.proj_conv.0.body.2.2.bias": (32,), "block4.1.attn.proj_conv.1.weight": (32,),
                       "block4.1.mlp.fc1_conv.weight": (128, 32, 1), "block4.1.mlp.fc2_bn.running_var": (32,),
                       "downsample4.encode_conv.weight": (32, 16, 3, 3), "head.weight": (5, 32),
                       "head_kd.bias": (5,)}.items():
        assert shape is None or tuple(state[key].shape) == shape, key
    return state


def test_the_release_key_layout_loads_strictly():
    model = tiny(kd=True)
    state = {k: v.clone() + 1 if v.is_floating_point() else v for k, v in _release_state(model).items()}
    copy_ = tiny(kd=True)
    msvit.load_checkpoint(copy_, {"model": state, "epoch": 3, "args": None}, strict=True)
    assert all(torch.equal(a, state[k]) for k, a in copy_.state_dict().items())
    loaded = load_model({"model": state}, model="metaspikformer_8_512", kd=True, **TINY)
    assert torch.equal(loaded.head_kd.weight, state["head_kd.weight"]) and not loaded.training
    with pytest.raises(msvit.CheckpointError, match="unexpected keys.*head_kd"):
        msvit.load_checkpoint(tiny(), {"model": state}, strict=True)  # the 55M-kd checkpoint needs kd=True


def test_batch_independence_in_evaluation():
    model = busy(tiny())
    with torch.no_grad():
        x = images(3)
        assert torch.equal(model(x[:1]), model(x)[:1])
        features = model.forward_features(x)
        assert torch.equal(model.forward_features(x[:1]), features[:1]) and model(x).abs().sum() > 0


def test_kd_averages_the_two_heads_in_evaluation_and_returns_both_in_training():
    model = tiny(kd=True).train()
    x = images(3)
    with torch.no_grad():
        head, head_kd = model(x)
        assert not torch.equal(head, head_kd)
        model.eval()
        spikes = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), (model.head(spikes) + model.head_kd(spikes)) / 2, atol=1e-6)
    model.reset_classifier(3)
    assert model.head_kd.out_features == 3


def test_arguments_are_checked():
    assert check_model_kwargs("metaspikformer_8_256", {"T": 4, "kd": True})["kd"] is True
    assert check_model_kwargs("metaspikformer_8_256", {"embed_dim": (8, 16, 16, 32)})["embed_dim"] == [8, 16, 16, 32]
    for kwargs, message in (({"embed_dim": [8, 16, 16]}, "four positive widths"), ({"embed_dim": [7, 16, 16, 32]},
                            "C0 must be even"), ({"num_heads": 3}, "multiples of num_heads"),
                            ({"batch_coupled_ssa": True}, "none of the baseline releases")):
        with pytest.raises(ConfigError, match=message):
            check_model_kwargs("metaspikformer_8_256", kwargs)
    with pytest.raises(ConfigError, match="per sample in every release"):
        msvit.set_batch_coupled_ssa(tiny(), True)


def _rates(model: nn.Module, x: torch.Tensor) -> dict:
    """Every LIF's output spikes in one forward (hooks of the test's own)."""
    out = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: out.update({n: o.detach()}))
             for n, m in model.named_modules() if isinstance(m, LIF)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def test_energy_charges_the_new_layers_by_hand():
    model = busy(tiny(kd=True))
    x, T = images(2), 2
    spikes = _rates(model, x)
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(x)
    report = meter.report()
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert report["unmetered"] == []
    fr = {name: float(s.mean()) for name, s in spikes.items()}
    assert min(fr[n] for n in ("ConvBlock1_1.0.Conv.lif2", "downsample3.encode_lif", "block3.0.attn.head_lif",
                                "block4.1.attn.attn_lif", "block3.0.attn.k_lif", "block3.0.attn.q_lif", "lif")) > 0
    # the stem's 7x7/2 conv on the image: MACs once per image, 4 x 3 x 49 x 16 x 16
    assert layers["downsample1_1.encode_conv"]["kind"] == "MAC"
    assert layers["downsample1_1.encode_conv"]["mac_flops"] == 4 * 3 * 49 * 256
    # spiking convs: fr(input) x T x FLOPs (dwconv: 8 channels x 49 taps x 16 x 16 at lif2's rate)
    dw = layers["ConvBlock1_1.0.Conv.dwconv"]
    assert dw["kind"] == "AC" and dw["flops"] == 8 * 49 * 256
    assert dw["sops"] == pytest.approx(fr["ConvBlock1_1.0.Conv.lif2"] * T * 8 * 49 * 256)
    assert layers["downsample3.encode_conv"]["sops"] == pytest.approx(fr["downsample3.encode_lif"] * T * 16 * 16 * 9 * 4)
    # SepConv's second pointwise conv reads real values: dense MACs at every step, 8 x 4 x 256 x T
    assert layers["ConvBlock1_1.0.Conv.pwconv2"]["kind"] == "MAC"
    assert layers["ConvBlock1_1.0.Conv.pwconv2"]["mac_flops"] == 8 * 4 * 256 * T
    # RepConv: the folded 3x3 conv on the head neuron's spikes, 16 x 16 x 9 x (2 x 2 tokens)
    q = layers["block3.0.attn.q_conv"]
    assert q["kind"] == "AC" and q["flops"] == 16 * 16 * 9 * 4
    assert q["sops"] == pytest.approx(fr["block3.0.attn.head_lif"] * T * 16 * 16 * 9 * 4)
    assert layers["block4.1.attn.proj_conv"]["sops"] == pytest.approx(fr["block4.1.attn.attn_lif"] * T * 32 * 32 * 9 * 4)
    # SSA's products: N x C x d at the rates of K and Q (d = 16 / 2 heads)
    assert layers["block3.0.attn.k_t_v"]["sops"] == pytest.approx(fr["block3.0.attn.k_lif"] * T * 4 * 16 * 8)
    assert layers["block3.0.attn.q_kv"]["sops"] == pytest.approx(fr["block3.0.attn.q_lif"] * T * 4 * 16 * 8)
    for head in ("head", "head_kd"):  # both read the head neuron's spikes
        assert layers[head]["sops"] == pytest.approx(fr["lif"] * T * 32 * 5)
    assert not any(name.startswith("block3.0.attn.q_conv.") for name in layers)  # one entry per RepConv
    assert report["energy_mj"] == pytest.approx(sum(layer["energy_mj"] for layer in report["layers"]))
