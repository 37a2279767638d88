"""Stopping and resuming a run on scikit-learn's digits, in-process: Ctrl-C mid-epoch, a signal at an epoch end, a
crash after a periodic mid-epoch checkpoint, and a disk that fills up all end, once resumed with nothing but
`--resume auto --output RUN`, with the weights and the summary of an uninterrupted run. A run extended with a
longer schedule continues on the new schedule; best.pth is a hard link to an epoch's last.pth."""
import csv
import errno
import math
import os
import re
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

import msvit.models._checkpoint
import msvit.training.train
from faulty_train import with_fault
from msvit.config import parse_args
from msvit.training.loaders import ResumableSampler, make_loader
from msvit.training.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, StopRequest
from msvit.training.run_folder import write_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")
# 1437 training digits in batches of 32: 44 updates per epoch, with mixup, on the native 8x8 images
ARGS = ["--img-size", "8", "--workers", "0", "--epochs", "2", "--batch-size", "32", "--mixup", "0.4",
        "--smoothing", "0.1", "--log-interval", "10"]
UPDATES_PER_EPOCH = 44
TIMING = ("img_per_s", "peak_mem_mb")


def train(argv: list) -> int:
    """`digits/train.py argv` in this process; its exit code (0 when it returns)."""
    try:
        msvit.training.train.main(DIGITS, VARIANTS, [str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


def summary(run: Path) -> list[dict]:
    with (run / "summary.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def count_updates(monkeypatch) -> list[int]:
    """A counter of the optimizer updates of the runs that follow."""
    counter = [0]
    create = msvit.training.train.create_optimizer_v2

    def counted(*args, **kwargs):
        optimizer = create(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
        return optimizer
    monkeypatch.setattr(msvit.training.train, "create_optimizer_v2", counted)
    return counter


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every test compares with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train([*ARGS, "--output", run]) == 0
    return run


def assert_same_run(run: Path, straight: Path) -> None:
    expected = torch.load(straight / "last.pth", weights_only=True)
    got = torch.load(run / "last.pth", weights_only=True)
    assert got["epoch"] == expected["epoch"] == 1 and got["position"] is None
    assert got["num_updates"] == expected["num_updates"] == 2 * UPDATES_PER_EPOCH
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert got["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], got["optimizer"]["state"][index]["exp_avg_sq"]), index
    # train loss, lr and evaluation of every epoch: the interrupted epoch's sums were carried over
    assert summary(run) == summary(straight)


def test_the_log_file_holds_the_header_and_a_line_every_log_interval_updates(straight):
    log = (straight / "log.txt").read_text().splitlines()
    text = "\n".join(log)
    assert "global batch 32 = 32 per process x 1 process x 1 accumulation; 44 updates per epoch" in text
    assert "devices: 1 x cpu: C kernel; float32; compile off" in text and "T 2, SSA batch-coupled" in text
    progress = [line for line in log if "  update " in line]
    # time-stamped; update/total, loss, lr, img/s, data-wait share, ETA; every 10 updates of both epochs
    pattern = (r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d epoch [01] \([12]/2\)  update (\d+)/44  loss \d+\.\d{4}  "
               r"lr \d\.\d{3}e[-+]\d\d  \d+ img/s  data \d+%  ETA \d+:\d\d:\d\d$")
    assert [int(re.match(pattern, line).group(1)) for line in progress] == [10, 20, 30, 40] * 2, progress


def test_resumable_sampler_continues_the_epoch_order():
    dataset = list(range(103))
    env = msvit.training.train.DistEnv(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    full, rest = ResumableSampler(dataset, env, seed=5, batch_size=8), ResumableSampler(dataset, env, 5, 8)
    full.set_epoch(3)
    rest.set_epoch(3, start_batch=4)
    assert list(rest) == list(full)[32:] and len(rest) == len(full) - 32 == 52 - 32
    assert list(full) != sorted(full)  # shuffled
    other = ResumableSampler(dataset, env, 5, 8)
    other.set_epoch(4)
    assert list(other) != list(full)
    torch_order = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=5)
    torch_order.set_epoch(3)
    assert list(full) == list(torch_order)  # DistributedSampler's order: checkpoints of earlier versions resume exactly


def test_resumable_sampler_shares_the_rest_of_the_epoch_among_another_number_of_processes():
    """Stopped after 4 batches of 8 on 2 processes, resumed on 3 processes at batch 5: the epoch trains every sample,
    and the processes get equally many (DDP's collectives would hang otherwise)."""
    dataset = list(range(103))

    def sampler(rank: int, world: int, batch: int) -> ResumableSampler:
        env = msvit.training.train.DistEnv(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        return ResumableSampler(dataset, env, seed=5, batch_size=batch)

    trained = []
    for rank in range(2):
        before = sampler(rank, 2, 8)
        before.set_epoch(3)
        trained += list(before)[:4 * 8]
    rest = []
    for rank in range(3):
        after = sampler(rank, 3, 5)
        after.set_epoch(3, start_sample=4 * 8 * 2)
        assert len(list(after)) == len(after) == -(-(104 - 64) // 3)  # 104: the order padded for 2 processes
        rest += list(after)
    assert sorted(set(trained + rest)) == dataset  # every sample of the epoch
    # and three twice: the 2-process order's padding (its first sample again), and the two that pad the rest to 42
    assert sorted(Counter(Counter(trained + rest).values()).items()) == [(1, 100), (2, 3)]


def test_ctrl_c_mid_epoch_then_resume_from_the_run_folder_alone(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(msvit.training.train, "create_optimizer_v2", with_fault(
        msvit.training.train.create_optimizer_v2, 30, lambda: os.kill(os.getpid(), signal.SIGINT)))
    assert train([*ARGS, "--output", run]) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "stopped by Ctrl-C (SIGINT) at epoch 0, batch 30/44 (update 30)" in out and "--resume auto --output" in out
    assert "Traceback" not in err
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == -1 and saved["num_updates"] == 30
    assert saved["position"]["epoch"] == 0 and saved["position"]["progress"]["batches"] == 30
    assert saved["position"]["progress"]["images"] == 30 * 32
    assert not (run / "best.pth").exists() and summary(run) == []

    monkeypatch.undo()
    updates = count_updates(monkeypatch)
    # the run folder alone (img_size, batch, mixup... come from its config.yaml), two loader workers this time:
    # every sample's augmentation depends on (seed, epoch, index) only
    assert train(["--resume", "auto", "--output", run, "--workers", 2]) == 0
    out = capsys.readouterr().out
    assert "changed on the command line: workers 0 -> 2" in out
    assert "resumed from" in out and "at epoch 0, batch 30 (update 30)" in out
    assert updates[0] == UPDATES_PER_EPOCH - 30 + UPDATES_PER_EPOCH  # the rest of epoch 0, then epoch 1
    assert_same_run(run, straight)


def test_signal_at_an_epoch_end_then_resume(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    evaluate = msvit.training.train.evaluate

    def evaluate_then_signal(*args, **kwargs):  # SIGTERM arrives while epoch 0 is evaluated
        signal.raise_signal(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(msvit.training.train, "evaluate", evaluate_then_signal)
    assert train([*ARGS, "--output", run]) == EXIT_PREEMPTED
    assert "stopped by SIGTERM after epoch 0" in capsys.readouterr().out
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["position"] is None and len(summary(run)) == 1
    monkeypatch.undo()
    assert train(["--resume", "auto", "--output", run]) == 0
    assert_same_run(run, straight)


def test_crash_after_a_periodic_checkpoint_then_resume(straight, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def crash():
        raise RuntimeError("node lost")  # the node dies: no checkpoint of its own

    monkeypatch.setattr(msvit.training.train, "create_optimizer_v2",
                        with_fault(msvit.training.train.create_optimizer_v2, UPDATES_PER_EPOCH + 19, crash))
    with pytest.raises(RuntimeError):
        train([*ARGS, "--output", run, "--checkpoint-interval", 8])
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["num_updates"] == 56 and saved["position"]["epoch"] == 1  # the 7th checkpoint: update 56 of all
    assert saved["position"]["progress"]["batches"] == 56 - UPDATES_PER_EPOCH
    monkeypatch.undo()
    assert train(["--resume", "auto", "--output", run]) == 0
    assert_same_run(run, straight)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_settings(tmp_path, monkeypatch, capsys):
    """--resume auto starts a new run in an empty folder; killed before any last.pth, the folder's config.yaml
    (1 epoch of 8x8 digits) is what `--resume auto --output RUN` alone restarts, not digits.yml (8 epochs, 16x16)."""
    run = tmp_path / "new"

    def crash():
        raise RuntimeError("node lost")

    monkeypatch.setattr(msvit.training.train, "create_optimizer_v2", with_fault(msvit.training.train.create_optimizer_v2, 3, crash))
    with pytest.raises(RuntimeError):
        train([*ARGS, "--epochs", 1, "--resume", "auto", "--output", run])
    assert "no last.pth in" in capsys.readouterr().out
    assert not (run / "last.pth").exists() and (run / "config.yaml").is_file()
    assert (run / "log.txt").read_text().splitlines()[-1].endswith("RuntimeError: node lost")
    monkeypatch.undo()
    assert train(["--resume", "auto", "--output", run]) == 0
    assert "restarting (no last.pth yet) with the settings of" in capsys.readouterr().out
    assert len(summary(run)) == 1
    saved = torch.load(run / "last.pth", weights_only=True)["config"]
    assert (saved["epochs"], saved["img_size"], saved["batch_size"]) == (1, 8, 32)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    save = torch.save
    calls = []

    def fill_the_disk(obj, f):  # the second epoch's last.pth (epoch 0's best.pth is a link to its last.pth)
        calls.append(1)
        if len(calls) == 2:
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f)

    monkeypatch.setattr(msvit.models._checkpoint.torch, "save", fill_the_disk)
    assert train([*ARGS, "--output", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write ") and "No space left on device" in err[0]
    assert "--resume auto --output" in err[0]
    assert (run / "log.txt").read_text().splitlines()[-1].endswith(err[0])  # the error line is in log.txt too
    monkeypatch.undo()
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in run.glob("*.tmp")) == []


def cosine_lr(t: float, epochs: int, peak: float, lr_min: float, warmup: int = 0, warmup_lr: float = 0.0) -> float:
    """The rate at epoch `t` of a cosine over `epochs` with a linear warmup inside it, written out by hand."""
    if t < warmup:
        return warmup_lr + t * (peak - warmup_lr) / warmup
    return lr_min + 0.5 * (peak - lr_min) * (1 + math.cos(math.pi * t / epochs))


def test_extending_a_finished_run_continues_on_the_new_schedule(straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    assert train(["--resume", "auto", "--output", run, "--epochs", 4, "--lr", 0.02, "--min-lr", 0.001,
                  "--weight-decay", 0.05]) == 0
    assert ("changed on the command line: epochs 2 -> 4, lr 0.01 -> 0.02, min_lr 0.0001 -> 0.001, weight_decay "
            "0.01 -> 0.05") in capsys.readouterr().out
    rows = summary(run)
    assert rows[:2] == summary(straight)  # the trained epochs are kept
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[2:] == pytest.approx([cosine_lr(t, 4, 0.02, 0.001) for t in (2, 3)], rel=1e-5)
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == 3 and saved["num_updates"] == 4 * UPDATES_PER_EPOCH
    assert {group["initial_lr"] for group in saved["optimizer"]["param_groups"]} == {0.02}
    assert {group["weight_decay"] for group in saved["optimizer"]["param_groups"]} == {0.0, 0.05}  # biases, norms: 0


def test_best_pth_is_a_hard_link_that_later_checkpoints_leave_intact(straight, tmp_path, monkeypatch):
    best = torch.load(straight / "best.pth", weights_only=True)
    assert best["epoch"] == best["best_epoch"]  # the improving epoch's own checkpoint
    same = os.path.samefile(straight / "best.pth", straight / "last.pth")
    assert same == (best["epoch"] == 1)  # linked while no later last.pth replaced it

    write_checkpoints({"epoch": 0, "w": torch.ones(3)}, tmp_path, best=True)
    assert os.path.samefile(tmp_path / "best.pth", tmp_path / "last.pth")
    write_checkpoints({"epoch": 1, "position": {"epoch": 1}, "w": torch.zeros(3)}, tmp_path, best=False)  # mid-epoch
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 0
    assert torch.equal(torch.load(tmp_path / "best.pth", weights_only=True)["w"], torch.ones(3))
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links: a copy
    write_checkpoints({"epoch": 2, "w": torch.full((3,), 2.0)}, tmp_path, best=True)
    assert not os.path.samefile(tmp_path / "best.pth", tmp_path / "last.pth")
    assert (tmp_path / "best.pth").read_bytes() == (tmp_path / "last.pth").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


def test_stop_signals_exit_codes_and_a_second_ctrl_c():
    cpu = torch.device("cpu")
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGTERM)  # another kind (torchrun's agent after a Ctrl-C) only confirms the stop
        assert stop.agreed(cpu) and stop.name == "SIGUSR1" and stop.exit_code == EXIT_PREEMPTED
    with StopRequest() as stop:
        assert not stop.agreed(cpu)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.agreed(cpu) and stop.exit_code == EXIT_INTERRUPTED == 130
        with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C: stop now
            os.kill(os.getpid(), signal.SIGINT)


class _SigintDisposition(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> bool:
        return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_loader_workers_leave_ctrl_c_to_the_main_process():
    cfg = {"workers": 1, "pin_mem": False}
    env = msvit.training.train.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = make_loader(_SigintDisposition(), cfg, env, 2, torch.utils.data.SequentialSampler(range(2)), False)
    assert next(iter(loader)).tolist() == [True, True]
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the main process still gets it


def test_ctrl_c_before_training_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt  # Ctrl-C while the data is read (or converted)

    monkeypatch.setattr(msvit.training.train, "build_datasets", interrupted)
    assert train([*ARGS, "--output", tmp_path / "run"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"
    assert not (tmp_path / "run").exists()


def test_an_unknown_model_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder: output/digits/<model>-<time> here
    assert train([*ARGS, "--model", "msvit_cifar_4_38"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "msvit_cifar_4_38" in err[0] and "msvit_cifar_4_384" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_run_resumed_mid_epoch_at_another_batch_size_trains_the_rest_of_the_epoch(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(msvit.training.train, "create_optimizer_v2", with_fault(
        msvit.training.train.create_optimizer_v2, 30, lambda: signal.raise_signal(signal.SIGTERM)))
    assert train([*ARGS, "--output", run]) == EXIT_PREEMPTED
    monkeypatch.undo()
    updates = count_updates(monkeypatch)
    capsys.readouterr()
    assert train(["--resume", "auto", "--output", run, "--batch-size", 16]) == 0
    out = capsys.readouterr().out
    assert ("saved mid-epoch at batch 32 x 1 process(es), this run has 16 x 1: the epoch continues after the 960 "
            "samples") in out
    # 1437 digits: the 477 after the first 960 make 29 full batches of 16, then epoch 1 has 89
    assert updates[0] == 477 // 16 + 1437 // 16
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["position"] is None and saved["num_updates"] == 30 + updates[0]


def test_a_schedule_shorter_than_the_position_is_refused_and_a_finished_run_says_so(straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    last = (run / "last.pth").read_bytes()
    assert train(["--resume", "auto", "--output", run, "--epochs", 1]) == 2
    err = capsys.readouterr().err
    assert "error: the schedule ends after 1 epoch (epochs + cooldown_epochs)" in err and "give --epochs 2 or more" in err
    assert train(["--resume", "auto", "--output", run]) == 0
    assert "the run has finished its 2 epochs: nothing is left to train" in capsys.readouterr().out
    assert (run / "last.pth").read_bytes() == last and summary(run) == summary(straight)
