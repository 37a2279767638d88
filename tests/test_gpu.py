"""GPU checks, skipped cleanly where CUDA (or CuPy) is missing: the CuPy LIF kernel against the torch
backend for every family in fp32 and under AMP, and a real training step on the GPU (DDP on two
devices when the machine has them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import msvit
from msvit.neurons import LIF, cupy_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_cupy = pytest.mark.skipif(not torch.cuda.is_available() or cupy_unavailable_reason() is not None,
                                reason=f"needs CUDA and CuPy ({cupy_unavailable_reason()})")

FAMILIES = [
    ("msvit_cifar_4_384", {}, (4, 3, 32, 32)),
    ("qkformer_cifar_4_384", {}, (4, 3, 32, 32)),
    ("msvit_10_384", dict(depths=(1, 1, 2)), (2, 3, 224, 224)),
    ("qkformer_10_384", dict(depths=(1, 1, 2)), (2, 3, 224, 224)),
    ("msvit_dvs_2_256", {}, (2, 16, 2, 128, 128)),
    ("qkformer_dvs_2_256", dict(num_classes=10, mlp_ratio=1), (2, 16, 2, 128, 128)),
]


def _run(model, x, y, backend, amp):
    msvit.set_neuron_backend(model, backend)
    model.zero_grad()
    spikes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: spikes.append(out.detach().float()))
             for m in model.modules() if isinstance(m, LIF)]
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    for h in hooks:
        h.remove()
    return spikes, logits.float().detach(), {k: p.grad.detach().float().clone() for k, p in model.named_parameters()}


@needs_cupy
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
@pytest.mark.parametrize("name,kwargs,shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_cupy_kernel_matches_torch_backend(name, kwargs, shape, amp):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).cuda().eval()  # eval: BN statistics stay put between runs
    x = (torch.randn(shape) if len(shape) == 4 else torch.randint(0, 3, shape).float()).cuda()
    y = torch.randint(0, model.num_classes, (shape[0],), device="cuda")
    ref_spikes, ref_logits, ref_grads = _run(model, x, y, "torch", amp)
    cupy_spikes, cupy_logits, cupy_grads = _run(model, x, y, "cupy", amp)
    assert len(ref_spikes) == len(cupy_spikes)
    assert all(torch.equal(a, b) for a, b in zip(ref_spikes, cupy_spikes))
    tol = dict(atol=1e-2, rtol=1e-2) if amp else dict(atol=1e-4, rtol=1e-4)
    assert torch.allclose(ref_logits, cupy_logits, **tol)
    for key, grad in ref_grads.items():
        assert torch.allclose(grad, cupy_grads[key], **tol), key


@needs_cuda
def test_auto_backend_picks_cupy_on_cuda_when_available():
    lif = LIF(backend="auto")
    lif(torch.ones(2, 3, device="cuda"))
    assert lif.backend == ("cupy" if cupy_unavailable_reason() is None else "torch")


@needs_cuda
def test_training_step_on_the_gpu(tmp_path):
    """A real run on the GPU (AMP on): DDP over two devices when there are two, else one device."""
    gpus = min(torch.cuda.device_count(), 2)
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}",
                 "--rdzv-endpoint=localhost:0", "--rdzv-backend=c10d"] if gpus > 1 else [sys.executable])
    run = tmp_path / "run"
    train = subprocess.run([*launcher, str(ROOT / "digits" / "train.py"), "--epochs", "1", "--amp", "true",
                            "--output", str(run)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"{gpus} processes on cuda" in train.stdout
    evaluation = subprocess.run([sys.executable, str(ROOT / "digits" / "test.py"), "--checkpoint",
                                 str(run / "last.pth"), "--json"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert json.loads(evaluation.stdout.strip().splitlines()[-1])["n"] == 360
