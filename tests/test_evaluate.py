"""test.py on one of our checkpoints: the network and the run's data settings come from its saved config,
and what evaluation may change (T, the evaluation batch, data options) comes from the command line."""
import json
from pathlib import Path

import pytest
import torch

import msvit.training.evaluate
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
    msvit.training.evaluate.main(DIGITS, VARIANTS, [*map(str, argv), "--json"])
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
    msvit.training.evaluate.main(DIGITS, VARIANTS, ["--checkpoint", str(checkpoint), "--time-step", "3"])
    assert "msvit_cifar_4_384 on digits (T 3, batch 40):" in capsys.readouterr().out


def test_a_model_given_on_the_command_line_must_be_the_checkpoints(checkpoint, capsys):
    for model, parts in (("msvit_cifar_4_38", ["--model 'msvit_cifar_4_38'", "did you mean 'msvit_cifar_4_384'?"]),
                         ("qkformer_cifar_4_384", ["--model qkformer_cifar_4_384", "trained as msvit_cifar_4_384"])):
        with pytest.raises(SystemExit) as exit_:
            msvit.training.evaluate.main(DIGITS, VARIANTS, ["--checkpoint", str(checkpoint), "--model", model, "--json"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(part in err for part in parts), err
    assert evaluate(capsys, "--checkpoint", checkpoint, "--model", "msvit_cifar_4_384")["n"] == 360  # its own


def test_a_checkpoint_of_another_dataset_is_evaluated_with_a_warning(checkpoint, tmp_path, capsys):
    saved = torch.load(checkpoint, weights_only=False)
    saved["config"] = {**saved["config"], "dataset": "cifar10"}  # as if trained on CIFAR-10: 10 classes too
    torch.save(saved, tmp_path / "cifar10.pth")
    evaluate(capsys, "--checkpoint", checkpoint)
    assert "another dataset" not in capsys.readouterr().err
    msvit.training.evaluate.main(DIGITS, VARIANTS, ["--checkpoint", str(tmp_path / "cifar10.pth"), "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 360
    assert "trained on cifar10 but runs here on digits, another dataset" in err


def test_test_py_help_lists_the_evaluation_settings_only(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(DIGITS.parent / "test.py"), "--help"])
    with pytest.raises(SystemExit) as exit_:
        msvit.training.evaluate.main(DIGITS, VARIANTS)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "usage:" in line] == [
        "usage: test.py --checkpoint PATH [--KEY VALUE ...]"]
    for key in ("--checkpoint", "--model-kwargs", "--data-dir", "--val-batch-size", "--use-ema", "--time-step"):
        assert f"\n  {key} " in out, key
    for key in ("--mixup", "--lr", "--warmup-epochs", "--epochs", "--resume", "--layer "):
        assert f"\n  {key}" not in out, key
