"""The 384² fine-tune recipe (imagenet/finetune_384.yml) against the release's log, the evaluation transform's
crop rule, and the zoo's higher-resolution rows."""
from __future__ import annotations

from pathlib import Path

import pytest
from torchvision import transforms as T

from msvit.config import load_config, parse_args
from msvit.data import eval_transform_line, image_transforms
from msvit.data.transforms import describe_eval_transform, eval_crop_pct
from msvit.training.schedule import epoch_learning_rates
from msvit.zoo import ZOO, reference_batch_sizes

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "imagenet" / "finetune_384.yml"
IMAGENET = REPO / "imagenet" / "imagenet.yml"

# train_lr of QKFormer imagenet/imagenet_origin_log_384.txt (7 significant digits): the mean over an epoch's
# batches of the rate set at every update
LOGGED_TRAIN_LR = {
    201: 5.587137e-06, 202: 4.463137e-06, 203: 3.479056e-06, 204: 2.635125e-06, 205: 1.931540e-06,
    206: 1.368469e-06, 207: 9.460428e-07, 208: 6.643607e-07, 209: 5.234891e-07,
}
TOLERANCE = 1e-6  # relative; the logged values' own rounding is up to 1e-7
WORLD_SIZE = 8    # the release's 8 GPUs
IMAGENET_TRAIN = 1_281_167
# Our train loader per process: DistributedSampler pads the 1,281,167 images to ceil(/8) = 160,146 per process,
# the loader drops the last partial batch (msvit/training/loaders.py, drop_last=True): 160,146 // 8 = 20,018 batches of 8.
# Grid t = e + 8k / 20018 = e + 4k / 10009: the release's grid (10009 batches of 16 at accum 4).
RECIPE_BATCHES = 20_018
RELEASE_BATCHES, RELEASE_ACCUM = 10_009, 4


def _recipe(*argv: str) -> dict:
    cfg = parse_args(list(argv), RECIPE)
    # train.py's rate: blr x effective batch / 256, the effective batch over 8 processes
    cfg["lr"] = cfg["blr"] * cfg["batch_size"] * cfg["accum_iter"] * WORLD_SIZE / 256
    return cfg


def _max_relative_error(cfg: dict, batches: int) -> float:
    errors = []
    for epoch, logged in LOGGED_TRAIN_LR.items():
        rates = epoch_learning_rates(cfg, batches, epoch)
        errors.append(abs(sum(rates) / len(rates) - logged) / logged)
    return max(errors)


def test_the_loader_length_is_the_one_assumed():
    per_process = -(-IMAGENET_TRAIN // WORLD_SIZE)
    cfg = load_config(RECIPE)
    assert per_process // cfg["batch_size"] == RECIPE_BATCHES == 2 * RELEASE_BATCHES


def test_the_recipe_is_the_release_run():
    cfg = _recipe()
    assert cfg["model"] == "qkformer_10_768" and cfg["dataset"] == "imagenet" and cfg["img_size"] == 384
    assert cfg["crop_pct"] is None and cfg["finetune_head"] == "reinit" and cfg["layer_decay"] is None
    assert cfg["batch_size"] * cfg["accum_iter"] * WORLD_SIZE == 512
    assert cfg["lr"] == pytest.approx(1.2e-3, rel=1e-12)
    assert (cfg["start_epoch"], cfg["epochs"], cfg["cooldown_epochs"]) == (200, 210, 0)  # trains 200..209
    # everything the fine-tune does not change is imagenet.yml's
    base, tuned = load_config(IMAGENET), load_config(RECIPE)
    changed = {key for key in base if base[key] != tuned.get(key)}
    assert changed == {"model", "img_size", "epochs", "min_lr", "batch_size", "val_batch_size", "accum_iter"}


def test_the_learning_rate_of_every_epoch_is_the_logged_one():
    """Our per-process loader (20,018 batches of 8, accum 8) and the release's grid (10,009, accum 4)."""
    cfg = _recipe()
    error = _max_relative_error(cfg, RECIPE_BATCHES)
    assert error < TOLERANCE, error
    release = {**cfg, "accum_iter": RELEASE_ACCUM}
    assert _max_relative_error(release, RELEASE_BATCHES) == pytest.approx(error, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("argv", [("--min-lr", "1e-6"), ("--epochs", "211"), ("--warmup-epochs", "10"),
                                  ("--accum-iter", "9")],
                         ids=["min_lr-1e-6", "epochs-211", "warmup-10", "batch-576"])
def test_another_schedule_misses_the_log(argv):
    """The comparison can fail: each single change the spec rejects leaves more than the tolerance."""
    assert _max_relative_error(_recipe(*argv), RECIPE_BATCHES) > 10 * TOLERANCE


# ---------------------------------------------------------------- the evaluation transform

def _sizes(cfg: dict) -> tuple[int, tuple[int, int], str]:
    steps = image_transforms(cfg)[1].transforms
    resize = next(s for s in steps if isinstance(s, T.Resize))
    crop = next(s for s in steps if isinstance(s, T.CenterCrop))
    return resize.size, tuple(crop.size), resize.interpolation.value


@pytest.mark.parametrize("img_size,crop_pct,resize", [
    (224, None, 256),       # the release: int(224 / 0.875)
    (64, None, 73),
    (288, None, 288),       # above 224: crop_pct 1.0, the whole short side
    (384, None, 384),
    (384, 0.875, 438),      # an explicit crop_pct wins
    (224, 1.0, 224),
])
def test_the_eval_crop_follows_the_release(img_size, crop_pct, resize):
    cfg = {**load_config(IMAGENET), "img_size": img_size, "crop_pct": crop_pct}
    assert _sizes(cfg) == (resize, (img_size, img_size), "bicubic")
    assert eval_crop_pct(img_size, crop_pct) == (crop_pct or (0.875 if img_size <= 224 else 1.0))


def test_the_recipes_evaluate_as_the_release():
    assert _sizes(parse_args([], RECIPE)) == (384, (384, 384), "bicubic")
    assert _sizes(parse_args([], IMAGENET)) == (256, (224, 224), "bicubic")
    assert _sizes(parse_args(["--img-size", "384"], IMAGENET)) == (384, (384, 384), "bicubic")


@pytest.mark.parametrize("folder", ["cifar10", "cifar100"])
def test_the_cifar_eval_is_unchanged(folder):
    """CIFAR fixes crop_pct 1.0 at 32: resize 32, crop 32 (an identity on 32x32 images), as before."""
    cfg = parse_args([], REPO / folder / f"{folder}.yml")
    assert cfg["crop_pct"] == 1.0
    assert _sizes(cfg) == (32, (32, 32), "bicubic")
    assert _sizes({**cfg, "crop_pct": None})[0] == 36  # null: 0.875 at 32, timm's old default as well


def test_the_log_line_names_the_transform():
    assert describe_eval_transform(parse_args([], RECIPE)) == (
        "eval transform: resize 384 (bicubic), centre crop 384 (crop_pct 1.0, the release's rule above 224)")
    line = describe_eval_transform(parse_args(["--img-size", "384", "--crop-pct", "0.875"], IMAGENET))
    assert line.startswith("eval transform: resize 438 (bicubic), centre crop 384 (crop_pct 0.875, as configured; ")
    assert "--crop-pct null" in line
    assert eval_transform_line({"dataset": "dvs128_gesture", "img_size": 128}) is None


# ---------------------------------------------------------------- the zoo

def test_the_zoo_has_the_higher_resolution_rows():
    rows = {e.kwargs.get("img_size"): e for e in ZOO if e.model == "qkformer_10_768" and e.dataset == "imagenet"}
    assert rows[None].published_top1 == 84.22
    assert (rows[288].published_top1, rows[288].published_top5, rows[288].recipe) == (85.25, None, "")
    assert (rows[384].published_top1, rows[384].published_top5) == (85.65, 97.74)
    assert (REPO / rows[384].recipe).resolve() == RECIPE
    assert "203" in rows[384].note and "inference" in rows[288].note
    # the batch a 384 evaluation is compared with is the fine-tune's, any other size keeps the 224 run's
    assert reference_batch_sizes(parse_args([], RECIPE))[:2] == (8, 8)
    assert reference_batch_sizes(parse_args(["--model", "qkformer_10_768"], IMAGENET))[:2] == (24, 32)
    assert reference_batch_sizes(parse_args(["--model", "qkformer_10_768", "--img-size", "288"], IMAGENET))[:2] \
        == (24, 32)
