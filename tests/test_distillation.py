"""Knowledge distillation (msvit.training.distillation): DeiT's hard and soft terms against their formulas by hand,
a student with a distillation head against one without, a frozen teacher that no step changes, its weights from a
file, and a digits run that distils from a tiny random timm teacher (`test_resnet`; nothing is downloaded)."""
import csv
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import msvit.training.train
from msvit.config import DEFAULTS, folder_recipes, parse_args
from msvit.errors import ConfigError, UserError
from msvit.training.distillation import DistillationLoss, build_teacher, distillation_term
from msvit.training.losses import TETLoss

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")
TEACHER = "test_resnet"  # timm's tiny test network: a few thousand parameters, random here

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
STUDENT_KD = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 2.0, 0.0]])
TEACHER_LOGITS = torch.tensor([[0.1, 3.0, -2.0], [4.0, 0.0, 1.0]])  # top classes 1 and 0
TARGETS = torch.tensor([0, 2])


class FixedTeacher(nn.Module):
    """Returns TEACHER_LOGITS whatever the inputs; counts its calls and the grad mode they ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_enabled: list[bool] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return TEACHER_LOGITS


def _softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def _ce(row: list[float], label: int) -> float:
    return -math.log(_softmax(row, 1.0)[label])


def test_hard_distillation_by_hand():
    """(1 - alpha) x CE(head, labels) + alpha x CE(head_kd, the teacher's top class)."""
    s, kd, t = STUDENT.tolist(), STUDENT_KD.tolist(), TEACHER_LOGITS.tolist()
    hard = (_ce(kd[0], 1) + _ce(kd[1], 0)) / 2
    base = (_ce(s[0], 0) + _ce(s[1], 2)) / 2
    assert distillation_term(STUDENT_KD, TEACHER_LOGITS, "hard").item() == pytest.approx(hard, rel=1e-6)
    loss = DistillationLoss(nn.CrossEntropyLoss(), FixedTeacher(), "hard", alpha=0.3)
    assert loss(None, (STUDENT, STUDENT_KD), TARGETS).item() == pytest.approx(0.7 * base + 0.3 * hard, rel=1e-6)
    assert t[0].index(max(t[0])) == 1


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_distillation_by_hand(tau):
    """KL(teacher || student) at tau, summed, x tau^2 / numel (DeiT's legacy normalisation: B x K, not B)."""
    kl = 0.0
    for s_row, t_row in zip(STUDENT_KD.tolist(), TEACHER_LOGITS.tolist()):
        p, q = _softmax(t_row, tau), _softmax(s_row, tau)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    soft = kl * tau * tau / STUDENT_KD.numel()
    assert distillation_term(STUDENT_KD, TEACHER_LOGITS, "soft", tau).item() == pytest.approx(soft, rel=1e-5)
    base = nn.CrossEntropyLoss()(STUDENT, TARGETS).item()
    loss = DistillationLoss(nn.CrossEntropyLoss(), FixedTeacher(), "soft", alpha=0.5, tau=tau)
    assert loss(None, (STUDENT, STUDENT_KD), TARGETS).item() == pytest.approx(0.5 * base + 0.5 * soft, rel=1e-5)
    with pytest.raises(ValueError, match="hard or soft"):
        distillation_term(STUDENT_KD, TEACHER_LOGITS, "none")


def test_a_student_without_a_distillation_head_distils_from_its_single_output():
    loss = DistillationLoss(nn.CrossEntropyLoss(), FixedTeacher(), "hard", alpha=0.5)
    single = loss(None, STUDENT, TARGETS).item()
    assert single == pytest.approx(loss(None, (STUDENT, STUDENT), TARGETS).item())
    assert single == pytest.approx(0.5 * F.cross_entropy(STUDENT, TARGETS).item()
                                   + 0.5 * F.cross_entropy(STUDENT, TEACHER_LOGITS.argmax(1)).item())
    # the pair: the criterion reads the head only, the distillation the head_kd only
    assert loss(None, (STUDENT, STUDENT_KD), TARGETS).item() != pytest.approx(single)
    assert DistillationLoss(nn.CrossEntropyLoss(), None)(None, (STUDENT, STUDENT_KD), TARGETS).item() == \
        pytest.approx(F.cross_entropy(STUDENT, TARGETS).item())  # none: the criterion on the head, as DeiT
    assert DistillationLoss(nn.CrossEntropyLoss(), FixedTeacher(), "soft", alpha=0.0)(None, STUDENT, TARGETS).item() \
        == pytest.approx(F.cross_entropy(STUDENT, TARGETS).item())  # alpha 0: the criterion alone


def test_with_tet_the_criterion_reads_every_step_and_the_distillation_their_mean():
    torch.manual_seed(0)
    per_step, per_step_kd = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    tet = TETLoss(nn.CrossEntropyLoss())
    loss = DistillationLoss(tet, FixedTeacher(), "hard", alpha=0.25)
    expected = 0.75 * tet(per_step, TARGETS) + 0.25 * F.cross_entropy(per_step_kd.mean(1), torch.tensor([1, 0]))
    assert loss(None, (per_step, per_step_kd), TARGETS).item() == pytest.approx(expected.item(), rel=1e-6)


def _teacher_cfg(**overrides) -> dict:
    return {**DEFAULTS, "distillation_type": "hard", "teacher_model": TEACHER, "num_classes": 10, **overrides}


def test_the_teacher_is_frozen_and_no_step_changes_it():
    torch.manual_seed(0)
    teacher = build_teacher(_teacher_cfg(), torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BatchNorm statistics included
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    criterion = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5).train()
    assert not teacher.training  # the criterion's train() leaves the teacher in eval mode
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, weight_decay=0.1)
    inputs, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    called = []
    teacher.register_forward_hook(lambda *_: called.append(torch.is_grad_enabled()))
    loss = criterion(inputs, student(inputs), targets)
    loss.backward()
    optimizer.step()
    assert called == [False]  # run once, under no_grad
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert student[1].weight.grad is not None
    assert build_teacher({**DEFAULTS, "distillation_type": "none"}, torch.device("cpu")) is None


def test_the_teachers_weights_come_from_its_checkpoint(tmp_path):
    torch.manual_seed(1)
    trained = timm.create_model(TEACHER, num_classes=10)
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "teacher.pth")
    teacher = build_teacher(_teacher_cfg(teacher_checkpoint=str(tmp_path / "teacher.pth")), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(UserError, match=r"does not fit the teacher test_resnet: .*2 shape mismatches \(fc.weight, fc.bias\)"):
        build_teacher(_teacher_cfg(teacher_checkpoint=str(tmp_path / "teacher.pth"), num_classes=5),
                      torch.device("cpu"))
    # timm's pretrained head has 1000 classes: refused for a 10-class run, before anything is downloaded
    with pytest.raises(ConfigError, match="pretrained head has 1000 classes, the run 10.*--teacher-checkpoint"):
        build_teacher(_teacher_cfg(teacher_pretrained=True), torch.device("cpu"))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"distillation_alpha must be in \[0, 1\], got 1.5"):
        parse_args(["--distillation-alpha", "1.5"], DIGITS)
    with pytest.raises(ConfigError, match="distillation_type soft needs a teacher: set --teacher-model"):
        parse_args(["--distillation-type", "soft"], DIGITS)
    with pytest.raises(ConfigError, match="'caformer_b36_in21ft1k' is not a timm model; did you mean "
                                          "'caformer_b36.sail_in22k_ft_in1k'"):
        parse_args(["--distillation-type", "hard", "--teacher-model", "caformer_b36_in21ft1k"], DIGITS)
    with pytest.raises(ConfigError, match="distillation_tau must be positive"):
        parse_args(["--distillation-tau", "0"], DIGITS)
    cfg = parse_args(["--distillation-type", "hard", "--teacher-model", "caformer_b36.sail_in22k_ft_in1k"], DIGITS)
    assert (cfg["distillation_alpha"], cfg["distillation_tau"], cfg["teacher_pretrained"]) == (0.5, 1.0, False)


def test_the_sdt_v2_recipes():
    """Pre-training at T=1 (train.sh), then the T=4 fine-tune with hard distillation (SDT-V2#8's schedule).
    Needs the registered metaspikformer_8_512 (msvit/models/spike_driven_transformer_v2.py)."""
    pre = parse_args([], ROOT / "imagenet" / "sdt_v2.yml")
    assert (pre["model"], pre["time_step"], pre["opt"], pre["blr"], pre["lr"]) == \
        ("metaspikformer_8_512", 1, "lambc", 6e-4, None)
    assert pre["blr"] * 8 * pre["batch_size"] / 256 == pytest.approx(2.4e-3)  # 8 GPUs x 128 = 1024
    assert (pre["epochs"], pre["warmup_epochs"], pre["min_lr"], pre["mixup"], pre["cutmix"]) == (200, 10, 1e-6, 0, 0)
    assert (pre["aa"], pre["reprob"], pre["smoothing"], pre["weight_decay"]) == ("rand-m9-mstd0.5-inc1", 0.25, 0.1, 0.05)
    assert pre["distillation_type"] == "none" and pre["model_kwargs"] == {}
    tune = parse_args([], ROOT / "imagenet" / "sdt_v2_finetune_t4.yml")
    assert (tune["model"], tune["model_kwargs"], tune["time_step"]) == ("metaspikformer_8_512", {"kd": True}, 4)
    assert (tune["distillation_type"], tune["teacher_model"], tune["distillation_alpha"], tune["distillation_tau"]) \
        == ("hard", "caformer_b36.sail_in22k_ft_in1k", 0.5, 1.0)
    assert (tune["epochs"], tune["warmup_epochs"], tune["lr"], tune["batch_size"]) == (20, 2, 1e-5, 32)
    changed = {key for key in pre if pre[key] != tune.get(key) and key != "config"}
    assert changed == {"model_kwargs", "time_step", "epochs", "warmup_epochs", "lr", "blr", "batch_size",
                       "val_batch_size", "distillation_type", "teacher_model", "teacher_pretrained"}
    listed = [name for name, _ in folder_recipes(ROOT / "imagenet" / "imagenet.yml")]
    assert {"sdt_v2.yml", "sdt_v2_finetune_t4.yml"} <= set(listed)  # imagenet/train.py --help lists them


def test_a_digits_run_distils_from_a_tiny_teacher(tmp_path):
    run = tmp_path / "run"
    argv = ["--img-size", "8", "--workers", "0", "--epochs", "1", "--batch-size", "32", "--output", str(run),
            "--distillation-type", "hard", "--teacher-model", TEACHER, "--distillation-alpha", "0.5"]
    msvit.training.train.main(DIGITS, VARIANTS, argv)
    with (run / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"])) and float(rows[0]["train_loss"]) > 0
    checkpoint = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    student = msvit.training.train.create_dataset_model(checkpoint["config"], VARIANTS)
    assert set(checkpoint["model"]) == set(student.state_dict())  # the student's weights, no teacher's
    assert not any("teacher" in str(key) for key in checkpoint if key != "config")
    assert checkpoint["config"]["teacher_model"] == TEACHER
    log = (run / "log.txt").read_text()
    assert "distillation: hard from test_resnet (random weights, frozen), alpha 0.5, tau 1; into the student's " \
           "single output" in log
