"""Starting a new run from existing weights (`finetune`): what is loaded, what starts anew, what is logged, and a
fine-tuning run end to end (its own run folder, start_epoch, layer decay, EMA metrics, resume without the source)."""
import csv
import logging
from pathlib import Path

import pytest
import torch
import yaml

import msvit.training.train
from msvit.config import parse_args
from msvit.errors import ConfigError
from msvit.training.finetune import HEAD_STD, finetune_variants, load_source, read_source
from msvit.training.run_folder import settings_for_run
from msvit.training.schedule import epoch_learning_rates
from msvit.zoo import create_dataset_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")
TINY = ["--img-size", "8", "--workers", "0"]


def digits_cfg(*args):
    cfg = parse_args([*TINY, *args], DIGITS)
    cfg["num_classes"] = cfg["num_classes"] or 10  # as train.run resolves it
    return cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One of our checkpoints at T 2 with 5 classes, its EMA weights distinct from its raw ones."""
    torch.manual_seed(0)
    cfg = digits_cfg("--time-step", "2", "--num-classes", "5")
    raw, ema = create_dataset_model(cfg, VARIANTS), create_dataset_model(cfg, VARIANTS)
    path = tmp_path_factory.mktemp("source") / "best.pth"
    torch.save({"model": raw.state_dict(), "state_dict_ema": ema.state_dict(), "config": cfg}, path)
    return path, raw.state_dict(), ema.state_dict()


def finetuned(source_path, caplog, *args):
    cfg = digits_cfg("--finetune", str(source_path), *args)
    model = create_dataset_model(cfg, VARIANTS)
    with caplog.at_level(logging.INFO, logger="msvit"):
        load_source(model, read_source(cfg, VARIANTS), cfg)
    return model.state_dict(), caplog.text


def test_a_new_class_count_gets_a_new_head_and_every_difference_is_logged(source, caplog):
    path, raw, _ = source
    state, text = finetuned(path, caplog, "--time-step", "4")
    body = [k for k in raw if not k.startswith("head.")]
    assert body and all(torch.equal(state[k], raw[k]) for k in body)
    assert state["head.weight"].shape == (10, raw["head.weight"].shape[1]) != raw["head.weight"].shape
    assert "time_step 2 -> 4 (no weight depends on T)" in text and "num_classes 5 -> 10" in text
    assert "head.weight, head.bias initialised anew" in text and "raw weights of" in text


def test_reinit_gives_a_new_head_the_release_init_too(source, caplog):
    state, text = finetuned(source[0], caplog, "--finetune-head", "reinit")
    assert "initialised anew" in text and 0 < state["head.weight"].std() < 4 * HEAD_STD  # not the std 0.02 init


def test_the_ema_weights_when_asked(source, caplog):
    path, raw, ema = source
    state, text = finetuned(path, caplog, "--finetune-ema", "true")
    key = "stage1.0.attn.q_conv.weight"
    assert torch.equal(state[key], ema[key]) and not torch.equal(state[key], raw[key])
    assert "EMA weights of" in text


@pytest.mark.parametrize("head", ["keep", "reinit"])
def test_a_matching_head_is_kept_or_reinitialised_as_the_release_does(tmp_path, caplog, head):
    cfg = digits_cfg()
    trained = create_dataset_model(cfg, VARIANTS)
    torch.nn.init.normal_(trained.head.weight, std=1.0)
    # the release's layout: no settings, DDP's prefix
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "release.pth")
    state, text = finetuned(tmp_path / "release.pth", caplog, "--finetune-head", head)
    assert torch.equal(state["head.bias"], trained.state_dict()["head.bias"])
    assert "carries no settings" in text
    if head == "keep":
        assert torch.equal(state["head.weight"], trained.head.weight)
    else:
        assert 0 < state["head.weight"].std() < 4 * HEAD_STD and "head.weight re-initialised" in text


def test_an_imagenet_model_may_be_fine_tuned_in_an_image_folder():
    assert finetune_variants(VARIANTS)[:2] == VARIANTS and "msvit_10_384" in finetune_variants(VARIANTS)
    assert "msvit_dvs_2_256" not in finetune_variants(VARIANTS)  # events, not images


def test_a_fine_tuning_run_end_to_end(source, tmp_path):
    path, raw, _ = source
    copy = tmp_path / "weights.pth"
    copy.write_bytes(path.read_bytes())
    run = tmp_path / "run"
    args = ["--finetune", str(copy), "--epochs", "3", "--start-epoch", "2", "--sched-on-updates", "true",
            "--accum-iter", "2", "--warmup-epochs", "0", "--layer-decay", "0.5", "--model-ema", "true",
            "--output", str(run)]
    msvit.training.train.run(parse_args([*TINY, *args], DIGITS), VARIANTS)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["finetune"] == str(copy.resolve()) and saved["start_epoch"] == 2
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["num_updates"] == 45  # one epoch: 89 batches in updates of 2
    scales = {group["lr_scale"] for group in ckpt["optimizer"]["param_groups"]}
    assert max(scales) == 1.0 and min(scales) < 0.2  # head at 1, the stem several halvings below
    with (run / "summary.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    # the logged rate is the mean of the loop's per-batch rates at epoch 2 of the 3-epoch cosine
    rates = epoch_learning_rates(saved, 89, 2)  # the recipe gives lr itself
    assert float(row["lr"]) == pytest.approx(sum(rates) / len(rates), rel=1e-5)
    assert row["eval_top1_ema"] and ckpt["best_top1"] == pytest.approx(float(row["eval_top1_ema"]), abs=1e-3)

    copy.unlink()  # resuming must not read the source again
    resumed = settings_for_run([*TINY, "--resume", "auto", "--output", str(run)], DIGITS)
    assert resumed["finetune"] == str(copy.resolve())  # recorded, but a resumed run takes last.pth's weights
    assert msvit.training.train.run(resumed, VARIANTS)["best_top1"] == ckpt["best_top1"]  # nothing left to train


def test_a_reduced_checkpoint_of_ours_says_how_it_was_built(tmp_path):
    """Our checkpoint names its model and arguments: the refusal gives the options that build it, and they work."""
    reduced = digits_cfg("--model-kwargs", "{embed_dim: 16, num_heads: 2, depths: [1, 1, 1]}", "--mlp-ratio", "2")
    path = tmp_path / "best.pth"
    torch.save({"model": create_dataset_model(reduced, VARIANTS).state_dict(), "config": reduced}, path)
    with pytest.raises(ConfigError) as refused:
        read_source(digits_cfg("--finetune", str(path)), VARIANTS)
    message = str(refused.value)
    assert "Models whose tensors fit it" not in message
    assert "It was trained as msvit_cifar_4_384 with model_kwargs {" in message, message
    assert ": pass --model msvit_cifar_4_384 --model-kwargs \"{" in message and message.endswith('}"')
    flow = message.split('--model-kwargs "')[1].rstrip('"')  # the options given: they build the checkpoint's model
    source = read_source(digits_cfg("--finetune", str(path), "--model", "msvit_cifar_4_384", "--model-kwargs", flow),
                         VARIANTS)
    assert source.settings["model_kwargs"]["embed_dim"] == 16 and not source.head
