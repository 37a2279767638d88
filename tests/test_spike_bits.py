"""Spikes saved for backward as bits (`msvit.neurons.spike_bits`): exact round trips, the same training step as with
dense saved spikes for every family, and nothing packed that is not (or no longer) a spike tensor."""
import copy
import weakref
from pathlib import Path

import pytest
import timm
import torch

import msvit
import msvit.models._network
import msvit.training.train
from busy import excite_ssa
from msvit.neurons import spike_bits
from msvit.config import parse_args
from msvit.neurons import LIF
from msvit.neurons.spike_bits import mark_spikes, pack_bits, packed_saved_spikes, unpack_bits

FAMILIES = ("msvit_cifar_4_384", "qkformer_cifar_4_384", "msvit_dvs_2_256")
SMALL = dict(T=2, num_classes=5, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 64), (3, 5, 7), (1,)], ids=["multiple-of-8", "odd-count", "one"])
def test_bits_round_trip(shape, dtype):
    torch.manual_seed(0)
    spikes = (torch.rand(shape) > 0.5).to(dtype)
    bits = pack_bits(spikes)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-spikes.numel() // 8)
    restored = unpack_bits(bits, spikes.shape, dtype)
    assert restored.dtype == dtype and torch.equal(restored, spikes)
    view = spikes.transpose(0, -1) if spikes.dim() > 1 else spikes  # a non-contiguous view packs its own order
    assert torch.equal(unpack_bits(pack_bits(view), view.shape, dtype), view)


def test_bit_order_is_row_major():
    spikes = torch.zeros(16)
    spikes[[0, 9, 15]] = 1
    assert pack_bits(spikes).tolist() == [0b10000000, 0b01000001]  # element i of each byte is bit 7 - i


@pytest.fixture
def packed_elements(monkeypatch):
    """The element counts of every tensor packed into bits from here on."""
    counts = []

    def counting_pack_bits(t):
        counts.append(t.numel())
        return pack_bits(t)
    monkeypatch.setattr(spike_bits, "pack_bits", counting_pack_bits)
    return counts


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_step_equals_the_dense_step(name, packed_elements):
    """Same logits and gradients bit for bit, T 2, batch 3; and every LIF output that the dense model saves for
    backward (4096 elements or more) went as bits in the packed one."""
    torch.manual_seed(0)
    x = (torch.rand(3, 2, 2, 32, 32) > 0.7).float() if "dvs" in name else torch.rand(3, 3, 32, 32) * 2 - 1
    target = torch.tensor([0, 1, 2])
    packed = excite_ssa(timm.create_model(name, **SMALL)).train()
    dense = copy.deepcopy(packed)
    dense.pack_saved_spikes = False
    assert packed.pack_saved_spikes

    lif_outputs, dense_spike_elements = {}, []  # storage address -> the LIF output there, while it lives
    for m in dense.modules():
        if isinstance(m, LIF):
            m.register_forward_hook(
                lambda mod, args, out: lif_outputs.__setitem__(out.untyped_storage().data_ptr(), weakref.ref(out)))

    def count_spikes(t):
        output = lif_outputs.get(t.untyped_storage().data_ptr())
        if t.numel() >= 4096 and output is not None and output() is not None:
            assert ((t == 0) | (t == 1)).all()
            dense_spike_elements.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(count_spikes, lambda t: t):
        dense_logits = dense(x)
    torch.nn.functional.cross_entropy(dense_logits, target).backward()
    packed_logits = packed(x)
    torch.nn.functional.cross_entropy(packed_logits, target).backward()

    assert torch.equal(packed_logits, dense_logits)
    for (n, a), (_, b) in zip(packed.named_parameters(), dense.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    assert sorted(packed_elements) == sorted(dense_spike_elements) and len(packed_elements) >= 4
    assert getattr(spike_bits._active, "spikes", None) is None  # nothing stays registered after the forward


WEIGHT = torch.randn(8, 6, 1, generator=torch.Generator().manual_seed(1))


def _weight_grad(prepare):
    """d/dW of sum(conv1d(x, W)^2), conv1d saving its input x for W's gradient, inside `packed_saved_spikes()`;
    `prepare()` returns x, marking or changing tensors as a case needs."""
    weight = WEIGHT.clone().requires_grad_()
    with packed_saved_spikes():
        x = prepare()
        torch.nn.functional.conv1d(x, weight).square().sum().backward()
    return weight.grad


SPIKES = (torch.rand(4, 6, 1024, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def test_a_marked_spike_tensor_is_saved_as_bits(packed_elements):
    def marked():
        x = SPIKES.clone()
        mark_spikes(x)
        return x
    expected = _weight_grad(SPIKES.clone)
    assert packed_elements == []
    assert torch.equal(_weight_grad(marked), expected) and packed_elements == [SPIKES.numel()]


def test_spikes_changed_in_place_after_marking_are_saved_dense(packed_elements):
    def changed():
        x = SPIKES.clone()
        mark_spikes(x)
        return x.mul_(3.0)  # 0 and 3 now; as bits they would come back as 0 and 1 (a gradient 3x, not 9x)
    expected = 9 * _weight_grad(SPIKES.clone)
    assert torch.allclose(_weight_grad(changed), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert packed_elements == []


def test_a_tensor_at_the_address_of_freed_spikes_is_saved_dense(packed_elements):
    """A marked tensor is freed and its memory taken by another tensor (here: two tensors over one buffer)."""
    memory = bytearray(SPIKES.numel() * 4)

    def at_a_dead_address():
        gone = torch.frombuffer(memory, dtype=torch.float32).view(SPIKES.shape)
        mark_spikes(gone)
        address = gone.untyped_storage().data_ptr()
        del gone
        x = torch.frombuffer(memory, dtype=torch.float32).view(SPIKES.shape)
        assert x.untyped_storage().data_ptr() == address
        return x.copy_(SPIKES * 0.5 + 0.25)  # 0.25 and 0.75: as bits they would come back as 1 and 1
    assert torch.equal(_weight_grad(at_a_dead_address), _weight_grad(lambda: SPIKES * 0.5 + 0.25))
    assert packed_elements == []


def test_packing_is_off_on_the_reference_path():
    model = timm.create_model("msvit_cifar_4_384", **SMALL)
    assert msvit.use_reference_implementation(model).pack_saved_spikes is False
    assert msvit.use_reference_implementation(model, False).pack_saved_spikes is True


@pytest.mark.parametrize("flag, packing", [([], True), (["--pack-saved-spikes", "false"], False)])
def test_train_py_setting_reaches_the_model(flag, packing, tmp_path, monkeypatch, capsys):
    seen = []

    def recording(enabled=True):
        seen.append(enabled)
        return packed_saved_spikes(enabled)
    monkeypatch.setattr(msvit.models._network, "packed_saved_spikes", recording)
    digits = Path(__file__).resolve().parents[1] / "digits" / "digits.yml"
    tiny = ["--img-size", "8", "--workers", "0", "--epochs", "1", "--output", str(tmp_path / "run"), *flag]
    msvit.training.train.run(parse_args(tiny, digits), ("msvit_cifar_4_384", "qkformer_cifar_4_384"))
    assert True in seen if packing else (seen and not any(seen))  # evaluation forwards pass False either way
    assert f"saved spikes {'as bits' if packing else 'dense'}" in capsys.readouterr().out
