"""The batch-coupled SSA output neuron of the authors' release (QKFormer issue #14) and its per-sample fix.

The release calls SSA's last neuron on the flattened `[T*B, C, N]` tensor, so it integrates along one
sequence (t0,b0), (t0,b1), ..., (t1,b0), ... and carries membrane charge from each sample to the next.
Here: a hand-computed sequence, every family against spikingjelly's node on that flattened view, the
per-sample property, the default, and how test.py, training and checkpoints carry the setting.
"""
import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from spikingjelly.clock_driven import neuron as sj_neuron
from spikingjelly.clock_driven import surrogate
from torch import nn

import msvit
from msvit.energy.cli import run as energy_run
import msvit.training.evaluate
import msvit.training.train
from busy import calibrate_batch_norms, excite_ssa
from msvit.neurons import lif_cpu
from msvit.console import rounded
from msvit.config import parse_args
from msvit.layers import SpikingSelfAttention, TokenAttention
from msvit.neurons import LIF
from msvit.neurons.lif import _FusedLIF
from msvit.zoo import create_dataset_model

DIGITS = Path(__file__).resolve().parents[1] / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")


def tiny_cfg(output: Path, *extra: str) -> dict:
    """The digits demo's model on the native 8x8 digits, no DataLoader workers."""
    return parse_args(["--img-size", "8", "--workers", "0", "--output", str(output), *extra], DIGITS)

# ------------------------------------------------------------------------------------------ by hand
# Two steps of two samples, each x fed to a neuron at rest (tau 2: h = v + (x - v) / 2, threshold 1):
#   per sample, b0: 1.5 -> h 0.75, then 1.5 -> h 1.125 fires;  b1: 1.5 -> 0.75, then 0.4 -> 0.575
#   coupled, one sequence (t0,b0) (t0,b1) (t1,b0) (t1,b1): 0.75; 0.75 + 0.375 = 1.125 fires (b1's charge
#   at t0 is b0's leftover); reset, 0.75; 0.575
X_BY_HAND = [[1.5, 1.5], [1.5, 0.4]]          # [T, B]
PER_SAMPLE_BY_HAND = [[0.0, 0.0], [1.0, 0.0]]
COUPLED_BY_HAND = [[0.0, 1.0], [0.0, 0.0]]


@pytest.fixture(params=["c-kernel", "torch-ops", "spikingjelly"])
def lif(request, monkeypatch):
    """A LIF neuron through each CPU implementation: the C kernel, the torch operations it falls back to, and
    spikingjelly's own node (the reference path)."""
    neuron = LIF(backend="torch")
    if request.param == "c-kernel":
        if lif_cpu.kernel() is None:
            pytest.skip(f"no C compiler for the CPU LIF kernel ({lif_cpu.unavailable_reason()})")
        assert neuron._function(torch.zeros(2, 1)) is lif_cpu.CpuLIF
    elif request.param == "torch-ops":
        monkeypatch.setattr(lif_cpu, "kernel", lambda: None)
        assert neuron._function(torch.zeros(2, 1)) is _FusedLIF
    else:
        neuron.fused = False
    return neuron


def test_coupled_neuron_by_hand(lif):
    x = torch.tensor(X_BY_HAND).unsqueeze(-1)  # [T, B, 1]
    per_sample = lif(x)
    lif.reset()
    coupled = lif(x.flatten(0, 1)).reshape(x.shape)  # the release's [T*B, 1] sequence
    assert per_sample.squeeze(-1).tolist() == PER_SAMPLE_BY_HAND
    assert coupled.squeeze(-1).tolist() == COUPLED_BY_HAND


@pytest.mark.parametrize("coupled", [True, False], ids=["batch-coupled", "per-sample"])
def test_ssa_output_projection_by_hand(coupled):
    """The same sequence through SSA's own output projection (identity convolution and batch norm): the
    model's T*B order is time-major, then sample."""
    attn = SpikingSelfAttention(1, 1, attn_threshold=1.0, neurons="torch", batch_coupled=coupled).eval()
    with torch.no_grad():
        attn.proj_conv.weight.fill_(1.0)
        attn.proj_conv.bias.zero_()
        attn.proj_bn.running_var.fill_(1 - attn.proj_bn.eps)
    x = torch.tensor(X_BY_HAND).reshape(2, 2, 1, 1)  # [T, B, C, N]
    with torch.no_grad():
        out = attn.project(x, torch.Size([2, 2, 1, 1, 1]))
    assert out.flatten(1).tolist() == (COUPLED_BY_HAND if coupled else PER_SAMPLE_BY_HAND)


# ------------------------------------------------------------------------------------------ every family
# T 2, batch 3, small widths; inputs at each family's stem (CIFAR 8x8, ImageNet 32x32, DVS 2x32x32 frames)
FAMILIES = [
    ("msvit_cifar_4_384", dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), img_size=8), (3, 3, 8, 8)),
    ("qkformer_cifar_4_384", dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), img_size=8), (3, 3, 8, 8)),
    ("msvit_10_384", dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), img_size=32), (3, 3, 32, 32)),
    ("qkformer_10_384", dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), img_size=32), (3, 3, 32, 32)),
    ("msvit_dvs_2_256", dict(embed_dim=32, num_heads=2, img_size=32), (3, 2, 2, 32, 32)),
    ("qkformer_dvs_2_256", dict(embed_dim=32, num_heads=2, img_size=32, mlp_ratio=1), (3, 2, 2, 32, 32)),
]
IDS = [f[0] for f in FAMILIES]


def excited_model(name: str, kwargs: dict, x: torch.Tensor) -> nn.Module:
    """A small model whose SSA neurons fire often (Q/K/V batch norms biased by +1.5, which a random model at
    initialisation does not do), with batch-norm running statistics measured on `x`, so that the SSA output
    neuron is busy in training and in evaluation mode."""
    torch.manual_seed(0)
    model = timm.create_model(name, T=2, neuron_backend="torch", **kwargs)
    return calibrate_batch_norms(excite_ssa(model), x)


def family_input(shape: tuple) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(shape) if len(shape) == 4 else torch.randint(0, 3, shape).float()


class FlattenedSpikingjellyLIF(nn.Module):
    """spikingjelly's `MultiStepLIFNode` applied to the `[T*B, C, N]` view, as the authors' SSA calls it."""

    def __init__(self, v_threshold: float) -> None:
        super().__init__()
        self.node = sj_neuron.MultiStepLIFNode(tau=2.0, v_threshold=v_threshold, v_reset=0.0, detach_reset=True,
                                               surrogate_function=surrogate.Sigmoid(alpha=4.0), backend="torch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, B, C, N] from the per-sample path
        return self.node(x.flatten(0, 1)).reshape(x.shape)


def release_reference(model: nn.Module) -> nn.Module:
    """A copy of `model` on the reference path (spikingjelly's nodes), with each SSA output neuron replaced by
    spikingjelly's node on the flattened view: the release's computation, built independently of our coupling."""
    reference = msvit.use_reference_implementation(msvit.set_batch_coupled_ssa(copy.deepcopy(model), False))
    for attn in reference.modules():
        if isinstance(attn, SpikingSelfAttention):
            attn.proj_lif = FlattenedSpikingjellyLIF(attn.proj_lif.v_threshold)
    return reference


def _logits_and_grads(model: nn.Module, x: torch.Tensor, train: bool):
    model.train(train)
    model.zero_grad()
    logits = model(x)
    if train:
        logits.square().sum().backward()
    return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,kwargs,shape", FAMILIES, ids=IDS)
def test_coupled_model_is_spikingjelly_on_the_flattened_view(name, kwargs, shape, train):
    x = family_input(shape)
    model = excited_model(name, kwargs, x)
    assert model.config["batch_coupled_ssa"] is True
    reference = release_reference(model)
    per_sample = msvit.set_batch_coupled_ssa(copy.deepcopy(model), False)
    logits, grads = _logits_and_grads(model, x, train)
    ref_logits, ref_grads = _logits_and_grads(reference, x, train)
    per_sample_logits, _ = _logits_and_grads(per_sample, x, train)
    assert (logits - per_sample_logits).abs().max() > 1e-3  # this input is one where the coupling matters
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        assert torch.allclose(grad, ref_grads[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("name,kwargs,shape", FAMILIES, ids=IDS)
def test_per_sample_outputs_do_not_depend_on_the_batch(name, kwargs, shape):
    x = family_input(shape)
    model = excited_model(name, kwargs, x).eval()
    with torch.no_grad():
        for coupled in (False, True):
            msvit.set_batch_coupled_ssa(model, coupled)
            together = model(x)
            alone = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
            same = [torch.allclose(together[i], alone[i], atol=1e-5, rtol=0) for i in range(x.shape[0])]
            assert all(same) if not coupled else not all(same), (coupled, same)


@pytest.mark.parametrize("name", msvit.MODEL_NAMES)
def test_every_model_defaults_to_the_release_and_takes_the_keyword(name):
    small = dict(embed_dim=32, num_heads=2)
    for kwargs, expected in (({}, True), (dict(batch_coupled_ssa=False), False)):
        model = timm.create_model(name, **small, **kwargs)
        assert model.config["batch_coupled_ssa"] is expected
        ssa = [m for m in model.modules() if isinstance(m, SpikingSelfAttention)]
        assert ssa and all(m.batch_coupled is expected for m in ssa)
        assert not any(getattr(m, "batch_coupled") for m in model.modules() if isinstance(m, TokenAttention))
    msvit.set_batch_coupled_ssa(model, True)
    assert model.config["batch_coupled_ssa"] and all(m.batch_coupled for m in ssa)


# ------------------------------------------------------------------------------------------ test.py
@pytest.fixture(scope="module")
def excited_digits(tmp_path_factory):
    """The digits model at 8x8 with busy SSA neurons, and a writer of checkpoints with a chosen saved config."""
    cfg = parse_args(["--img-size", "8", "--workers", "0"], DIGITS)
    torch.manual_seed(0)
    model = create_dataset_model(cfg, VARIANTS)
    excite_ssa(model)
    with torch.no_grad():
        model.train()(torch.rand(120, 3, 8, 8) * 2 - 1)  # batch-norm statistics near the digits' scale
    folder = tmp_path_factory.mktemp("coupling")

    def write(name: str, config: dict | None) -> str:
        path = folder / name
        torch.save({"model": model.state_dict(), **({"config": config} if config is not None else {})}, path)
        return str(path)
    return cfg, write


def evaluate_cli(capsys, checkpoint: str, *argv: str) -> tuple[dict, list[str]]:
    """test.py in-process; returns the metrics and the lines it printed: with --json, the JSON line after the
    log lines (which went to stderr, so that stdout holds exactly one JSON object)."""
    cfg = parse_args(["--checkpoint", checkpoint, "--img-size", "8", "--workers", "0", *argv], DIGITS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster
    try:
        metrics = msvit.training.evaluate.run(cfg, VARIANTS)
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    if "--json" in argv:
        assert len(out.strip().splitlines()) == 1 and json.loads(out)
        return metrics, err.strip().splitlines() + [out.strip()]
    return metrics, out.strip().splitlines()


def test_test_py_restores_the_saved_setting_and_reports_it(excited_digits, capsys):
    cfg, write = excited_digits
    for saved in (True, False):
        path = write(f"saved-{saved}.pth", {**cfg, "batch_coupled_ssa": saved})
        metrics, out = evaluate_cli(capsys, path, "--json", "--batch-coupled-ssa", str(not saved).lower())
        reported = json.loads(out[-1])
        assert reported["batch_coupled_ssa"] is saved and reported["val_batch_size"] == 120
        assert metrics["batch_coupled_ssa"] is saved
        assert any("as the checkpoint was trained" in line for line in out[:-1])
    per_sample, _ = evaluate_cli(capsys, write("p.pth", {**cfg, "batch_coupled_ssa": False}), "--json")
    coupled, _ = evaluate_cli(capsys, write("c.pth", {**cfg, "batch_coupled_ssa": True}), "--json")
    assert per_sample["loss"] != coupled["loss"]  # the weights make the setting visible


def test_checkpoints_without_the_setting(excited_digits, capsys):
    cfg, write = excited_digits
    old = {k: v for k, v in cfg.items() if k != "batch_coupled_ssa"}  # saved before the setting existed
    metrics, out = evaluate_cli(capsys, write("old.pth", old), "--json")
    assert metrics["batch_coupled_ssa"] is False
    assert sum("predates the batch_coupled_ssa setting" in line for line in out) == 1
    # the authors' checkpoints carry no config of ours: the recipe's (and command line's) setting applies
    authors = write("authors.pth", None)
    assert evaluate_cli(capsys, authors, "--json")[0]["batch_coupled_ssa"] is True
    assert evaluate_cli(capsys, authors, "--json", "--batch-coupled-ssa", "false")[0]["batch_coupled_ssa"] is False


def test_energy_report_restores_the_saved_setting(excited_digits, capsys):
    cfg, write = excited_digits
    for saved in (False, True):
        path = write(f"energy-{saved}.pth", {**cfg, "batch_coupled_ssa": saved})
        run_cfg = parse_args(["--checkpoint", path, "--img-size", "8", "--workers", "0"], DIGITS)
        report = energy_run(run_cfg, batches=1)
        assert report["batch_coupled_ssa"] is saved and report["images"] == 120
    capsys.readouterr()


def test_compare_ssa_coupling_reports_both_settings(excited_digits, capsys):
    cfg, write = excited_digits
    path = write("coupled.pth", {**cfg, "batch_coupled_ssa": True})
    metrics, out = evaluate_cli(capsys, path, "--json", "--compare-ssa-coupling")
    both = json.loads(out[-1])["ssa_settings"]
    assert set(both) == {"batch_coupled", "per_sample"} and set(both["per_sample"]) == {"top1", "top5", "loss", "n"}
    assert both["batch_coupled"] == rounded({k: metrics[k] for k in both["per_sample"]})
    per_sample, _ = evaluate_cli(capsys, write("per-sample.pth", {**cfg, "batch_coupled_ssa": False}), "--json")
    assert both["per_sample"]["loss"] == rounded(per_sample["loss"]) != both["batch_coupled"]["loss"]

    _, text = evaluate_cli(capsys, path, "--compare-ssa-coupling")
    assert text[0].startswith("SSA output neuron: batch-coupled") and "evaluation batch 120 per process" in text[0]
    assert text[1].startswith("note: with the batch-coupled SSA, predictions depend on the evaluation batch size")
    assert "top-1" in text[2] and "batch-coupled SSA" in text[3] and "per-sample SSA" in text[4]
    assert "the coupling is worth" in text[5]
    _, text = evaluate_cli(capsys, write("p2.pth", {**cfg, "batch_coupled_ssa": False}))
    assert text[-2].startswith("SSA output neuron: per sample") and "top-1" in text[-1]
    assert not any(line.startswith("note:") for line in text)


# ------------------------------------------------------------------------------------------ training
def test_training_saves_and_resumes_the_setting_and_flags_a_changed_batch(tmp_path, capsys):
    run = tmp_path / "per-sample"
    msvit.training.train.run(tiny_cfg(run, "--epochs", "1", "--batch-coupled-ssa", "false", "--batch-size", "8"), VARIANTS)
    first = capsys.readouterr().out
    assert "SSA per sample" in first and "couples the" not in first  # per sample: the batch is not the model's
    assert torch.load(run / "last.pth", weights_only=True)["config"]["batch_coupled_ssa"] is False

    # the recipe says true; the resumed run keeps what it was trained with
    msvit.training.train.run(tiny_cfg(run, "--epochs", "2", "--resume", "auto", "--batch-size", "8"), VARIANTS)
    resumed = capsys.readouterr().out
    assert "batch_coupled_ssa false, as the checkpoint was trained" in resumed and "SSA per sample" in resumed
    assert torch.load(run / "last.pth", weights_only=True)["config"]["batch_coupled_ssa"] is False
    assert parse_args(["--config", str(run / "config.yaml")])["batch_coupled_ssa"] is False

    msvit.training.train.run(tiny_cfg(tmp_path / "coupled", "--epochs", "1", "--batch-size", "8"), VARIANTS)
    coupled = capsys.readouterr().out
    assert "SSA batch-coupled" in coupled
    assert "couples the 8 samples of each per-process batch, where the recipe trains with 16" in coupled
    assert "--accum-iter" in coupled
    assert torch.load(tmp_path / "coupled" / "last.pth", weights_only=True)["config"]["batch_coupled_ssa"] is True
