"""Two CPU processes (gloo) under torchrun on scikit-learn's digits: they train and evaluate every sample exactly
once; SIGTERM on one worker stops both after the same update with a checkpoint that resumes exactly; and a worker
killed mid-epoch under `torchrun --max-restarts 1` is restarted from the last periodic checkpoint, ending with the
weights of an uninterrupted run."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msvit.training.preemption import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
FAULTY_TRAIN = Path(__file__).with_name("faulty_train.py")
# 1437 training digits over two processes in batches of 16: 44 updates per epoch, each of 32 images
ARGS = ["--img-size", "8", "--workers", "0", "--epochs", "1", "--log-interval", "10"]
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def torchrun(script: Path, *args, restarts: int = 0, fault: dict | None = None, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 script args...`; on a timeout its whole process group is killed, so that no
    worker outlives the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(fault or {})}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={restarts}",
            "--rdzv-endpoint=localhost:0", "--rdzv-backend=c10d", str(script), *map(str, args)]
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def summary_rows(run: Path) -> list[dict]:
    with (run / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_weights(run: Path, straight: Path) -> None:
    expected = torch.load(straight / "last.pth", weights_only=True)
    got = torch.load(run / "last.pth", weights_only=True)
    assert got["epoch"] == expected["epoch"] == 0 and got["num_updates"] == expected["num_updates"] == 44
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    drop = ("img_per_s", "peak_mem_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in summary_rows(run)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in summary_rows(straight)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    proc = torchrun(ROOT / "digits" / "train.py", *ARGS, "--output", tmp / "run", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 32 = 16 per process x 2 processes x 1 accumulation" in proc.stdout
    assert "2 x cpu: C kernel" in proc.stdout
    assert proc.stdout.count("44 updates per epoch") == 1  # one header, from rank 0
    # timm's warning that a one-epoch cosine does nothing is not shown, on any rank
    assert "Cosine annealing" not in proc.stderr
    return tmp / "run"


def test_two_processes_train_and_evaluate_every_sample_once(straight):
    rows = summary_rows(straight)
    assert len(rows) == 1  # rank 0 alone writes
    assert 0.0 < float(rows[0]["firing_rate"]) < 1.0  # the firing watch's collective read over both processes
    # evaluation through the authors' legacy launcher, which passes --local-rank=N to the script
    evaluation = subprocess.run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                                 "--master_port", str(_free_port()), str(ROOT / "digits" / "test.py"),
                                 "--checkpoint", str(straight / "last.pth"), "--json", "--workers", "0",
                                 "--val-batch-size", "7"],
                                cwd=straight, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                text=True, timeout=TIMEOUT)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    metrics = json.loads(evaluation.stdout)  # printed by rank 0 only, alone on stdout
    assert metrics["n"] == 360  # the held-out digits, each counted once over the two shards
    assert metrics["top1"] == pytest.approx(float(rows[0]["eval_top1"]), abs=1e-3)


def test_sigterm_on_one_worker_stops_both_then_resume_is_exact(straight, tmp_path):
    run = tmp_path / "run"
    stopped = torchrun(FAULTY_TRAIN, *ARGS, "--output", run, cwd=tmp_path,
                       fault=dict(FAULT="SIGTERM", FAULT_RANK="1", FAULT_UPDATE="20"))
    assert stopped.returncode != 0, stopped.stdout[-3000:]
    assert "stopped by a signal on another process at epoch 0, batch 20/44 (update 20)" in stopped.stdout
    assert f"exitcode  : {EXIT_PREEMPTED}" in stopped.stderr  # torchrun's report of the failed worker
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["num_updates"] == 20 and saved["position"]["progress"]["batches"] == 20
    resumed = torchrun(ROOT / "digits" / "train.py", "--resume", "auto", "--output", run, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(run, straight)


def test_elastic_restart_after_a_killed_worker_is_exact(straight, tmp_path):
    run = tmp_path / "run"
    # the same command starts and restarts the workers; rank 1 is killed after update 17, the last
    # periodic checkpoint was written after update 15
    proc = torchrun(FAULTY_TRAIN, *ARGS, "--output", run, "--resume", "auto", "--checkpoint-interval", 5,
                    restarts=1, cwd=tmp_path, fault=dict(FAULT="SIGKILL", FAULT_RANK="1", FAULT_UPDATE="17"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no last.pth in" in proc.stdout  # the first attempt started the run
    assert "at epoch 0, batch 15 (update 15)" in proc.stdout  # the restart continued it
    assert_same_weights(run, straight)
