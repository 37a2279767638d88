"""STMixer (issue 25): the parameter counts of seed-systems §3, the STM token mixing and the IPSPS stem's shortcut by
hand, batch independence, the release's neuron as the family's defaults, the token-count rule on load, the
release's key layout, and the energy rule of its layers by hand."""
import math
from pathlib import Path

import pytest
import timm
import torch

import msvit
from msvit.config import parse_args
from msvit.energy import E_AC_PJ, E_MAC_PJ, EnergyMeter
from msvit.models import CheckpointError, load_checkpoint
from msvit.models.stmixer import NEURON_DEFAULTS
from msvit.layers import ProtectedStem, TokenMixing
from msvit.neurons import LIF, Dspike, describe_neurons
from msvit.neurons.surrogates import DspikeFunction
from msvit.zoo import create_dataset_model

T, B = 2, 2
TINY = dict(embed_dim=16, num_heads=2, depth=1, T=T, num_classes=3, img_size=16, neuron_backend="torch")


def tiny(name: str = "stmixer_cifar_4_384", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, **kwargs})


@pytest.mark.parametrize("name, kwargs, count", [
    ("stmixer_8_768", {}, 61_167_432),                      # 16 heads, the default
    ("stmixer_8_768", dict(num_heads=8), 58_708_808),
    ("stmixer_8_768", dict(num_heads=12), 59_938_120),
    ("stmixer_8_768", dict(embed_dim=512), 30_125_608),
    ("stmixer_8_768", dict(embed_dim=384), 19_214_232),
    ("stmixer_cifar_4_384", dict(num_classes=100), 8_258_324),
    ("stmixer_cifar_10_384", dict(num_classes=100), 17_531_156)])
def test_parameter_counts_are_the_specs(name, kwargs, count):
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


def test_stm_mixes_tokens_per_head_by_hand():
    stm = TokenMixing(dim=4, num_tokens=3, num_heads=2)
    with torch.no_grad():
        stm.weight.copy_(torch.arange(18.0).reshape(2, 3, 3) - 8)
    x = torch.randint(0, 2, (T, B, 4, 3)).float()
    out = stm(x)
    for t, b, c, n in torch.cartesian_prod(*(torch.arange(s) for s in out.shape)).tolist():
        head = c // 2  # two channels per head
        assert out[t, b, c, n] == sum(stm.weight[head, n, m] * x[t, b, c, m] for m in range(3))
    with pytest.raises(ValueError, match="built for 3 tokens and got 4"):
        stm(torch.zeros(T, B, 4, 4))


def test_the_stems_shortcut_is_a_strided_conv_on_the_raw_image():
    stem = ProtectedStem(3, 16, downsample_times=2, neurons="torch").eval()
    image = torch.randn(B, 3, 16, 16)
    x = image.unsqueeze(0).expand(T, *image.shape)
    out = stem(x)
    assert out.shape == (T, B, 16, 4, 4)  # no max-pool: the strides alone shrink 16 -> 4
    short = stem.short_bn(torch.nn.functional.conv2d(image, stem.short_conv.weight, stride=4))
    assert torch.allclose(out[:, :, :2], short.expand(T, *short.shape), atol=1e-6)
    with torch.no_grad():
        stem.proj4_conv.weight.zero_()
    again = stem(x)
    assert torch.equal(again[:, :, :2], out[:, :, :2])  # the main path does not reach the shortcut's channels
    assert torch.allclose(again[:, :, 2:], stem.proj4_bn.bias.view(1, 1, -1, 1, 1) - stem.proj4_bn.running_mean.view(
        1, 1, -1, 1, 1) / torch.sqrt(stem.proj4_bn.running_var.view(1, 1, -1, 1, 1) + 1e-5), atol=1e-6)


def test_batch_independence_in_eval():
    model = tiny().eval()
    x = torch.rand(3, 3, 16, 16) * 3
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-6)


def release_neuron(x: torch.Tensor) -> torch.Tensor:
    """The release's LIFSpike (models/spiking_layer.py at 38a0786) from its definition: mem = 0.5 mem + x, Dspike
    gamma 2.5 region 1 on mem - 1, hard reset mem (1 - spike), not detached."""
    mem, spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        mem = 0.5 * mem + x[t]
        spike = DspikeFunction.apply(mem - 1.0, 2.5, 1.0)
        spikes.append(spike)
        mem = mem * (1 - spike)
    return torch.stack(spikes)


def test_the_releases_neuron_is_the_default_of_every_neuron():
    model = tiny()
    neurons = [m for m in model.modules() if isinstance(m, LIF)]
    assert len(neurons) == 4 + 3 + 2  # the stem's, the token mixer's, the FFN's
    for m in neurons:
        fn = m.surrogate_function
        assert (m.kind, m.tau, m.v_threshold, m.detach_reset) == ("lif", 2.0, 0.5, False)
        assert isinstance(fn, Dspike) and (fn.gamma, fn.region) == (5.0, 0.5)
    assert {k: model.config[k] for k in NEURON_DEFAULTS} == NEURON_DEFAULTS
    assert describe_neurons(model).endswith("threshold 0.5, surrogate dspike gamma 5 region 0.5, reset not detached; "
                                            "spikingjelly's torch loop (settings outside the fused kernels)")
    torch.manual_seed(3)
    x = (torch.randn(5, 4, 30, dtype=torch.float64) * 0.8 + 0.5).requires_grad_()
    theirs, ours = release_neuron(x), neurons[0](x)
    assert torch.equal(ours, theirs) and 0 < ours.mean() < 1
    grad = torch.randn_like(x)
    assert torch.allclose(*(torch.autograd.grad(s, x, grad)[0] for s in (ours, theirs)), rtol=1e-12, atol=1e-14)


def test_img_size_builds_its_own_token_mixing_and_other_counts_are_refused():
    small, large = tiny(), tiny(img_size=32)
    assert small.block[0].attn.stm.weight.shape == (2, 16, 16) and large.block[0].attn.stm.weight.shape == (2, 64, 64)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small, {"model": large.state_dict()})
    message = str(info.value)
    assert "mixes 64 tokens (8x8) but this model mixes 16 (img_size 16)" in message and "img_size 32" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="has 2 heads but this model 4: build it with num_heads=2"):
        load_checkpoint(tiny(num_heads=4), {"model": small.state_dict()})


def test_the_releases_layout_loads():
    model = tiny(depth=2)
    ours = model.state_dict()
    release = {}
    for key, value in ours.items():  # the release's names for the STM, the stem and the FFN
        if key.endswith("attn.stm.weight"):
            block = key.split(".")[1]
            release.update({f"block.{block}.token_mix.attn.linear_mix.{h}.weight": w for h, w in enumerate(value)})
        elif key.startswith("patch_embed.proj2_bn."):
            release[key.replace("patch_embed.proj2_bn.", "patch_embd.proj_conv.7.")] = value
        elif key.startswith("patch_embed.short_conv."):
            release[key.replace("patch_embed.short_conv.", "patch_embd.short_proj1.0.")] = value
        else:
            renamed = key.replace(".mlp.fc2_conv.", ".channel_mix.fc2.1.").replace(".attn.fc1_bn.", ".token_mix.fc1.2.")
            release[renamed] = value
    assert any("linear_mix" in k for k in release) and any("channel_mix" in k for k in release)
    fresh = tiny(depth=2)
    load_checkpoint(fresh, {"state_dict": release})
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ours.items())


def test_energy_of_each_layer_by_hand():
    model = tiny().train()  # batch statistics: the neurons fire at random weights
    inputs = {}
    names = ["patch_embed.proj1_conv", "patch_embed.proj2_conv", "patch_embed.proj3_conv", "patch_embed.proj4_conv",
             "block.0.attn.fc1_conv", "block.0.attn.stm", "block.0.attn.fc2_conv", "block.0.mlp.fc1_conv",
             "block.0.mlp.fc2_conv"]
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: inputs.__setitem__(n, a[0].detach().clone())) for n in names]
    x = torch.rand(B, 3, 16, 16) * 3
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(x)
    for h in hooks:
        h.remove()
    layers = {layer["name"]: layer for layer in meter.report()["layers"]}
    # dense MACs per image (16x16 image, D = 16, d = 2: widths 2, 4, 8, 16, 14; 4x4 = 16 tokens; 3 classes)
    dense = {"patch_embed.proj_conv": 2 * 3 * 9 * 16 * 16, "patch_embed.short_conv": 2 * 3 * 4 * 4 * 4 * 4,
             "head": 16 * 3}
    flops = dict(zip(names, [4 * 2 * 9 * 256, 8 * 4 * 9 * 256, 16 * 8 * 9 * 64, 14 * 16 * 9 * 16,
                             16 * 16 * 16, 16 * 16 * 16, 16 * 16 * 16, 64 * 16 * 16, 16 * 64 * 16]))
    for name, macs in dense.items():
        assert layers[name]["kind"] == "MAC" and layers[name]["mac_flops"] == macs
    assert layers["block.0.attn.stm"]["kind"] == "attention"
    fired = 0
    for name in names:  # fr x T x FLOPs per image, fr = the layer's input spikes' mean
        rate = inputs[name].mean().item()
        fired += rate > 0
        assert layers[name]["flops"] == flops[name]
        assert layers[name]["sops"] == pytest.approx(rate * T * flops[name], rel=1e-9), name
    assert fired >= 6
    energy = sum(layers[n]["mac_flops"] * E_MAC_PJ for n in dense) + sum(layers[n]["sops"] * E_AC_PJ for n in names)
    assert sum(layer["energy_mj"] for layer in layers.values()) == pytest.approx(energy * 1e-9, rel=1e-9)
    assert not meter.unmetered and math.isfinite(energy)
    assert msvit.models.model_class("stmixer_8_768").head_reads_spikes is False


def test_a_dataset_folder_builds_it_at_the_datas_img_size():
    recipe = Path(__file__).resolve().parents[1] / "digits" / "digits.yml"  # 16 x 16 digits
    argv = ["--batch-coupled-ssa", "false", "--model", "stmixer_cifar_4_384", "--model-kwargs",
            "{embed_dim: 32, num_heads: 2, depth: 1}"]
    model = create_dataset_model(parse_args(argv, recipe), [msvit.ALL_MODEL_NAMES[0], "stmixer_cifar_4_384"])
    assert model.img_size == 16 and model.num_tokens == (16 // 4) ** 2  # the CIFAR stem's stride 4
    given = create_dataset_model(parse_args([*argv[:5], "{embed_dim: 32, num_heads: 2, depth: 1, img_size: 32}"],
                                            recipe), ["stmixer_cifar_4_384"])
    assert given.img_size == 32  # model_kwargs win
