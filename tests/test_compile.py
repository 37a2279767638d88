"""torch.compile: every family traces as one graph, with no graph break, in both ways a compiled LIF can run
(`LIF.compiled_as`: spikingjelly's per-step loop, which inductor fuses, by default; or the C kernel as custom
operators with fake-tensor and autograd registrations, `msvit.neurons.lif_cpu`), and a compiled training step gives
the eager step's spikes and, to float rounding, its gradients."""
import copy
from pathlib import Path

import pytest
import timm
import torch

import msvit.training.evaluate
import msvit.training.train
from busy import excite_ssa
from msvit.neurons import lif_cpu
from msvit.config import parse_args
from msvit.neurons import LIF

SMALL = dict(T=2, num_classes=5, embed_dim=32, num_heads=2)
# T 2, batch 3: images [B, C, H, W], DVS frames [B, T, C, H, W]
INPUTS = {"msvit_cifar_4_384": lambda: torch.rand(3, 3, 32, 32) * 2 - 1,
          "qkformer_cifar_4_384": lambda: torch.rand(3, 3, 32, 32) * 2 - 1,
          "msvit_dvs_2_256": lambda: (torch.rand(3, 2, 2, 32, 32) > 0.7).float()}
KERNEL = pytest.param("kernel", marks=pytest.mark.skipif(lif_cpu.kernel() is None, reason="no C kernel here"))
CASES = [(name, True, training) for name in INPUTS for training in (True, False)] + [("msvit_cifar_4_384", False, True)]


@pytest.fixture
def compiled_as(request, monkeypatch):
    monkeypatch.setattr(LIF, "compiled_as", request.param)
    torch._dynamo.reset()
    yield request.param
    torch._dynamo.reset()


@pytest.mark.parametrize("compiled_as", ["loop", KERNEL], indirect=True)
@pytest.mark.parametrize("name, coupled, training", CASES)
def test_every_family_traces_as_one_graph(compiled_as, name, coupled, training):
    model = timm.create_model(name, batch_coupled_ssa=coupled, **SMALL).train(training)
    explanation = torch._dynamo.explain(model)(INPUTS[name]())
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_a_lif_that_runs_cupy_in_eager_traces_the_torch_loop(monkeypatch):
    """On CUDA the LIF resolves to the CuPy backend; inside a graph it must still run spikingjelly's torch loop
    (its CuPy kernel broke the graph, and the compiled CUDA step with it: H200 run of 2026-12-04)."""
    monkeypatch.setattr(LIF, "_resolve", lambda self, x: "cupy")
    torch._dynamo.reset()
    model = timm.create_model("msvit_cifar_4_384", **SMALL, depths=(1, 1, 1)).train()
    explanation = torch._dynamo.explain(model)(INPUTS["msvit_cifar_4_384"]())
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def step(model, x, target):
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, target).backward()
    return logits.detach()


@pytest.mark.parametrize("compiled_as, backend", [("loop", "aot_eager"), ("kernel", "aot_eager"),
                                                  ("loop", "inductor")], indirect=["compiled_as"])
def test_a_compiled_training_step_equals_the_eager_step(compiled_as, backend):
    if compiled_as == "kernel" and lif_cpu.kernel() is None:
        pytest.skip("no C kernel here")
    torch.manual_seed(0)
    # one block per stage: inductor's first compilation of it takes about a minute on 2 cores, not three
    eager = excite_ssa(timm.create_model("msvit_cifar_4_384", **SMALL, depths=(1, 1, 1))).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=backend, dynamic=False)
    x, target = INPUTS["msvit_cifar_4_384"](), torch.tensor([0, 1, 2])
    assert torch.equal(step(eager, x, target), step(compiled, x, target))  # the same spikes reach the head
    # the eager C kernel's backward and the traced loop's, or inductor's fused batch-norm sums, round
    # differently: gradients agree to float rounding, measured against the largest gradient
    largest = max(float(p.grad.abs().max()) for p in eager.parameters())
    for (key, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-5 * largest), key
    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        assert torch.equal(eager(x), compiled(x))


def test_train_and_test_compile_with_the_configured_mode(tmp_path, monkeypatch, capsys):
    """`compile: true` and `compile_mode` reach torch.compile in train.py and test.py (dynamo with the eager
    backend here: the wiring, not inductor), the first update reports its time, and the compiled evaluation
    gives the eager one's result."""
    real_compile, modes = torch.compile, []

    def recording_compile(model, *, mode, **kwargs):
        modes.append(mode)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    root = Path(__file__).resolve().parents[1]
    digits, variants = root / "digits" / "digits.yml", ("msvit_cifar_4_384", "qkformer_cifar_4_384")
    tiny = ["--img-size", "8", "--workers", "0", "--epochs", "1"]
    msvit.training.train.run(parse_args([*tiny, "--output", str(tmp_path / "run"), "--compile", "true",
                                "--compile-mode", "reduce-overhead"], digits), variants)
    out = capsys.readouterr().out
    assert modes == ["reduce-overhead"]
    assert "compile on (training forward, mode reduce-overhead)" in out
    assert "compile: the first update, compilation included, took" in out
    checkpoint = ["--checkpoint", str(tmp_path / "run" / "last.pth"), "--workers", "0"]
    eager = msvit.training.evaluate.run(parse_args(checkpoint, digits), variants)
    compiled = msvit.training.evaluate.run(parse_args([*checkpoint, "--compile", "true"], digits), variants)
    assert modes == ["reduce-overhead", "default"]
    assert compiled["top1"] == eager["top1"] and compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    torch._dynamo.reset()
