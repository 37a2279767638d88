"""Neuron settings for ablations (issue 25): the keywords every family takes (`neuron`, `tau`, `v_threshold`,
`surrogate`, `surrogate_alpha`, `surrogate_gamma`, `surrogate_region`, `detach_reset`), the Dspike surrogate, which
settings the fused kernels run, that settings survive `reset_neurons`, their config checks and their checkpoints."""
import math
from pathlib import Path

import pytest
import timm
import torch

import msvit
from msvit.errors import ConfigError
from msvit.neurons import LIF, Dspike, NeuronSettings, describe_neurons, reset_neurons
from msvit.neurons.lif import sj_neuron
from msvit.neurons.surrogates import DspikeFunction

# one tiny model per family: (name, keywords), T=2
FAMILIES = {
    "msvit": ("msvit_cifar_4_384", dict(embed_dim=16, num_heads=2, depths=(1, 1, 1))),
    "qkformer": ("qkformer_cifar_4_384", dict(embed_dim=16, num_heads=2, depths=(1, 1, 1))),
    "spikformer": ("spikformer_cifar_4_384", dict(embed_dim=16, num_heads=2, depth=1)),
    "spikingformer": ("spikingformer_cifar_4_384", dict(embed_dim=16, num_heads=2, depth=1)),
    "sdt": ("sdt_cifar_2_512", dict(embed_dim=16, num_heads=2, depth=1)),
    "sdt_v2": ("metaspikformer_8_256", dict(embed_dim=[8, 16, 16, 16], num_heads=2)),
    "stmixer": ("stmixer_cifar_4_384", dict(embed_dim=16, num_heads=2, depth=1, img_size=16)),  # its own defaults
}
MASKS = ("attn_lif",)  # the attention-mask neurons, which keep their family's threshold


def tiny(family: str, **neurons) -> torch.nn.Module:
    name, kwargs = FAMILIES[family]
    return timm.create_model(name, T=2, num_classes=3, neuron_backend="torch", **kwargs, **neurons)


def test_dspike_gradient_by_hand():
    u = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.3, 1.0, 1.2], requires_grad=True)
    spikes = DspikeFunction.apply(u, 2.5, 1.0)
    assert spikes.tolist() == [0, 0, 0, 1, 1, 1, 1]
    spikes.backward(torch.full_like(u, 2.0))
    by_hand = [0.0 if abs(v) > 1 else 2.0 * 2.5 * (1 - math.tanh(2.5 * v) ** 2) / (2 * math.tanh(2.5))
               for v in u.tolist()]
    assert u.grad.tolist() == pytest.approx(by_hand, rel=1e-5)  # float32
    assert u.grad[3].item() == pytest.approx(2.0 * 2.5 / (2 * math.tanh(2.5)))  # the peak at the threshold
    # its slope integrates to 1 over the region: the derivative of a step from 0 to 1
    grid = torch.linspace(-1, 1, 20001, requires_grad=True)
    DspikeFunction.apply(grid, 2.5, 1.0).sum().backward()
    assert torch.trapezoid(grid.grad, grid.detach()).item() == pytest.approx(1.0, abs=1e-4)


def stmixer_neuron(x: torch.Tensor, gamma: float = 2.5) -> torch.Tensor:
    """STMixer's LIFSpike (`models/spiking_layer.py`) written from its definition: mem = 0.5 mem + x, spike where
    mem >= 1 with Dspike (gamma, region 1) on mem - 1, hard reset mem (1 - spike), not detached."""
    mem, spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        mem = 0.5 * mem + x[t]
        spike = DspikeFunction.apply(mem - 1.0, gamma, 1.0)
        spikes.append(spike)
        mem = mem * (1 - spike)
    return torch.stack(spikes)


def test_stmixer_neuron_forward_is_our_lif_at_threshold_half_and_backward_differs():
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 50) * 0.8 + 0.4).requires_grad_()
    theirs = stmixer_neuron(x)
    ours_neuron = NeuronSettings(v_threshold=0.5, surrogate="dspike", detach_reset=False, backend="torch").make()
    ours = ours_neuron(x)
    assert torch.equal(ours, theirs) and 0 < ours.mean() < 1  # the same spikes: our v is their mem / 2
    grad = torch.randn_like(x)
    g_theirs, = torch.autograd.grad(theirs, x, grad)
    g_ours, = torch.autograd.grad(ours, x, grad)
    assert not torch.allclose(g_ours, g_theirs, atol=1e-3)  # gamma 2.5 on v - 0.5, theirs on mem - 1 = 2 (v - 0.5)
    # the change of variable: Dspike gamma 5, region 0.5 on v - 0.5 is theirs exactly
    reset_neurons(ours_neuron)
    ours_neuron.surrogate_function = Dspike(5.0, 0.5)
    g_mapped, = torch.autograd.grad(ours_neuron(x), x, grad)
    assert torch.allclose(g_mapped, g_theirs, atol=1e-5)


def test_a_threshold_built_in_survives_reset():
    lif = NeuronSettings(v_threshold=0.3, backend="torch").make()
    x = torch.full((2, 5), 0.7)  # h = 0.35 at step 1: fires at 0.3, not at 1
    for _ in range(2):
        reset_neurons(lif)
        assert lif(x)[0].eq(1).all()
    model = tiny("spikformer", v_threshold=0.3)
    reset_neurons(model)
    assert {m.v_threshold for n, m in model.named_modules() if isinstance(m, LIF) and not n.endswith(MASKS)} == {0.3}


def test_a_setting_stored_on_the_node_survives_reset():
    """spikingjelly's reset() restores its memories as built; v_threshold is kept out of them (seed-systems §8)."""
    lif = LIF(backend="torch")
    lif.v_threshold, lif.detach_reset, lif.surrogate_function = 0.3, False, Dspike(2.0)
    x = torch.full((2, 5), 0.7)
    reset_neurons(lif)
    assert lif.v_threshold == 0.3 and not lif.detach_reset and isinstance(lif.surrogate_function, Dspike)
    assert lif(x)[0].eq(1).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_with_each_kind_and_surrogate(family):
    for kind in ("lif", "if", "plif"):
        for surrogate, detach in (("sigmoid", kind != "lif"), ("dspike", kind == "lif")):
            torch.manual_seed(0)
            model = tiny(family, neuron=kind, surrogate=surrogate, detach_reset=detach, tau=1.5).train()
            out = model(torch.rand(2, 3, 16, 16) * 4)
            (out[0] if isinstance(out, tuple) else out).square().sum().backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (family, kind, surrogate)
            if kind == "plif":
                assert any(n.endswith(".w") and p.grad is not None for n, p in model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_settings_reach_every_neuron(family):
    default = tiny(family)
    assert not any(k.endswith("_lif.w") or k.endswith("lif.w") for k in default.state_dict())  # keys unchanged
    model = tiny(family, neuron="plif", tau=1.7, v_threshold=0.8, surrogate="dspike", surrogate_gamma=3.0,
                 surrogate_region=0.7, detach_reset=False)
    masks = {n: m for n, m in default.named_modules() if isinstance(m, LIF) and n.endswith(MASKS)}
    neurons = dict((n, m) for n, m in model.named_modules() if isinstance(m, LIF))
    assert neurons.keys() == {n for n, m in default.named_modules() if isinstance(m, LIF)}
    for name, m in neurons.items():
        fn = m.surrogate_function
        assert (m.kind, m.tau, m.detach_reset, fn.gamma, fn.region) == ("plif", 1.7, False, 3.0, 0.7), name
        assert m.v_threshold == (masks[name].v_threshold if name in masks else 0.8), name
        assert m.w.item() == pytest.approx(-math.log(0.7)) and not m.kernels_apply
    assert set(model.state_dict()) - set(default.state_dict()) == {f"{n}.w" for n in neurons}


@pytest.mark.parametrize("tau, threshold, alpha", [(2.0, 1.0, 4.0), (1.5, 0.7, 3.0)])
def test_fused_path_equals_the_torch_path_where_the_kernels_apply(tau, threshold, alpha):
    settings = NeuronSettings(tau=tau, v_threshold=threshold, surrogate_alpha=alpha, backend="torch")
    assert settings.make().kernels_apply
    torch.manual_seed(1)
    x = torch.randn(4, 3, 40) * 1.5 + 0.5
    fused, loop = settings.make(), settings.make()
    loop.fused = False
    results = []
    for lif in (fused, loop):
        xi = x.clone().requires_grad_()
        spikes = lif(xi)
        spikes.backward(torch.linspace(-1, 1, spikes.numel()).reshape(spikes.shape))
        results.append((spikes, xi.grad))
    assert torch.equal(results[0][0], results[1][0]) and 0 < results[0][0].mean() < 1
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    for other in (dict(neuron="if"), dict(neuron="plif"), dict(surrogate="dspike"), dict(detach_reset=False)):
        key, value = next(iter(other.items()))
        changed = settings.replace(**{"kind" if key == "neuron" else key: value})
        assert not changed.make().kernels_apply


def test_if_and_plif_are_spikingjellys_nodes():
    torch.manual_seed(2)
    x = torch.randn(5, 3, 7) + 0.5
    pairs = [(NeuronSettings(kind="if", backend="torch").make(),
              sj_neuron.MultiStepIFNode(detach_reset=True, surrogate_function=sj_neuron.surrogate.Sigmoid(4.0))),
             (NeuronSettings(kind="plif", tau=1.5, backend="torch").make(),
              sj_neuron.MultiStepParametricLIFNode(init_tau=1.5, detach_reset=True,
                                                   surrogate_function=sj_neuron.surrogate.Sigmoid(4.0)))]
    for ours, theirs in pairs:
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa, sb = ours(a), theirs(b)
        assert torch.equal(sa, sb)
        sa.sum().backward()
        sb.sum().backward()
        assert torch.allclose(a.grad, b.grad)
    assert pairs[1][0].w.grad == pytest.approx(pairs[1][1].w.grad.item())


def test_describe_neurons():
    assert describe_neurons(tiny("spikformer")).endswith(
        "lif, tau 2, threshold 1 (and 0.5), surrogate sigmoid alpha 4, detached reset; fused kernels")
    line = describe_neurons(tiny("sdt_v2", neuron="plif", surrogate="dspike", detach_reset=False))
    assert line.endswith("plif, initial tau 2, threshold 1 (and 0.5), surrogate dspike gamma 2.5, reset not "
                         "detached; spikingjelly's torch loop (settings outside the fused kernels)"), line
    assert describe_neurons(msvit.use_reference_implementation(tiny("sdt"))).endswith("(reference path)")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key, value, message", [
    ("neuron", "lf", "model_kwargs.neuron lf is not a neuron kind; choose one of lif, if, plif"),
    ("tau", 1.0, "model_kwargs.tau 1.0 must be greater than 1"),
    ("v_threshold", -0.5, "model_kwargs.v_threshold -0.5 must be positive"),
    ("surrogate", "atan", "model_kwargs.surrogate atan is not a surrogate gradient; choose one of sigmoid, dspike"),
    ("surrogate_gamma", 0.0, "model_kwargs.surrogate_gamma 0.0 must be positive"),
    ("surrogate_region", 0.0, "model_kwargs.surrogate_region 0.0 must be positive")])
def test_bad_neuron_settings_are_one_line_config_errors(family, key, value, message):
    from msvit.config.checks import check_model_kwargs
    with pytest.raises(ConfigError) as info:
        check_model_kwargs(FAMILIES[family][0], {key: value}, {key: f"model_kwargs.{key}"})
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    check_model_kwargs(FAMILIES[family][0], {"neuron": "if", "tau": 1.0})  # IF has no time constant


def test_load_model_rebuilds_the_neurons_of_a_checkpoint(tmp_path):
    from msvit.config import parse_args
    from msvit.zoo import create_dataset_model

    kwargs = "{embed_dim: 32, num_heads: 2, depths: [1, 1, 1], neuron: plif, surrogate: dspike, v_threshold: 0.8}"
    cfg = parse_args(["--model-kwargs", kwargs, "--time-step", "2"],
                     Path(__file__).resolve().parents[1] / "cifar10" / "cifar10.yml")
    cfg["num_classes"] = cfg["num_classes"] or 10
    model = create_dataset_model(cfg, [cfg["model"]])
    with torch.no_grad():
        for i, m in enumerate(m for m in model.modules() if isinstance(m, LIF)):
            m.w.fill_(0.01 * i)  # learnt time constants, each its own
    torch.save(dict(model=model.state_dict(), epoch=0, config=cfg), tmp_path / "last.pth")
    loaded = msvit.load_model(tmp_path / "last.pth")
    assert describe_neurons(loaded) == describe_neurons(model)
    pairs = [(a, b) for a, b in zip(model.modules(), loaded.modules()) if isinstance(a, LIF)]
    assert pairs and all(b.kind == "plif" and isinstance(b.surrogate_function, Dspike) and torch.equal(a.w, b.w)
                         and a.v_threshold == b.v_threshold for a, b in pairs)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model.eval()(images))
