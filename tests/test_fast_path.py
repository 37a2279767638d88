"""The optimised forward path (fused LIF: the C kernel on CPU or one autograd node of torch operations;
stacked 1x1 attention convolutions) against the straightforward reference (spikingjelly's per-step
loop, one convolution per branch), same weights."""
import copy

import pytest
import timm
import torch

import msvit
from busy import calibrate_batch_norms, excite_ssa
from msvit.neurons import lif_cpu
from msvit.layers import SpikingSelfAttention
from msvit.layers.stems import cifar_stem, imagenet_stem
from msvit.neurons import LIF
from msvit.neurons.lif import _FusedLIF

needs_cpu_kernel = pytest.mark.skipif(lif_cpu.kernel() is None,
                                      reason=f"no C compiler for the CPU LIF kernel ({lif_cpu.unavailable_reason()})")


@pytest.fixture(params=["c-kernel", "torch-ops"])
def implementation(request, monkeypatch):
    """Each fused CPU implementation in turn: the C kernel, and the torch operations it falls back to."""
    if request.param == "c-kernel":
        if lif_cpu.kernel() is None:
            pytest.skip(f"no C compiler for the CPU LIF kernel ({lif_cpu.unavailable_reason()})")
        return lif_cpu.CpuLIF
    monkeypatch.setattr(lif_cpu, "kernel", lambda: None)
    return _FusedLIF


@pytest.mark.parametrize("threshold,tau", [(1.0, 2.0), (0.5, 2.0), (1.0, 1.5)])
@pytest.mark.parametrize("shape", [(4, 3, 5), (16, 2, 6, 7), (3, 2, 1100)])  # the last spans two kernel blocks
def test_fused_lif_matches_spikingjelly_loop(threshold, tau, shape, implementation):
    torch.manual_seed(0)
    x = torch.randn(shape) * 1.5 + 0.8
    fused, loop = LIF(threshold, "torch", tau), LIF(threshold, "torch", tau)
    assert fused._function(x) is implementation
    loop.fused = False
    x_fused, x_loop = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_fused, s_loop = fused(x_fused), loop(x_loop)
    assert torch.equal(s_fused, s_loop) and 0 < s_fused.sum() < s_fused.numel()
    assert torch.equal(fused.v, loop.v)
    weights = torch.randn(shape)
    ((s_fused * weights).sum() + 0.3 * fused.v.sum()).backward()
    ((s_loop * weights).sum() + 0.3 * loop.v.sum()).backward()
    assert torch.allclose(x_fused.grad, x_loop.grad, atol=1e-6, rtol=0)


def test_fused_lif_carries_state_across_calls_like_the_loop(implementation):
    torch.manual_seed(1)
    x1, x2 = torch.randn(3, 4) + 0.6, torch.randn(3, 4) + 0.6
    leaves = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for a, b in [(x1, x2)] * 2]
    outputs = []
    for fused, (a, b) in zip((True, False), leaves):
        lif = LIF(backend="torch")
        lif.fused = fused
        out = torch.cat([lif(a), lif(b)])  # the second call starts from the first call's membrane
        out.sum().backward()
        outputs.append((out, a.grad, b.grad))
    (o1, ga1, gb1), (o2, ga2, gb2) = outputs
    assert torch.equal(o1, o2)
    assert torch.allclose(ga1, ga2, atol=1e-6) and torch.allclose(gb1, gb2, atol=1e-6)


def test_fused_lif_keeps_no_spike_sequence_for_backward(implementation):
    """Backward learns where each step fired from what it keeps anyway (the C kernel: the sign of the
    surrogate's input) or from booleans (torch operations): one float sequence is saved, not the spikes too."""
    torch.manual_seed(2)
    x = (torch.randn(4, 2, 300) * 1.5 + 0.8).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spikes = LIF(backend="torch")(x)
    assert 0 < spikes.sum() < spikes.numel()
    sequences = [t for t in saved if t.shape == x.shape]
    floats = [t for t in sequences if t.is_floating_point()]
    assert len(floats) == 1 and not ((floats[0] == 0) | (floats[0] == 1)).all()  # not a spike sequence
    assert all(t.dtype == torch.bool for t in sequences if not t.is_floating_point())


def test_a_membrane_of_another_shape_is_refused(implementation):
    """A neuron not reset between batches of different sizes: refused, never read or written out of bounds."""
    lif = LIF(backend="torch")
    lif(torch.randn(2, 3, 5) + 0.8)  # membrane [3, 5] left behind
    with pytest.raises(ValueError, match="reset_neurons"):
        lif(torch.randn(2, 1, 5))
    msvit.reset_neurons(lif)
    assert lif(torch.randn(2, 1, 5)).shape == (2, 1, 5)


def _spikes_and_logits(model, x):
    """Every LIF's output in call order, as (module name, spikes), and the logits."""
    spikes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: spikes.append((name, out.detach().clone())))
             for name, m in model.named_modules() if isinstance(m, LIF)]
    logits = model(x)
    for h in hooks:
        h.remove()
    return spikes, logits


FAMILIES = [
    ("msvit_cifar_4_384", dict(embed_dim=96, num_heads=4), (2, 3, 32, 32)),
    ("qkformer_cifar_4_384", dict(embed_dim=96, num_heads=4), (2, 3, 32, 32)),
    ("msvit_10_384", dict(embed_dim=96, num_heads=4, depths=(1, 1, 1)), (2, 3, 64, 64)),
    ("qkformer_10_384", dict(embed_dim=96, num_heads=4, depths=(1, 1, 1)), (2, 3, 64, 64)),
    ("msvit_dvs_2_256", dict(embed_dim=64, num_heads=4, T=4), (2, 4, 2, 128, 128)),
    ("qkformer_dvs_2_256", dict(embed_dim=64, num_heads=4, T=4, mlp_ratio=1), (2, 4, 2, 128, 128)),
]


@pytest.mark.parametrize("coupled", [True, False], ids=["batch-coupled", "per-sample"])
@pytest.mark.parametrize("name,kwargs,shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_optimised_model_matches_reference_path(name, kwargs, shape, coupled, implementation):
    torch.manual_seed(0)
    model = excite_ssa(timm.create_model(name, batch_coupled_ssa=coupled, **kwargs))
    x = torch.randn(shape) if len(shape) == 4 else torch.randint(0, 3, shape).float()
    calibrate_batch_norms(model, x).eval()  # eval mode with real statistics, not the identity
    with torch.no_grad():
        fast_spikes, fast_logits = _spikes_and_logits(model, x)
        msvit.use_reference_implementation(model)
        ref_spikes, ref_logits = _spikes_and_logits(model, x)
    assert len(fast_spikes) == len(ref_spikes) == sum(isinstance(m, LIF) for m in model.modules())
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(fast_spikes, ref_spikes))
    assert torch.allclose(fast_logits, ref_logits, atol=1e-4, rtol=0)
    ssa_out = [s for name, s in fast_spikes if name.endswith("attn.proj_lif")
               and isinstance(model.get_submodule(name.removesuffix(".proj_lif")), SpikingSelfAttention)]
    assert ssa_out and all(s.sum() > 0 for s in ssa_out)  # SSA's output neuron fires: its setting is exercised


def test_training_gradients_match_reference_path(implementation):
    torch.manual_seed(0)
    model = timm.create_model("msvit_cifar_4_384", embed_dim=64, num_heads=2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    grads = []
    for reference in (False, True):
        msvit.use_reference_implementation(model, reference)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key, fast in grads[0].items():
        assert torch.allclose(fast, grads[1][key], atol=1e-5, rtol=1e-4), key
    msvit.use_reference_implementation(model, False)
    assert all(m.fused for m in model.modules() if isinstance(m, LIF))


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("make_stem", [cifar_stem, imagenet_stem], ids=["cifar", "imagenet-pooled"])
def test_stem_runs_its_first_layer_once_per_static_image(make_stem, momentum):
    """An image expanded over T: the first conv sees each image once; output, gradients and batch-norm
    statistics (running variance with the count of all T copies) are those of the T copies."""
    torch.manual_seed(0)
    T, B = 3, 2
    once = make_stem(3, 16, "torch").train()
    for m in once.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    copies = copy.deepcopy(once)
    copies.once_per_image = False
    image = torch.randn(B, 3, 16, 16)
    results = []
    for stem in (once, copies):
        seen = []
        hook = stem.proj_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
        for _ in range(2):  # two updates of the running statistics
            msvit.reset_neurons(stem)
            out = stem(image.unsqueeze(0).expand(T, *image.shape))
        hook.remove()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {k: p.grad.clone() for k, p in stem.named_parameters()}
        results.append((seen, out.detach(), grads, {k: b.clone() for k, b in stem.named_buffers()}))
        with torch.no_grad():
            msvit.reset_neurons(stem)
            results[-1] += (stem.eval()(image.unsqueeze(0).expand(T, *image.shape)),)
    (seen1, out1, grads1, bufs1, eval1), (seen2, out2, grads2, bufs2, eval2) = results
    assert seen1 == [B, B] and seen2 == [T * B, T * B]
    assert 0 < out1.mean() < 1 and torch.equal(out1, out2) and torch.equal(eval1, eval2)
    for key, g in grads1.items():
        # summed over T in a different order: equal to float rounding of the largest element
        assert g.abs().sum() > 0 and (g - grads2[key]).abs().max() <= 1e-5 * g.abs().max(), key
    for key, b in bufs1.items():
        assert torch.allclose(b.float(), bufs2[key].float(), rtol=1e-5, atol=1e-7), key
    assert bufs1["proj_bn.num_batches_tracked"] == 2


@needs_cpu_kernel
def test_cpu_kernel_is_independent_of_threads_and_backward_can_run_twice():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 2100) * 1.5 + 0.8
    weights = torch.randn_like(x)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            lif = LIF(backend="torch")
            leaf = x.clone().requires_grad_()
            spikes = lif(leaf)
            loss = (spikes * weights).sum()
            loss.backward(retain_graph=True)
            first = leaf.grad.clone()
            loss.backward()  # retain_graph: the second pass must see the same surrogate slopes
            results.append((spikes.detach(), first))
            assert torch.allclose(leaf.grad, 2 * first, atol=1e-6)
    finally:
        torch.set_num_threads(threads)
    (s1, g1), (s3, g3) = results
    assert torch.equal(s1, s3) and torch.equal(g1, g3)
    with torch.no_grad():  # no gradient: the kernel skips the surrogate buffer
        assert torch.equal(LIF(backend="torch")(x), s1)


def test_cpu_kernel_falls_back_to_torch_ops_when_it_cannot_be_built(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MSVIT_CACHE_DIR", str(tmp_path / "cache"))
    lif_cpu._load.cache_clear()
    try:
        assert lif_cpu.kernel() is None and "no-such-compiler" in lif_cpu.unavailable_reason()
        x = torch.randn(4, 3, 5) + 0.8
        assert LIF(backend="torch")._function(x) is _FusedLIF
        monkeypatch.setenv("MSVIT_CPU_KERNEL", "0")
        lif_cpu._load.cache_clear()
        assert lif_cpu.kernel() is None and "MSVIT_CPU_KERNEL=0" in lif_cpu.unavailable_reason()
    finally:
        monkeypatch.undo()
        lif_cpu._load.cache_clear()
