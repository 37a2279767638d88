"""TET (msvit.training.losses): the loss against its formula computed by hand, the models' logits per time step against
their usual output, and a digits run that trains with it and evaluates the steps' mean."""
import pytest
import torch
from timm.loss import SoftTargetCrossEntropy

import msvit.training.train
from msvit.training.losses import TETLoss
from msvit.models import SpikingTransformer
from test_training import VARIANTS, summary_rows, tiny_cfg


def test_tet_loss_is_the_mean_of_the_steps_criterion_plus_the_weighted_mse():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4)  # B 2, T 3, 4 classes
    targets = torch.tensor([1, 3])
    ce = torch.nn.CrossEntropyLoss()
    per_step = [ce(logits[:, t], targets).item() for t in range(3)]
    mse = sum((v - 1.0) ** 2 for v in logits.flatten().tolist()) / logits.numel()
    assert TETLoss(ce)(logits, targets).item() == pytest.approx(sum(per_step) / 3, rel=1e-6)
    assert TETLoss(ce, means=1.0, lamb=0.25)(logits, targets).item() == \
        pytest.approx(0.75 * sum(per_step) / 3 + 0.25 * mse, rel=1e-6)
    assert TETLoss(ce)(logits, targets).item() != pytest.approx(ce(logits.mean(1), targets).item(), rel=1e-3)
    soft = torch.tensor([[0.0, 0.7, 0.0, 0.3], [0.5, 0.0, 0.0, 0.5]])  # mixup's targets
    soft_ce = SoftTargetCrossEntropy()
    assert TETLoss(soft_ce)(logits, soft).item() == \
        pytest.approx(sum(soft_ce(logits[:, t], soft).item() for t in range(3)) / 3, rel=1e-6)
    with pytest.raises(ValueError, match=r"logits per time step \[B, T, K\]"):
        TETLoss(ce)(logits.mean(1), targets)


@pytest.mark.parametrize("attention", ["mssa", "qkta"])
def test_logits_per_step_average_to_the_usual_output(attention):
    torch.manual_seed(1)
    model = SpikingTransformer(stem="cifar", img_size=8, in_chans=3, num_classes=5, T=3, embed_dim=16,
                               depths=(1, 1, 1), num_heads=2, token_attention=attention,
                               neuron_backend="torch").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(5.0)
        x = torch.randn(2, 3, 8, 8)
        usual = model(x)
        model.per_step_logits = True
        steps = model(x)
    assert steps.shape == (2, 3, 5) and usual.shape == (2, 5)
    assert not torch.allclose(steps[:, 0], steps[:, 1])  # the steps differ
    assert torch.allclose(steps.mean(1), usual, atol=1e-6)


def test_a_digits_run_trains_with_tet_and_evaluates_the_steps_mean(tmp_path, monkeypatch):
    calls = []
    real = TETLoss.forward
    monkeypatch.setattr(TETLoss, "forward", lambda self, logits, targets: calls.append(logits.shape) or
                        real(self, logits, targets))
    result = msvit.training.train.run(tiny_cfg(tmp_path / "run", "--epochs", "1", "--tet", "true", "--tet-lambda", "0.001"),
                             VARIANTS)
    assert len(calls) == 89 and calls[0] == (16, 2, 10)  # every update: 16 digits, T 2, 10 classes
    assert float(summary_rows(tmp_path / "run")[0]["eval_top1"]) == pytest.approx(result["best_top1"], abs=1e-3)
    assert result["best_top1"] > 15.0  # one epoch, evaluated on the steps' mean; chance is 10


def test_logits_per_step_trace_as_one_graph():
    """TET's training forward compiles like the usual one: one graph, no break."""
    model = SpikingTransformer(stem="cifar", img_size=8, in_chans=3, num_classes=5, T=2, embed_dim=16,
                               depths=(1, 1, 1), num_heads=2, neuron_backend="torch").train()
    model.per_step_logits = True
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 8, 8))
    finally:
        torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
