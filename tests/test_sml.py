"""STMixer's surrogate module learning (issue 25): the side branches' layout and counts (seed-systems §3's table), the
release's key names, evaluation through the main output alone, the SBDistillationLoss by hand, its composition with
distillation, a refused combination, and a short digits run that trains, checkpoints and evaluates."""
import csv
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import msvit.training.evaluate
import msvit.training.train
from msvit.config import parse_args
from msvit.errors import ConfigError
from msvit.layers.surrogate_module import side_branch_layers
from msvit.models import load_checkpoint
from msvit.training.distillation import DistillationLoss
from msvit.training.sml import SMLLoss
from msvit.zoo import dataset_models

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = dataset_models("cifar10")  # digits/model.py's
TINY = dict(embed_dim=16, num_heads=2, T=2, num_classes=3, img_size=16, neuron_backend="torch")


def tiny(depth: int = 4, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("stmixer_cifar_4_384", **{**TINY, "depth": depth, **kwargs})


@pytest.mark.parametrize("name, kwargs, backbone, total, millions", [
    ("stmixer_8_768", {}, 61_167_432, 112_274_408, 112.3),
    ("stmixer_8_768", dict(num_heads=8), 58_708_808, 107_664_488, 107.7),
    ("stmixer_8_768", dict(embed_dim=384), 19_214_232, 36_009_272, 36.0),
    ("stmixer_cifar_4_384", dict(num_classes=100), 8_258_324, 13_268_188, 13.3),
    ("stmixer_cifar_10_384", dict(num_classes=100), 17_531_156, 30_828_552, 30.8),
])
def test_counts_with_and_without_side_branches_are_the_specs(name, kwargs, backbone, total, millions):
    with torch.device("meta"):
        plain, sml = timm.create_model(name, **kwargs), timm.create_model(name, sml=True, **kwargs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plain) == backbone and count(sml) == total and round(total / 1e6, 1) == millions
    assert sml.training_only_parameters() == total - backbone


def test_side_branches_follow_the_releases_depth_rule_and_names():
    assert [side_branch_layers(d) for d in (2, 3, 4, 5, 6, 8, 10, 11)] == [
        [1], [1], [2, 1], [2, 1], [3, 2, 1], [3, 2, 1, 1], [3, 2, 1, 1, 1], [3, 2, 1, 1, 1]]
    keys = set(tiny(4, sml=True).state_dict())
    assert {"sml1.proj_conv.0.weight", "sml1.proj_conv.1.running_mean", "sml1.encoder.1.spatial_mix.fc1.1.weight",
            "sml1.encoder.0.spatial_mix.attn.linear_mix.1.weight", "sml1.encoder.0.channel_mix.fc2.0.weight",
            "sml2.encoder.0.spatial_mix.fc2.2.bias", "sml2.head.weight"} <= keys
    assert not any(k.startswith("sml3") or k.startswith("sml2.encoder.1") for k in keys)
    for depth in (1, 12):
        with pytest.raises(ConfigError, match="side branches for depth 2 to 11"):
            tiny(depth, sml=True)


def test_training_returns_every_output_and_evaluation_the_main_one_alone():
    model, plain = tiny(4, sml=True), tiny(4)
    x = torch.rand(2, 3, 16, 16) * 2
    outputs = model.train()(x)
    assert isinstance(outputs, tuple) and [o.shape for o in outputs] == [(2, 3)] * 3
    load_checkpoint(plain, {"state_dict": model.state_dict()})  # the side branches' keys are dropped
    model.eval(), plain.eval()
    with torch.no_grad():
        main, reference = model(x), plain(x)
    assert torch.is_tensor(main) and torch.equal(main, reference)


def test_the_loss_by_hand_on_fixed_logits():
    main = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    sides = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])]
    targets = torch.tensor([0, 1])
    t, alpha, lamb = 3.0, 0.5, 0.9

    def ce(z):
        return -sum(math.log(F.softmax(z[i], 0)[targets[i]]) for i in range(2)) / 2

    def kl(a, b):  # KL(softmax(b/t) || softmax(a/t)), summed over classes, averaged over the batch
        p, q = F.softmax(b / t, 1), F.softmax(a / t, 1)
        return float((p * (p.log() - q.log())).sum()) / 2

    hard = (ce(main) + alpha * (ce(sides[0]) + ce(sides[1]))) / (2 * alpha + 1)
    soft = sum(kl(s, main) + kl(main, s) for s in sides) / 4
    loss = SMLLoss(torch.nn.CrossEntropyLoss(), t, alpha, lamb)((main, *sides), targets)
    assert loss.item() == pytest.approx(lamb * soft + (1 - lamb) * hard, rel=1e-6)
    assert SMLLoss(torch.nn.CrossEntropyLoss(), t, alpha, 0.0)((main, *sides), targets).item() == pytest.approx(hard)


def test_it_composes_with_distillation_on_the_main_output():
    outputs = (torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    teacher = torch.nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.zero_(), teacher.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))  # always class 1
    sml = SMLLoss(torch.nn.CrossEntropyLoss())
    targets = torch.tensor([0])
    loss = DistillationLoss(sml, teacher, "hard", alpha=0.5)(torch.zeros(1, 4), outputs, targets)
    expected = 0.5 * sml(outputs, targets) + 0.5 * F.cross_entropy(outputs[0], torch.tensor([1]))
    assert loss.item() == pytest.approx(expected.item())


def test_sml_with_tet_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="tet with model_kwargs.sml: the side branches give one logit"):
        parse_args(["--model", "stmixer_cifar_4_384", "--model-kwargs", "{sml: true}", "--tet", "true"], DIGITS)
    with pytest.raises(ConfigError, match="sml_lambda 2 is out of range"):
        parse_args(["--sml-lambda", "2"], DIGITS)


def test_a_digits_run_trains_with_side_branches_and_test_py_evaluates_it(tmp_path, capsys):
    run = tmp_path / "run"
    kwargs = "{embed_dim: 64, num_heads: 2, depth: 2, img_size: 16, sml: true}"  # STMixer: built for the input's size
    argv = ["--model", "stmixer_cifar_4_384", "--model-kwargs", kwargs, "--batch-coupled-ssa", "false",
            "--time-step", "1", "--workers", "0", "--epochs", "1", "--batch-size", "32", "--mixup", "0.5",
            "--output", str(run)]
    msvit.training.train.main(DIGITS, VARIANTS, argv)
    with (run / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"])) and float(rows[0]["train_loss"]) > 0
    log = (run / "log.txt").read_text()
    assert "parameters, of which" in log and "in training-only side branches" in log
    assert "surrogate module learning: 1 ANN side branch (training only), loss lambda 0.9" in log
    checkpoint = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert any(key.startswith("sml1.") for key in checkpoint["model"])
    capsys.readouterr()
    msvit.training.evaluate.main(DIGITS, VARIANTS, ["--checkpoint", str(run / "last.pth"), "--workers", "0",
                                                    "--json"])
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["top1"] <= 100
