"""test.py on one of our checkpoints: the network and the run's data settings come from its saved config,
and what evaluation may change (T, the evaluation batch, data options) comes from the command line."""
import json
from pathlib import Path

import pytest
import torch

import msvit.evaluate
from busy import calibrate_batch_norms, excite_ssa
from msvit.config import parse_args
from msvit.zoo import create_dataset_model

DIGITS = Path(__file__).resolve().parents[1] / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random digits model with busy neurons, as if trained at 8x8, T 2, evaluation batch 40, saved with its config."""
    cfg = parse_args(["--img-size", "8", "--workers", "0", "--val-batch-size", "40"], DIGITS)
    torch.manual_seed(0)
    model = excite_ssa(create_dataset_model(cfg, VARIANTS))
    calibrate_batch_norms(model, torch.rand(40, 3, 8, 8) * 2 - 1)  # neurons that fire: T changes the logits
    path = tmp_path_factory.mktemp("evaluate") / "last.pth"
    torch.save({"model": model.state_dict(), "config": cfg}, path)
    return path


def evaluate(capsys, *argv) -> dict:
    msvit.evaluate.main(DIGITS, VARIANTS, [*map(str, argv), "--json"])
    out = capsys.readouterr().out
    return json.loads(out)  # the JSON object alone on stdout


def test_the_run_settings_apply_where_the_command_line_gives_none(checkpoint, capsys):
    metrics = evaluate(capsys, "--checkpoint", checkpoint)
    # the recipe says 16x16 images and an evaluation batch of 120: the run's 8x8 and 40 win
    assert metrics["time_step"] == 2 and metrics["val_batch_size"] == 40 and metrics["n"] == 360


def test_the_command_line_changes_t_and_the_batch(checkpoint, capsys):
    base = evaluate(capsys, "--checkpoint", checkpoint)
    changed = evaluate(capsys, "--checkpoint", checkpoint, "--time-step", 3, "--val-batch-size", 7)
    assert changed["time_step"] == 3 and changed["val_batch_size"] == 7
    assert changed["loss"] != base["loss"]  # three time steps make another prediction


def test_the_text_report_names_t_and_the_batch(checkpoint, capsys):
    msvit.evaluate.main(DIGITS, VARIANTS, ["--checkpoint", str(checkpoint), "--time-step", "3"])
    assert "msvit_cifar_4_384 on digits (T 3, batch 40):" in capsys.readouterr().out
