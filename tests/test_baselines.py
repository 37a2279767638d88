"""The baselines (msvit.models: spikformer, spikingformer, spike_driven_transformer): exact parameter counts both ways, hand-computed pieces (SDSA with and without
the DVS erosion, the SPS pool order, the membrane shortcut, tau 1.5), batch independence, the optimised path
against the reference path, one compiled graph, and timm's contract. Their parity with the authors' own code was
measured at development time (README, 'The baselines'); their key layouts are in test_checkpoint."""
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import msvit
from busy import calibrate_batch_norms, excite_ssa
from msvit.models import BASELINE_ARCHS
from msvit.models.spike_driven_transformer_v2 import SDT_V2_ARCHS
from msvit.models.stmixer import STMIXER_ARCHS
from msvit.layers import MembraneMLP
from msvit.layers import SpikeDrivenSelfAttention
from msvit.errors import ConfigError
from msvit.layers import SpikingSelfAttention
from msvit.neurons import LIF

KEYS = Path(__file__).parent / "data" / "keys"
# the one-stage baselines with a layered stem; the Spike-driven Transformer V2's four stages are tested in test_sdt_v2,
# STMixer in test_stmixer
ONE_STAGE = [name for name in msvit.BASELINE_NAMES if name not in SDT_V2_ARCHS and name not in STMIXER_ARCHS]
DEAD = re.compile(r"\.norm[12]\.|^pos_embed$|^norm\.|\.talking_heads\.")
# (model, kwargs, key file of the release, our count, the release's count with its never-used parameters: the spec)
COUNTS = [
    ("spikformer_8_384", {}, "spikformer_8_384", 16_816_024, 16_828_312),
    ("spikformer_8_512", {}, "spikformer_8_512", 29_689_384, 29_705_768),
    ("spikformer_8_768", {}, "spikformer_8_768", 66_338_632, 66_363_208),
    ("spikformer_cifar_4_384", {}, "spikformer_cifar_4_384", 9_324_730, 9_330_874),
    ("spikformer_dvs_2_256", {}, "spikformer_dvs_2_256", 2_566_666, 2_585_610),
    ("spikingformer_8_384", {}, None, 16_816_024, 16_828_312),
    ("spikingformer_8_512", {}, None, 29_689_384, 29_705_768),
    ("spikingformer_8_768", {}, "spikingformer_8_768", 66_338_632, 66_363_208),
    ("spikingformer_cifar_4_384", {}, "spikingformer_cifar10_4_384", 9_320_122, 9_326_266),
    ("spikingformer_cifar_4_384", dict(num_classes=100, num_heads=8), "spikingformer_cifar100_4_384", 9_354_772,
     9_360_916),
    ("spikingformer_cifar_4_384", dict(embed_dim=256, num_heads=8), None, 4_152_106, 4_156_202),  # 4-256
    ("spikingformer_cifar_4_384", dict(depth=2), None, 5_762_746, 5_765_818),                      # 2-384
    ("spikingformer_dvs_2_256", dict(num_classes=10), "spikingformer_cifar10dvs_2_256", 2_566_666, 2_568_714),
    ("spikingformer_dvs_2_256", {}, "spikingformer_dvs128_2_256", 2_566_923, 2_568_971),
    ("sdt_8_384", {}, "sdt_8_384", 16_816_024, 16_816_536),
    ("sdt_6_512", {}, "sdt_6_512", 23_373_352, 23_373_736),
    ("sdt_8_512", {}, "sdt_8_512", 29_689_384, 29_689_896),
    ("sdt_10_512", {}, "sdt_10_512", 36_005_416, 36_006_056),
    ("sdt_8_768", {}, "sdt_8_768", 66_338_632, 66_339_144),
    ("sdt_cifar_2_512", {}, "sdt_cifar10_2_512", 10_233_418, 10_233_546),
    ("sdt_dvs_2_256", dict(num_classes=10, pooling_stat="0011", dvs_mode=True, img_size=64),
     "sdt_cifar10dvs_2_256", 2_566_666, 2_566_794),
    ("sdt_dvs_2_256", {}, "sdt_dvs128_2_256", 2_566_923, 2_567_051),
]


def dead_parameters(key_file: str) -> int:
    total = 0
    for line in (KEYS / f"upstream_{key_file}.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        if DEAD.search(name):
            total += torch.Size(int(d) for d in shape.strip("()").split(",") if d.strip()).numel()
    return total


def test_every_baseline_has_a_count():
    assert {name for name, *_ in COUNTS} == set(BASELINE_ARCHS) - set(SDT_V2_ARCHS) - set(STMIXER_ARCHS) == set(ONE_STAGE)
    assert set(msvit.BASELINE_NAMES) <= set(timm.list_models())


@pytest.mark.parametrize("name,kwargs,key_file,ours,release", COUNTS,
                         ids=[f"{c[0]}-{c[2] or '-'.join(f'{k}{v}' for k, v in c[1].items()) or 'no-key-file'}"
                              for c in COUNTS])
def test_parameter_counts_with_and_without_the_dead_parameters(name, kwargs, key_file, ours, release):
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert msvit.count_parameters(model) == ours
    # without a key file: the ImageNet Spikingformer's are Spikformer's; the CIFAR sizes, two LayerNorms per block
    dead = dead_parameters(key_file) if key_file else release - ours
    if not key_file and "cifar" in name:
        assert dead == model.config["depth"] * 2 * 2 * model.config["embed_dim"]
    assert dead > 0 and ours + dead == release


def lif_by_hand(x: torch.Tensor, tau: float = 2.0, threshold: float = 1.0) -> torch.Tensor:
    """Leaky integrate-and-fire over the leading time axis, hard reset to 0: one step at a time."""
    v, out = torch.zeros_like(x[0]), []
    for x_t in x:
        v = v + (x_t - v) / tau
        spike = (v >= threshold).float()
        v = v * (1 - spike)
        out.append(spike)
    return torch.stack(out)


def identity_batch_norms(module: nn.Module) -> None:
    """Evaluation-mode batch norms that pass their input unchanged."""
    for bn in (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.eps, bn.running_mean, bn.running_var = 0.0, torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var)
    module.eval()


def max_pool_3x3_by_hand(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 max over the last two axes, stride 1, out-of-range cells ignored."""
    out = torch.empty_like(x)
    rows, cols = x.shape[-2:]
    for i in range(rows):
        for j in range(cols):
            out[..., i, j] = x[..., max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].amax((-2, -1))
    return out


@pytest.mark.parametrize("dvs_mode", [False, True], ids=["sdsa", "sdsa-dvs-mode"])
def test_spike_driven_self_attention_by_hand(dvs_mode):
    T, B, C, H, W, heads = 3, 2, 4, 3, 3, 2
    attn = SpikeDrivenSelfAttention(C, heads, "torch", dvs_mode=dvs_mode)
    perm = torch.tensor([1, 0, 3, 2])
    with torch.no_grad():  # q and k copy the input spikes, v swaps channel pairs; projection: identity
        attn.q_conv.weight.copy_(2 * torch.eye(C)[:, :, None])
        attn.k_conv.weight.copy_(2 * torch.eye(C)[:, :, None])
        attn.v_conv.weight.copy_(2 * torch.eye(C)[perm][:, :, None])
        attn.proj_conv.weight.copy_(torch.eye(C)[:, :, None])
        attn.proj_conv.bias.zero_()
    identity_batch_norms(attn)
    torch.manual_seed(3)
    x = 2.0 * (torch.rand(T, B, C, H, W) > 0.8)   # the shortcut neuron fires exactly where x is 2
    s = (x == 2).float()
    expected, masks = torch.zeros_like(x), []
    for b in range(B):
        k, v = s[:, b], s[:, b][:, perm]            # [T, C, H, W]
        if dvs_mode:
            k, v = max_pool_3x3_by_hand(k), max_pool_3x3_by_hand(v)
        for h in range(heads):
            ch = slice(h * C // heads, (h + 1) * C // heads)
            # the release's [N, d] layout per head and step: tokens raster order, channels of the head
            kv = (k[:, ch] * v[:, ch]).flatten(2).transpose(1, 2)    # [T, N, d]
            if dvs_mode:
                kv = max_pool_3x3_by_hand(kv)
            mask = lif_by_hand(kv.sum(1), threshold=0.5)              # [T, d]: per channel, integrated over T
            masks.append(mask)
            y = s[:, b, ch].flatten(2).transpose(1, 2) * mask[:, None, :]
            if dvs_mode:
                y = max_pool_3x3_by_hand(y)
            expected[:, b, ch] = y.transpose(1, 2).reshape(T, -1, H, W)
    with torch.no_grad():
        out = attn(x)
    masks = torch.stack(masks)
    assert 0 < masks.sum() < masks.numel() and expected.sum() > 0  # some channels pass, others do not
    assert torch.equal(out, expected)


def test_sps_pools_spikes_and_adds_its_embedding_to_them():
    """Spikformer's stem on a 1-channel path: conv (x2), LIF, then the pool; the embedding adds its spikes."""
    model = timm.create_model("spikformer_cifar_4_384", embed_dim=8, num_heads=2, depth=0, T=2, in_chans=1,
                              neuron_backend="torch")
    stem = model.patch_embed
    with torch.no_grad():
        for conv in (m for m in stem.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = 2.0 / conv.in_channels  # every channel: 2 x the mean of the input channels
    identity_batch_norms(stem)
    torch.manual_seed(0)
    image = torch.rand(1, 1, 16, 16)
    x = image.unsqueeze(0).expand(2, -1, -1, -1, -1)
    expected = x
    for pooled in (False, False, True, True):   # pooling_stat '0011'
        spikes = lif_by_hand(2 * expected.mean(2, keepdim=True).expand(-1, -1, 1, -1, -1))
        expected = nn.functional.max_pool2d(spikes.flatten(0, 1), 3, 2, 1).unflatten(0, (2, 1)) if pooled else spikes
    expected = expected + lif_by_hand(2 * expected)
    with torch.no_grad():
        out = stem(x)
    assert torch.equal(out[:, :, :1], expected) and out.max() == 2  # spike + embedding spike: counts up to 2
    pool_first = lif_by_hand(nn.functional.max_pool2d(2 * x.flatten(0, 1), 3, 2, 1).unflatten(0, (2, 1)))
    assert not torch.equal(pool_first, lif_by_hand(2 * x)[:, :, :, ::2, ::2])  # the order matters on this input


@pytest.mark.parametrize("inner_residual", [False, True])
def test_membrane_mlp_starts_each_branch_with_a_neuron(inner_residual):
    dim, hidden, tau = 3, 3 if inner_residual else 5, 1.5
    mlp = MembraneMLP(dim, hidden, "torch", tau=tau, inner_residual=inner_residual)
    identity_batch_norms(mlp)
    torch.manual_seed(1)
    x = torch.randn(4, 2, dim, 2, 2) * 2   # a real-valued residual stream
    conv = lambda layer, s: torch.einsum("oc,tbchw->tbohw", layer.weight[:, :, 0, 0], s) + layer.bias[:, None, None]
    h = conv(mlp.fc1_conv, lif_by_hand(x, tau))
    h = h + x if inner_residual else h
    expected = conv(mlp.fc2_conv, lif_by_hand(h, tau)) + (h - x if inner_residual else 0)
    with torch.no_grad():
        out = mlp(x)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0) and out.abs().sum() > 0
    assert not torch.equal(lif_by_hand(x, tau), lif_by_hand(x, 2.0))  # tau 1.5 differs from 2 on this input


def test_membrane_blocks_carry_real_values_and_no_head_neuron():
    model = timm.create_model("spikingformer_dvs_2_256", embed_dim=32, num_heads=2, depth=1, T=2)
    assert {m.tau for m in model.modules() if isinstance(m, LIF)} == {1.5}  # the DVS release's tau, every neuron
    attn = model.block[0].attn
    assert isinstance(attn, SpikingSelfAttention) and attn.membrane and not hasattr(attn, "proj_lif")
    x = (torch.rand(2, 2, 2, 32, 32) > 0.7).float()
    features = model.eval().forward_features(x)
    assert (features != features.round()).any()  # the stream ends in a batch norm: real, not spike counts
    sdt = timm.create_model("sdt_dvs_2_256", embed_dim=32, num_heads=2, depth=1, T=2)
    assert isinstance(sdt.head_lif, LIF) and not hasattr(model, "head_lif")


# one small model per family and dataset variant: (name, kwargs, input shape)
VARIANTS = [
    ("spikformer_8_384", dict(img_size=64), (3, 3, 64, 64)),
    ("spikformer_cifar_4_384", {}, (3, 3, 32, 32)),
    ("spikformer_dvs_2_256", dict(img_size=64), (3, 2, 2, 64, 64)),
    ("spikingformer_8_384", dict(img_size=64), (3, 3, 64, 64)),
    ("spikingformer_cifar_4_384", {}, (3, 3, 32, 32)),
    ("spikingformer_dvs_2_256", dict(img_size=64), (3, 2, 2, 64, 64)),
    ("sdt_8_384", dict(img_size=64), (3, 3, 64, 64)),
    ("sdt_cifar_2_512", {}, (3, 3, 32, 32)),
    ("sdt_dvs_2_256", dict(img_size=32, pooling_stat="0011", dvs_mode=True), (3, 2, 2, 32, 32)),
    ("sdt_dvs_2_256", dict(img_size=64), (3, 2, 2, 64, 64)),
]
VARIANT_IDS = [f"{n}-dvs-mode" if kw.get("dvs_mode") else n for n, kw, _ in VARIANTS]


def busy_model(name: str, kwargs: dict, x: torch.Tensor) -> nn.Module:
    """A small model whose batch norms shift the neurons' inputs (and SSA's Q/K/V up), so that every neuron
    fires, with running statistics measured on `x`."""
    torch.manual_seed(0)
    model = timm.create_model(name, T=2, embed_dim=32, num_heads=2, depth=2, num_classes=5, **kwargs)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            bn.bias.uniform_(-0.4, 0.8)
    return calibrate_batch_norms(excite_ssa(model), x)


def variant_input(shape: tuple) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(shape) if len(shape) == 4 else torch.randint(0, 3, shape).float()


def spikes_and_logits(model: nn.Module, x: torch.Tensor, train: bool):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
             for m in model.modules() if isinstance(m, LIF)]
    model.train(train).zero_grad()
    logits = model(x)
    if train:
        logits.square().sum().backward()
    for hook in hooks:
        hook.remove()
    return seen, logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,kwargs,shape", VARIANTS, ids=VARIANT_IDS)
def test_optimised_path_gives_the_reference_spikes(name, kwargs, shape):
    x = variant_input(shape)
    model = busy_model(name, kwargs, x)
    fast = spikes_and_logits(model, x, train=True)
    msvit.use_reference_implementation(model)
    reference = spikes_and_logits(model, x, train=True)
    assert len(fast[0]) == len(reference[0]) == sum(isinstance(m, LIF) for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(fast[0], reference[0]))
    assert all(s.sum() > 0 for s in fast[0])  # every neuron fires
    assert set(fast[2]) == {name for name, _ in model.named_parameters()}  # no parameter left unused (DDP)
    assert torch.allclose(fast[1], reference[1], atol=1e-5, rtol=0)
    largest = max(float(g.abs().max()) for g in reference[2].values())
    for key, grad in fast[2].items():
        assert torch.allclose(grad, reference[2][key], atol=1e-5 * largest, rtol=0), key


@pytest.mark.parametrize("name,kwargs,shape", VARIANTS, ids=VARIANT_IDS)
def test_a_sample_gives_the_same_output_alone_as_in_its_batch(name, kwargs, shape):
    x = variant_input(shape)
    model = busy_model(name, kwargs, x).eval()
    with torch.no_grad():
        together = model(x)
        for i in range(x.shape[0]):
            assert torch.allclose(model(x[i:i + 1]), together[i:i + 1], atol=1e-6, rtol=0), i
    assert together.std(0).max() > 0  # the samples differ


@pytest.mark.parametrize("name,kwargs,shape", [VARIANTS[1], VARIANTS[5], VARIANTS[8]],
                         ids=[VARIANT_IDS[1], VARIANT_IDS[5], VARIANT_IDS[8]])
def test_each_family_traces_as_one_graph(name, kwargs, shape):
    torch._dynamo.reset()
    model = timm.create_model(name, T=2, embed_dim=32, num_heads=2, depth=1, num_classes=5, **kwargs).train()
    explanation = torch._dynamo.explain(model)(variant_input(shape))
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.parametrize("name,kwargs,shape", [VARIANTS[0], VARIANTS[4], VARIANTS[9]],
                         ids=[VARIANT_IDS[0], VARIANT_IDS[4], VARIANT_IDS[9]])
def test_timm_contract(name, kwargs, shape, tmp_path):
    x = variant_input(shape)
    model = busy_model(name, kwargs, x)
    with torch.no_grad():
        model.eval()
        logits = model(x)
        assert torch.equal(model.forward_head(model.forward_features(x)), logits)
        model.per_step_logits = True   # TET: logits per step, whose mean over T is the output
        per_step = model(x)
        model.per_step_logits = False
        assert per_step.shape == (3, 2, 5) and torch.allclose(per_step.mean(1), logits, atol=1e-6)
    groups = model.group_matcher()
    assert re.match(groups["stem"], "patch_embed.proj_conv.weight")
    assert re.match(groups["blocks"], "block.1.attn.q_conv.weight").group(1) == "1"
    reference = spikes_and_logits(model, x, train=True)
    model.set_grad_checkpointing(True)
    checkpointed = spikes_and_logits(model, x, train=True)
    assert torch.equal(reference[1], checkpointed[1])
    assert all(torch.allclose(g, checkpointed[2][k], atol=1e-6) for k, g in reference[2].items())
    model.reset_classifier(4, global_pool="")  # unpooled: a head at every position and time step
    grid = model.eval().forward_features(x).shape[-2:]
    assert model(x).shape == (3, 2, *grid, 4)
    model.reset_classifier(0, global_pool="avg")
    assert model(x).shape == (3, 32)
    copy_ = timm.create_model(name, T=2, embed_dim=32, num_heads=2, depth=2, num_classes=0, **kwargs)
    msvit.load_checkpoint(copy_, {"state_dict": model.state_dict()}, strict=True)  # our own layout round-trips
    assert all(torch.equal(a, b) for a, b in zip(copy_.state_dict().values(), model.state_dict().values()))


def test_no_baseline_couples_the_batch_and_the_release_settings_reach_the_layers():
    for name in ONE_STAGE:
        model = timm.create_model(name, embed_dim=32, num_heads=2, depth=1)
        assert model.config["batch_coupled_ssa"] is False
        assert not any(getattr(m, "batch_coupled", False) for m in model.modules())
    with pytest.raises(ConfigError, match="batch_coupled_ssa True: none of the baseline releases"):
        timm.create_model("spikformer_cifar_4_384", batch_coupled_ssa=True)
    with pytest.raises(ConfigError, match="run their SSA per sample in every release"):
        msvit.set_batch_coupled_ssa(model, True)
    assert not any(getattr(m, "batch_coupled", False) for m in model.modules())
    dvs = timm.create_model("spikformer_dvs_2_256", embed_dim=32, num_heads=2, depth=1).block[0].attn
    cifar = timm.create_model("spikformer_cifar_4_384", embed_dim=48, num_heads=12, depth=1).block[0].attn
    assert dvs.scale == 0.25 and dvs.q_conv.bias is None and cifar.scale == 0.125 and cifar.q_conv.bias is not None
    with pytest.raises(TypeError, match="unexpected keyword argument 'embed_dimm'"):
        timm.create_model("spikingformer_8_384", embed_dimm=96)
    with pytest.raises(ConfigError, match="pooling_stat '011'"):
        timm.create_model("sdt_8_384", pooling_stat="011")
    with pytest.raises(ConfigError, match="tau 1.0"):
        timm.create_model("spikingformer_dvs_2_256", tau=1.0)
