"""The shared training loop on scikit-learn's digits: it learns, a resumed run equals an uninterrupted
one, checkpoints survive a crash mid-write, and a NaN stops the run. Stopping and resuming:
test_resume.py; several processes: test_torchrun.py."""
import csv
import os
from pathlib import Path

import pytest
import torch

import msvit.models._checkpoint
import msvit.console
import msvit.training.run_log
import msvit.training.run_folder
import msvit.training.train
from msvit.config import parse_args
from msvit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")
# a tiny, fast member of the family on 8x8 digits
TINY = ["--img-size", "8", "--workers", "0"]  # the demo's model on the native 8x8 digits


def tiny_cfg(output: Path, *extra: str) -> dict:
    return parse_args([*TINY, "--output", str(output), *extra], DIGITS)


def summary_rows(run: Path) -> list[dict]:
    with (run / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def tensorboard_events(run: Path):
    """The run's TensorBoard events, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_digits_run_learns(tmp_path):
    umask = os.umask(0o022)  # the usual one, whatever this machine's is
    try:
        result = msvit.training.train.run(tiny_cfg(tmp_path / "run", "--epochs", "4"), VARIANTS)
    finally:
        os.umask(umask)
    rows = summary_rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.3
    assert result["best_top1"] > 50.0  # chance is 10%
    assert all(float(r["img_per_s"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)
    # the lr column is the rate used during the epoch: cosine over 4 epochs from 1e-2 towards 1e-4
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-2) and lrs[2] == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2)
    saved = parse_args(["--config", str(tmp_path / "run" / "config.yaml")], None)
    assert saved["model_kwargs"] == {"embed_dim": 64, "num_heads": 2, "depths": [1, 1, 1]}
    assert saved["img_size"] == 8
    # the firing watch: the network's rate per epoch in summary.csv and TensorBoard, each stage's, one histogram
    events = tensorboard_events(tmp_path / "run")
    network = [(e.step, e.value) for e in events.Scalars("firing/network")]
    assert [step for step, _ in network] == [0, 1, 2, 3]
    assert [f"{value:.4f}" for _, value in network] == [r["firing_rate"] for r in rows]
    assert all(0.0 < value < 1.0 for _, value in network)
    assert {"firing/stage1", "firing/stage3", "firing/patch_embed1"} <= set(events.Tags()["scalars"])
    assert [h.step for h in events.Histograms("firing/layers")] == [0, 1, 2, 3]
    for path in (tmp_path / "run").iterdir():  # a group shares a run folder
        assert path.stat().st_mode & 0o040, f"{path.name} is not readable by the group"


def test_a_timm_ann_trains_evaluates_and_reloads_by_the_same_loop(tmp_path, capsys):
    """timm's ANN through the same recipe: a tiny ViT, one epoch of 11 batches; test.py and load_model rebuild it."""
    import msvit.training.evaluate
    from msvit.zoo import load_model

    cfg = tiny_cfg(tmp_path / "run", "--model", "deit_tiny_patch16_224", "--model-kwargs",
                   "{patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2}", "--epochs", "1", "--batch-size", "128")
    result = msvit.training.train.run(cfg, VARIANTS)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("deit_tiny_patch16_224 on"))
    assert "an ANN (timm's VisionTransformer): no T, no spikes; no effect on it: time_step 2" in header
    assert not summary_rows(tmp_path / "run")[0]["firing_rate"]  # no firing watch
    saved = parse_args(["--config", str(tmp_path / "run" / "config.yaml")], None)
    assert (saved["time_step"], saved["batch_coupled_ssa"], saved["watch_firing"]) == (1, False, False)
    evaluated = msvit.training.evaluate.run(parse_args([*TINY, "--checkpoint", str(tmp_path / "run" / "best.pth"),
                                                        "--json"], DIGITS), VARIANTS)
    assert evaluated["ann"] and evaluated["top1"] == pytest.approx(result["best_top1"])
    model = load_model(tmp_path / "run" / "best.pth")
    assert type(model).__name__ == "VisionTransformer" and model.patch_embed.img_size == (8, 8)


def test_resumed_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    args = ("--epochs", "3", "--mixup", "0.4", "--smoothing", "0.1")
    msvit.training.train.run(tiny_cfg(tmp_path / "straight", *args), VARIANTS)

    real_save = msvit.models._checkpoint.save_checkpoint

    def crash_after_epoch_1(checkpoint, path):
        real_save(checkpoint, path)
        if checkpoint["epoch"] == 1 and Path(path).name == "last.pth":
            raise KeyboardInterrupt  # the job is killed right after epoch 1's checkpoint

    monkeypatch.setattr(msvit.training.run_folder, "save_checkpoint", crash_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        msvit.training.train.run(tiny_cfg(tmp_path / "resumed", *args), VARIANTS)
    assert [int(r["epoch"]) for r in summary_rows(tmp_path / "resumed")] == [0, 1]
    monkeypatch.setattr(msvit.training.run_folder, "save_checkpoint", real_save)
    msvit.training.train.run(tiny_cfg(tmp_path / "resumed", *args, "--resume", "auto"), VARIANTS)

    straight = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert summary_rows(tmp_path / "straight") == summary_rows(tmp_path / "resumed") or \
        [r["epoch"] for r in summary_rows(tmp_path / "resumed")] == ["0", "1", "2"]
    assert [r["train_loss"] for r in summary_rows(tmp_path / "resumed")] == \
        [r["train_loss"] for r in summary_rows(tmp_path / "straight")]


def test_existing_run_folder_is_not_overwritten_without_resume(tmp_path):
    run = tmp_path / "run"
    msvit.training.train.run(tiny_cfg(run, "--epochs", "1"), VARIANTS)
    before = (run / "last.pth").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        msvit.training.train.run(tiny_cfg(run, "--epochs", "1"), VARIANTS)
    assert (run / "last.pth").read_bytes() == before
    with pytest.raises(UserError, match="cannot resume"):
        msvit.training.train.run(tiny_cfg(tmp_path / "other", "--resume", str(tmp_path / "other" / "last.pth")), VARIANTS)


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    msvit.models._checkpoint.save_checkpoint({"epoch": 4, "model": {"w": torch.ones(3)}}, path)

    def torn_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        msvit.models._checkpoint.save_checkpoint({"epoch": 5, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left behind


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good(tmp_path, monkeypatch):
    run = tmp_path / "run"
    msvit.training.train.run(tiny_cfg(run, "--epochs", "1"), VARIANTS)
    good = torch.load(run / "last.pth", weights_only=True)

    class DivergingLoss(msvit.training.train.LabelSmoothingCrossEntropy):
        calls = 0

        def forward(self, x, target):
            DivergingLoss.calls += 1
            loss = super().forward(x, target)
            return loss * float("nan") if DivergingLoss.calls == 3 else loss

    monkeypatch.setattr(msvit.training.train, "LabelSmoothingCrossEntropy", DivergingLoss)
    with pytest.raises(UserError, match=r"loss is nan at epoch 1, step 2"):
        msvit.training.train.run(tiny_cfg(run, "--epochs", "2", "--resume", "auto"), VARIANTS)
    kept = torch.load(run / "last.pth", weights_only=True)
    assert kept["epoch"] == good["epoch"] == 0
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())


def test_the_header_says_what_runs_and_warns_of_a_schedule_longer_than_the_run(capsys):
    cfg = parse_args(["--epochs", "1", "--workers", "100000"], ROOT / "cifar10" / "cifar10.yml")
    env = msvit.training.train.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    msvit.training.train.setup_logging(True)
    msvit.training.train._clamp_workers(cfg)
    model = msvit.training.train.create_dataset_model({**cfg, "model_kwargs": {"embed_dim": 32, "num_heads": 2}}, VARIANTS)
    msvit.training.run_log.log_header(cfg, env, model, (50000, 10000), 1e-3, 781,
                             msvit.training.train.amp_settings(cfg, env.device), Path("run"))
    out = capsys.readouterr().out
    assert f"workers 100000 is more than the {len(os.sched_getaffinity(0))} CPUs" in out
    assert "50,000 train / 10,000 val samples, 10 classes; global batch 64 = 64 per process x 1 process" in out
    assert "11 epochs (1 + 10 cooldown at 1e-05); warmup 20 epochs from 1e-05 inside the cosine" in out
    assert "cosine from peak lr 0.001 to 1e-05; stepped per epoch" in out
    assert "float32 (amp applies to CUDA only); compile off" in out  # the recipe's amp: true, on a CPU
    assert "warmup_epochs 20 + cooldown_epochs 10 exceed epochs 1" in out



def test_firing_watch_logs_rates_and_warns_once_of_dead_layers(tmp_path, caplog):
    """A tiny model with one neuron silenced and one saturated (batch-norm biases -100 / +100): the watch's
    TensorBoard scalars and histogram hold the measured rates, and one warning line names both layers, once
    while they stay so."""
    from torch.utils.tensorboard import SummaryWriter

    from msvit.training.firing_watch import FiringWatch
    from msvit.models import SpikingTransformer

    torch.manual_seed(0)
    model = SpikingTransformer(stem="cifar", img_size=8, in_chans=3, num_classes=5, T=2, embed_dim=16,
                               depths=(1, 1, 1), num_heads=2, neuron_backend="torch").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.fill_(4.0)
        model.stage2[0].mlp.fc1_bn.bias.fill_(-100.0)
        model.patch_embed2.proj4_bn.bias.fill_(100.0)
    watch = FiringWatch(model)
    writer = SummaryWriter(str(tmp_path))
    caplog.set_level("WARNING", logger="msvit")
    x = torch.randn(3, 3, 8, 8)
    for epoch in range(2):
        with torch.no_grad(), watch.measuring():
            model(x)
        firing = watch.read()
        watch.log(writer, epoch, firing)
    writer.close()
    rates = firing["neurons"]
    assert rates["stage2.0.mlp.fc1_lif"] == 0.0 and rates["patch_embed2.proj4_lif"] == 1.0
    assert sum(0.0 < r < 1.0 for r in rates.values()) >= 20  # the others fire sometimes
    warnings = [r.getMessage() for r in caplog.records if "spiking layers" in r.getMessage()]
    assert len(warnings) == 1 and "epoch 0" in warnings[0]
    assert "never fired over the evaluation set (stage2.0.mlp.fc1_lif, " in warnings[0]  # and what it feeds
    assert "; 1 layer fired at 99% or more of the steps (patch_embed2.proj4_lif)" in warnings[0]
    events = tensorboard_events(tmp_path)
    assert [e.value for e in events.Scalars("firing/network")] == pytest.approx([firing["firing_rate"]] * 2)
    for stage, rate in firing["stage_firing_rates"].items():
        assert events.Scalars(f"firing/{stage}")[-1].value == pytest.approx(rate)
    histogram = events.Histograms("firing/layers")[-1].histogram_value
    assert (histogram.min, histogram.max, histogram.num) == (0.0, 1.0, len(rates))
    assert histogram.sum == pytest.approx(sum(rates.values()))
    off = FiringWatch(model, enabled=False)
    with off.measuring():
        assert not any(m._forward_hooks for m in model.modules())
    assert off.read() is None


def test_a_one_epoch_schedule_is_quiet_and_singular(caplog):
    """timm warns that a one-step cosine has no effect; for a 1-epoch run that is meant, so the warning is dropped
    (the rate is unchanged: the peak), and the header says '1 epoch'."""
    cfg = parse_args(["--epochs", "1", "--warmup-epochs", "0", "--cooldown-epochs", "0"], DIGITS)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg["lr"])
    with caplog.at_level("WARNING", logger="timm"):
        scheduler = msvit.training.train.build_scheduler(cfg, optimizer, 10)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("timm")] == []
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == cfg["lr"]
    assert msvit.training.run_log._schedule_line(cfg, cfg["lr"]).startswith("schedule: 1 epoch; no warmup; cosine")
    assert msvit.console.epoch_label(0, 1) == "epoch 0 (1/1)"
