"""LIF dynamics against hand-computed sequences, backend selection, and binary spikes everywhere."""
import math

import pytest
import timm
import torch

import msvit
from msvit.neurons import LIF, cupy_unavailable_reason, set_neuron_backend


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "spikingjelly-loop"])
def test_lif_sequence_by_hand(fused):
    # tau 2, v_reset 0: v <- v + (x - v) / 2; spike at v >= 1; hard reset to 0
    #   x: 0.5 -> v 0.25;  1.0 -> 0.625;  2.0 -> 1.3125 spike, v 0;  0.0 -> 0;  1.5 -> 0.75
    lif = LIF(backend="torch")
    lif.fused = fused
    x = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5]).reshape(5, 1)
    spikes = lif(x)
    assert spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert lif.v.item() == pytest.approx(0.75)
    if not fused:
        assert lif.v_seq.flatten().tolist() == pytest.approx([0.25, 0.625, 0.0, 0.0, 0.75])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "spikingjelly-loop"])
def test_lif_with_tau_1_5_by_hand(fused):
    # Spikingformer's DVS neurons: v <- v + (x - v) / 1.5
    #   x: 0.9 -> 0.6;  0.9 -> 0.8;  1.2 -> 1.0667 spike, v 0;  0.0 -> 0;  1.5 -> 1.0 spike (at the threshold)
    # at tau 2 the same input never fires: 0.45, 0.675, 0.9375, 0.46875, 0.984375
    x = torch.tensor([0.9, 0.9, 1.2, 0.0, 1.5]).reshape(5, 1)
    for tau, expected, v_last in ((1.5, [0.0, 0.0, 1.0, 0.0, 1.0], 0.0), (2.0, [0.0] * 5, 0.984375)):
        lif = LIF(backend="torch", tau=tau)
        lif.fused = fused
        assert lif(x).flatten().tolist() == expected and lif.v.item() == pytest.approx(v_last)
        assert f"tau={tau}" in repr(lif)
    with pytest.raises(msvit.errors.ConfigError, match="tau must be greater than 1, got 1.0"):
        LIF(tau=1.0)


def test_lif_fires_exactly_at_threshold_and_leaks_below():
    lif = LIF(v_threshold=0.5, backend="torch")
    # 1.0 charges to exactly 0.5 = threshold -> spike; 0.999 stays below and leaks
    spikes = lif(torch.tensor([[1.0, 0.999], [0.0, 0.0]]))
    assert spikes.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert lif.v.tolist() == pytest.approx([0.0, 0.24975])


def test_surrogate_gradient_is_sigmoid_alpha_4():
    def grad_at(x0):
        x = torch.tensor([[x0]], requires_grad=True)
        LIF(backend="torch")(x).sum().backward()
        return x.grad.item()

    def sigmoid_prime(u, alpha=4.0):
        s = 1 / (1 + math.exp(-alpha * u))
        return alpha * s * (1 - s)

    # v = x / 2; d spike / dx = sigmoid'(v - 1) * 1/2
    assert grad_at(2.0) == pytest.approx(0.5 * sigmoid_prime(0.0))  # = 0.5 at the threshold
    assert grad_at(1.0) == pytest.approx(0.5 * sigmoid_prime(-0.5))
    assert grad_at(2.0) == pytest.approx(0.5)


def test_reset_is_detached_from_the_graph():
    # with detach_reset the hard reset does not route gradient through the spike into v
    x = torch.tensor([[3.0], [0.0]], requires_grad=True)
    lif = LIF(backend="torch")
    lif(x)[1].sum().backward()
    # the reset is v <- (1 - s) * v with s detached: at step 1 s = 1, so v_1 after reset is 0 * v_1
    # and step 2 (input 0) has no path back to x_1; without detaching, ds_1/dx_1 would leak through
    assert x.grad[0].item() == pytest.approx(0.0, abs=1e-7)


def test_reset_neurons_and_fresh_state():
    lif = LIF(backend="torch")
    lif(torch.ones(2, 3))
    assert not isinstance(lif.v, float)
    msvit.reset_neurons(lif)
    assert lif.v == 0.0


def test_backend_validation_and_auto_on_cpu():
    with pytest.raises(ValueError, match="unknown neuron backend"):
        LIF(backend="lava")
    lif = LIF(backend="auto")
    lif(torch.ones(2, 1))
    assert lif.backend == "torch"


@pytest.mark.skipif(torch.cuda.is_available() and cupy_unavailable_reason() is None,
                    reason="CuPy works here")
def test_cupy_request_fails_at_build_time_with_the_reason():
    reason = cupy_unavailable_reason()
    with pytest.raises(RuntimeError, match="neuron backend 'cupy' cannot run") as info:
        timm.create_model("qkformer_dvs_2_256", neuron_backend="cupy")
    assert reason in str(info.value) and "\n" not in str(info.value)
    model = timm.create_model("qkformer_dvs_2_256")
    with pytest.raises(RuntimeError, match="cannot run"):
        set_neuron_backend(model, "cupy")


def test_set_neuron_backend_reaches_every_neuron():
    model = timm.create_model("qkformer_cifar_4_384", embed_dim=64, num_heads=2)
    set_neuron_backend(model, "torch")
    backends = {m.requested_backend for m in model.modules() if isinstance(m, LIF)}
    assert backends == {"torch"}


@pytest.mark.parametrize("name,shape", [("msvit_cifar_4_384", (2, 3, 32, 32)),
                                        ("qkformer_dvs_2_256", (1, 4, 2, 128, 128))])
def test_every_neuron_emits_only_zeros_and_ones(name, shape):
    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=64 if "cifar" in name else 128, num_heads=2)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: outputs.__setitem__(n, out))
             for n, m in model.named_modules() if isinstance(m, LIF)]
    x = torch.randn(shape) if len(shape) == 4 else torch.randint(0, 3, shape).float()
    model(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == sum(isinstance(m, LIF) for m in model.modules())
    for n, out in outputs.items():
        assert set(out.unique().tolist()) <= {0.0, 1.0}, n
    assert any(out.sum() > 0 for out in outputs.values())
