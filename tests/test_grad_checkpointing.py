"""Activation checkpointing (`model.set_grad_checkpointing()`, timm's switch): every patch embedding and block
is recomputed in backward, and the step is the same: spikes, logits, gradients and batch-norm statistics."""
import copy

import pytest
import timm
import torch

from busy import excite_ssa
from msvit.neurons import LIF

# one model of each family, small, with drop-path so that the recomputation must redraw the same masks
FAMILIES = ("msvit_cifar_4_384", "qkformer_cifar_4_384", "msvit_dvs_2_256")
SMALL = dict(T=2, num_classes=5, embed_dim=32, num_heads=2, drop_path_rate=0.2)


def spike_recorder(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(LIF name, spikes) of every LIF call, in call order, recomputations included."""
    calls: list[tuple[str, torch.Tensor]] = []
    for name, m in model.named_modules():
        if isinstance(m, LIF):
            m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, out.detach().clone())))
    return calls


def training_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(7)  # the drop-path masks
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, target).backward()
    return logits.detach()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("coupled", [True, False])
def test_checkpointed_step_equals_the_plain_step(name, coupled):
    torch.manual_seed(0)
    # images [B, C, H, W], or DVS frames [B, T, C, H, W]; T 2, batch 3
    x = (torch.rand(3, 2, 2, 32, 32) > 0.7).float() if "dvs" in name else torch.rand(3, 3, 32, 32) * 2 - 1
    target = torch.tensor([0, 1, 2])
    plain = excite_ssa(timm.create_model(name, batch_coupled_ssa=coupled, **SMALL)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    spikes_plain, spikes_checkpointed = spike_recorder(plain), spike_recorder(checkpointed)

    assert torch.equal(training_step(plain, x, target), training_step(checkpointed, x, target))
    n = len(spikes_plain)
    assert sum(float(s.sum()) for _, s in spikes_plain) > 0
    assert [name for name, _ in spikes_checkpointed[:n]] == [name for name, _ in spikes_plain]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(spikes_plain, spikes_checkpointed[:n]))
    # backward recomputed the neurons (up to the last one whose output it needs) with the same spikes
    first_pass = dict(spikes_plain)
    recomputed = spikes_checkpointed[n:]
    assert len(recomputed) > n // 2
    assert all(torch.equal(spikes, first_pass[lif]) for lif, spikes in recomputed)
    for (key, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), key
    for (key, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), key  # running statistics updated once, not again by the recomputation


def test_no_recomputation_without_gradients():
    model = timm.create_model("msvit_cifar_4_384", **SMALL).train()
    model.set_grad_checkpointing(True)
    calls = spike_recorder(model)
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    assert len(calls) == sum(isinstance(m, LIF) for m in model.modules())
