"""End to end, as a user runs them: each dataset folder's train.py then test.py on a tiny dataset written in the real
on-disk format, and the one-line `error: ...` (exit code 2, no traceback) of the CLIs on bad input.

Every run is a subprocess `python <folder>/{train,test}.py ...` from the repository root, on CPU, with a tiny model,
one epoch and no DataLoader workers. A subprocess spends most of its few seconds importing torch and timm on one
core, so the `started` fixture launches those of the selected tests two at a time when the module begins, and each
test waits for its own.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from msvit.config import parse_args, save_config
from fakedata import C10DVS_CLASSES, make_cifar, make_cifar10_dvs_events_np, make_dvs128_events_np, make_imagenet

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per subprocess: generous, a loaded 2-core machine is slow
PARALLEL = 2   # subprocesses at once
SUMMARY_HEADER = ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5", "img_per_s", "peak_mem_mb",
                  "eval_loss_ema", "eval_top1_ema", "eval_top5_ema", "firing_rate"]

# One short epoch: even batch sizes (the recipes' mixup needs them), CPU fp32, no workers; --verify-data false
# because the tiny files cannot match the published MD5 sums.
ONE_EPOCH = ["--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--batch-size", "2",
             "--val-batch-size", "4", "--workers", "0", "--verify-data", "false", "--amp", "false",
             "--time-step", "2"]
TINY_STATIC = ["--model-kwargs", "{embed_dim: 32, num_heads: 2, depths: [1, 1, 1]}"]
TINY_DVS = ["--model-kwargs", "{embed_dim: 32, num_heads: 2}"]
# test.py takes the model from the checkpoint, the data settings from the folder's YAML and the command line
EVAL = ["--workers", "0", "--verify-data", "false", "--json"]

# CIFAR10-DVS: the first ceil(90%) of each class trains, so a class needs 10 samples to give one to the test split;
# two such classes and one sample for each other class: 9 + 9 + 8 train, 2 test.
C10DVS_SMALL = {cls: 10 if cls in ("airplane", "automobile") else 1 for cls in C10DVS_CLASSES}

# No test downloads anything: in the subprocesses, urllib goes through a proxy on a closed local port and fails at once.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def cli(script: str, *args: object) -> subprocess.CompletedProcess:
    """`python <script> args...` from the repository root, as a user runs it (`script` may be `-m module`).

    One intra-op thread unless the environment says otherwise: the models are tiny, and torch's default (a thread
    per core) makes a run 5-50x slower on a small machine that is busy with anything else.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **OFFLINE}
    return subprocess.run([sys.executable, *script.split(), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def error_message(proc: subprocess.CompletedProcess) -> str:
    """The message of a CLI that refused its input: exit code 2, no traceback, and one stderr line 'error: ...'."""
    output = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, f"exit code {proc.returncode}\n{output}"
    assert "Traceback" not in proc.stderr + proc.stdout, output
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][len("error: "):].strip(), output
    return lines[0][len("error: "):]


# ------------------------------------------------------------------------------- the five dataset folders

def _cifar10(root: Path) -> int:
    return len(make_cifar(root, "cifar10", np.random.default_rng(0))["test_batch"][1])  # 10 train, 3 test


def _cifar100(root: Path) -> int:
    return len(make_cifar(root, "cifar100", np.random.default_rng(0))["test"][1])  # 6 train, 4 test


def _imagenet(root: Path) -> int:
    make_imagenet(root, n_train=2, n_val=1)  # 2 classes: 4 train, 2 val
    return 2


def _dvs128(root: Path) -> int:
    written = make_dvs128_events_np(root, np.random.default_rng(0))  # one sample per label 0..10 in each split
    return sum(key.startswith("test/") for key in written)


def _cifar10_dvs(root: Path) -> int:
    make_cifar10_dvs_events_np(root, np.random.default_rng(0), counts=C10DVS_SMALL)
    return sum(n - (9 * n + 9) // 10 for n in C10DVS_SMALL.values())


@dataclass(frozen=True)
class Recipe:
    make_data: Callable[[Path], int]  # writes the dataset under a root, returns the number of validation samples
    args: tuple[str, ...]             # train.py arguments on top of ONE_EPOCH
    folder: str = ""                  # the dataset folder: the key when empty
    config: str = ""                  # the recipe: the folder's own when empty


RECIPES = {
    "cifar10": Recipe(_cifar10, (*TINY_STATIC,)),
    "cifar100": Recipe(_cifar100, (*TINY_STATIC,)),
    "imagenet": Recipe(_imagenet, (*TINY_STATIC, "--img-size", "64")),  # eval: resize 73 (crop_pct), crop 64
    "dvs128-gesture": Recipe(_dvs128, (*TINY_DVS,)),
    "cifar10-dvs": Recipe(_cifar10_dvs, (*TINY_DVS,)),
    # a baseline's recipe beside the folder's own: SDT with TET, its frames resized to 64 x 64 and dvs_mode
    "cifar10-dvs/sdt.yml": Recipe(_cifar10_dvs, ("--config", "sdt.yml", "--model-kwargs", "{embed_dim: 32, "
                                                 "num_heads: 2, depth: 1, pooling_stat: '0011', dvs_mode: true}"),
                                  "cifar10-dvs", "sdt.yml"),
}


def recipe_parts(key: str) -> tuple[str, Path]:
    """The dataset folder and the recipe file of a RECIPES key."""
    recipe = RECIPES[key]
    folder = recipe.folder or key
    return folder, ROOT / folder / (recipe.config or f"{folder}.yml")


@dataclass(frozen=True)
class Run:
    data: Path
    output: Path
    n_val: int
    train: subprocess.CompletedProcess
    test: subprocess.CompletedProcess | None  # test.py on last.pth; None when train.py failed


def train_and_test(folder: str, base: Path) -> Run:
    recipe, (directory, config) = RECIPES[folder], recipe_parts(folder)
    data, output = base / "data", base / "run"
    n_val = recipe.make_data(data)
    train = cli(f"{directory}/train.py", "--data-dir", data, "--output", output, *ONE_EPOCH, *recipe.args)
    test = None
    if train.returncode == 0:
        test = cli(f"{directory}/test.py", "--config", config.name, "--checkpoint", output / "last.pth",
                   "--data-dir", data, *EVAL)
    return Run(data, output, n_val, train, test)


# ----------------------------------------------------------------------------------------------- bad input
# Each case writes what it needs under a folder and returns (script, arguments, parts the message must contain).

Case = tuple[str, list, list[str]]


def _missing_dataset(tmp: Path) -> Case:
    return "cifar10/train.py", ["--data-dir", tmp / "nothing"], ["--download", str(tmp / "nothing")]


def _dvs128_without_archive(tmp: Path) -> Case:
    return "dvs128-gesture/train.py", ["--data-dir", tmp], ["DvsGesture.tar.gz", "ibm.com", str(tmp / "download")]


def _unknown_option(tmp: Path) -> Case:
    return "cifar10/train.py", ["--lrr", "0.1"], ["--lrr", "'--lr'"]


def _unknown_yaml_key(tmp: Path) -> Case:
    (tmp / "typo.yml").write_text("dataset: cifar10\nlrr: 0.1\n")
    return "cifar10/train.py", ["--config", tmp / "typo.yml"], ["'lrr'", str(tmp / "typo.yml"), "'lr'"]


def _malformed_yaml(tmp: Path) -> Case:
    (tmp / "broken.yml").write_text("lr: 0.1\nscale: [0.08, 1.0\nepochs: 3\n")
    return "cifar10/train.py", ["--config", tmp / "broken.yml"], [str(tmp / "broken.yml"), "YAML"]


def _wrong_type(tmp: Path) -> Case:
    return "cifar10/train.py", ["--epochs", "ten"], ["epochs", "integer", "'ten'"]


def _coupling_not_a_boolean(tmp: Path) -> Case:
    return "cifar10/test.py", ["--batch-coupled-ssa", "maybe"], ["batch_coupled_ssa", "boolean", "'maybe'"]


def _no_checkpoint(tmp: Path) -> Case:
    return "cifar10/test.py", [], ["--checkpoint"]


def _not_a_checkpoint(name: str, content: str) -> Callable[[Path], Case]:
    def case(tmp: Path) -> Case:
        (tmp / name).write_text(content)
        return "cifar10/test.py", ["--checkpoint", tmp / name], [str(tmp / name), "not a PyTorch checkpoint", "best.pth"]
    return case


def _resume_auto_without_output(tmp: Path) -> Case:
    return "cifar10/train.py", ["--resume", "auto"], ["--resume auto", "--output RUN_FOLDER"]


def _resume_from_a_missing_checkpoint(tmp: Path) -> Case:
    return "cifar10/train.py", ["--resume", tmp / "gone.pth"], ["cannot resume", str(tmp / "gone.pth"), "--resume"]


def _unwritable_output(tmp: Path) -> Case:
    (tmp / "a-file").write_text("")  # a folder cannot be made inside a file, even by root
    return "cifar10/train.py", ["--output", tmp / "a-file" / "run"], ["cannot write to the run folder", "--output"]


def _resume_with_another_network(tmp: Path) -> Case:
    """A run folder trained at T 4 (its config.yaml and a last.pth), resumed with --time-step 2."""
    run = tmp / "run"
    run.mkdir()
    save_config(parse_args([], ROOT / "cifar10" / "cifar10.yml"), run / "config.yaml")
    (run / "last.pth").write_bytes(b"")  # refused before it is read
    return ("cifar10/train.py", ["--resume", "auto", "--output", run, "--time-step", 2],
            ["--time-step cannot change", "time_step 4", "another --output"])


def _batch_larger_than_the_training_set(tmp: Path) -> Case:
    _cifar10(tmp)  # 10 training images
    return ("cifar10/train.py", ["--data-dir", tmp, "--verify-data", "false", "--batch-size", 64, *TINY_STATIC],
            ["10 samples per process, fewer than batch_size 64", "--batch-size"])


def _directory_as_checkpoint(tmp: Path) -> Case:
    return "cifar10/test.py", ["--checkpoint", tmp], [str(tmp), "is a folder", "best.pth"]


def _truncated_checkpoint(tmp: Path) -> Case:
    import torch

    torch.save({"model": {"w": torch.zeros(1000)}}, tmp / "last.pth")
    data = (tmp / "last.pth").read_bytes()
    (tmp / "last.pth").write_bytes(data[:len(data) // 2])
    return "cifar10/test.py", ["--checkpoint", tmp / "last.pth"], [str(tmp / "last.pth"), "damaged or incomplete"]


def _finetune_from_a_damaged_file(tmp: Path) -> Case:
    _truncated_checkpoint(tmp)
    return "cifar10/train.py", ["--finetune", tmp / "last.pth"], ["--finetune", "damaged or incomplete"]


def _finetune_from_another_family(tmp: Path) -> Case:
    import timm
    import torch

    import msvit  # noqa: F401  (registers the models)

    torch.save({"model": timm.create_model("qkformer_cifar_4_384").state_dict()}, tmp / "qkformer.pth")
    return ("cifar10/train.py", ["--finetune", tmp / "qkformer.pth", "--output", tmp / "run"],
            ["does not fit msvit_cifar_4_384", "missing", "Models whose tensors fit it: qkformer_cifar_4_384"])


def _use_ema_without_ema(tmp: Path) -> Case:
    import torch

    torch.save({"model": {"w": torch.zeros(2)}, "state_dict_ema": None, "config": {}}, tmp / "last.pth")
    return "cifar10/test.py", ["--checkpoint", tmp / "last.pth", "--use-ema"], ["no EMA weights", "--use-ema"]


def _download_without_network(tmp: Path) -> Case:
    return ("cifar10/train.py", ["--data-dir", tmp, "--download", "true"],
            ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp / "cifar-10-batches-py"),
             "without --download"])


def _truncated_training_image(tmp: Path) -> Case:
    make_imagenet(tmp / "data", n_train=2, n_val=1)
    bad = tmp / "data" / "train" / "n01443537" / "n01443537_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:-200])
    args = ["--data-dir", tmp / "data", "--output", tmp / "run", *ONE_EPOCH, *RECIPES["imagenet"].args]
    return "imagenet/train.py", args, [f"cannot read image {bad} (image file is truncated", "--resume auto"]


def _dvs_frames_of_another_time_step(tmp: Path) -> Case:
    make_dvs128_events_np(tmp, np.random.default_rng(0))
    frames = tmp / "frames_number_2_split_by_number"  # read with --time-step 2, but holds 3 frames per sample
    for events in (tmp / "events_np").rglob("*.npz"):
        path = frames / events.relative_to(tmp / "events_np")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, frames=np.zeros((3, 2, 128, 128), np.float32))
    return ("dvs128-gesture/train.py", ["--data-dir", tmp, "--output", tmp / "run", "--time-step", "2"],
            ["holds 3 frames", "time_step is 2", f"delete {frames}"])


def _maps_of_an_unreadable_file(tmp: Path) -> Case:
    (tmp / "notes.png").write_text("not an image")
    return ("-m msvit.maps", ["--config", "digits/digits.yml", "--files", tmp / "notes.png"],
            ["cannot read image file", "notes.png", "give a PNG or JPEG image"])


def _file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _refused(script: str, *args: str, expect: list[str]) -> Callable[[Path], Case]:
    """A case that needs no files."""
    return lambda tmp: (script, list(args), expect)


# settings refused before any data is read
SETTINGS_REFUSED: dict[str, Callable[[Path], Case]] = {
    "model-kwargs-without-space": _refused("cifar10/model.py", "--model-kwargs", "{embed_dim:48}",
                                           expect=["model_kwargs.embed_dim:48", "space after the colon",
                                                   "{embed_dim: 48}"]),
    "model-kwargs-unknown-key": _refused("cifar10/train.py", "--model-kwargs", "{embed_dimm: 32}",
                                         expect=["model_kwargs.embed_dimm", "did you mean 'embed_dim'?"]),
    "model-kwargs-not-a-list": _refused("cifar10/test.py", "--model-kwargs", "{depths: 1}",
                                        expect=["model_kwargs.depths", "a list of integers", "got 1"]),
    "model-kwargs-not-an-integer": _refused("-m msvit.energy", "--config", "cifar10/cifar10.yml", "--model-kwargs",
                                            '{embed_dim: "wide"}', expect=["model_kwargs.embed_dim", "an integer",
                                                                           "'wide'"]),
    "batch-size-0": _refused("cifar10/train.py", "--batch-size", "0", expect=["--batch-size", "batch_size must be 1"]),
    "negative-batch-size": _refused("cifar10/test.py", "--batch-size", "-2", expect=["batch_size must be 1", "-2"]),
    "val-batch-size-0": _refused("cifar10/test.py", "--val-batch-size", "0", expect=["val_batch_size must be 1"]),
    "accum-iter-0": _refused("cifar10/train.py", "--accum-iter", "0", expect=["accum_iter must be 1"]),
    "time-step-0": _refused("cifar10/model.py", "--time-step", "0", expect=["time_step must be 1"]),
    "negative-workers": _refused("cifar10/train.py", "--workers", "-1", expect=["workers must be 0 or more", "-1"]),
    "negative-epochs": _refused("cifar10/train.py", "--epochs", "-1", expect=["epochs must be 1 or more", "-1"]),
    "zero-epochs": _refused("cifar10/train.py", "--epochs", "0", expect=["epochs must be 1 or more", "got 0"]),
    "negative-cooldown": _refused("cifar10/train.py", "--cooldown-epochs", "-1", expect=["cooldown_epochs must be 0"]),
    "negative-warmup": _refused("cifar10/train.py", "--warmup-epochs", "-1", expect=["warmup_epochs must be 0"]),
    "log-interval-0": _refused("cifar10/train.py", "--log-interval", "0", expect=["log_interval must be 1"]),
    "negative-checkpoint-interval": _refused("cifar10/train.py", "--checkpoint-interval", "-5",
                                             expect=["checkpoint_interval must be 0 or more", "-5"]),
    "unknown-optimizer": _refused("cifar10/train.py", "--opt", "adamx", expect=["optimizer 'adamx'", "'adamax'"]),
    "unknown-scheduler": _refused("cifar10/train.py", "--sched", "step", expect=["'sched'", "cosine", "'step'"]),
    "no-learning-rate": _refused("cifar10/train.py", "--lr", "null", "--blr", "null",
                                 expect=["lr and blr are both null", "--lr", "--blr"]),
    "odd-batch-with-mixup": _refused("cifar10/train.py", "--batch-size", "3",
                                     expect=["batch_size 3 is odd", "mixup 0.5", "--mixup 0"]),
    "width-not-divisible-by-heads": _refused("cifar10/train.py", "--model-kwargs", "{embed_dim: 30}",
                                             expect=["model_kwargs.embed_dim 30", "num_heads 8 (the model's default)"]),
    "heads-do-not-divide-width": _refused("cifar10/model.py", "--num-heads", "7",
                                          expect=["num_heads 7", "embed_dim 384 (the model's default)"]),
    "bench-batch-size-0": _refused("-m msvit.bench", "--model", "msvit_cifar_4_384", "--batch-size", "0",
                                   expect=["--batch-size must be 1 or more"]),
    "bench-not-a-number": _refused("-m msvit.bench", "--model", "msvit_cifar_4_384", "--time-step", "x",
                                   expect=["argument --time-step", "'x'"]),
    "bench-model-kwargs-without-space": _refused("-m msvit.bench", "--model", "msvit_cifar_4_384", "--model-kwargs",
                                                 "{embed_dim:48}", expect=["space after the colon"]),
    "energy-not-a-number": _refused("-m msvit.energy", "--batches", "x", expect=["argument --batches", "'x'"]),
    "layer-decay-0": _refused("cifar10/train.py", "--layer-decay", "0", expect=["layer_decay must be in (0, 1]",
                                                                             "got 0"]),
    "layer-decay-above-1": _refused("imagenet/train.py", "--layer-decay", "1.2", expect=["layer_decay", "got 1.2"]),
    "start-epoch-past-the-schedule": _refused("cifar10/train.py", "--start-epoch", "500",
                                              expect=["start_epoch 500", "--start-epoch"]),
    "compile-mode-unknown": _refused("cifar10/train.py", "--compile-mode", "fast",
                                     expect=["compile_mode", "reduce-overhead", "'fast'"]),
    "bench-compile-mode-without-compile": _refused("-m msvit.bench", "--model", "msvit_cifar_4_384",
                                                   "--compile-mode", "reduce-overhead", expect=["needs --compile"]),
    "maps-images-0": _refused("-m msvit.maps", "--config", "digits/digits.yml", "--images", "0",
                              expect=["--images must be 1 or more", "got 0"]),
    "maps-block-out-of-range": _refused("-m msvit.maps", "--config", "digits/digits.yml", "--block", "1",
                                        expect=["--block 1 is out of range", "1, 1, 1 blocks", "from -1 to 0"]),
    "energy-compare-and-checkpoint": _refused("-m msvit.energy", "--config", "digits/digits.yml", "--checkpoint",
                                              "a.pth", "--compare", "b.pth", "c.pth",
                                              expect=["--checkpoint and --compare both name weights"]),
    "energy-labels-miscounted": _refused("-m msvit.energy", "--config", "digits/digits.yml", "--compare",
                                         "msvit_cifar_4_384", "qkformer_cifar_4_384", "--labels", "A",
                                         expect=["--labels gives 1 name for 2 --compare items", "one per item"]),
    "energy-plot-into-a-file": lambda tmp: ("-m msvit.energy", ["--config", "digits/digits.yml", "--plot",
                                                                _file(tmp / "figures.png")],
                                            ["--plot", "figures.png is a file: give a folder"]),
    "tet-lambda-above-1": _refused("cifar10/train.py", "--tet", "true", "--tet-lambda", "2",
                                   expect=["tet_lambda must be in [0, 1], got 2", "1 - tet_lambda"]),
    "watch-firing-not-a-boolean": _refused("cifar10/train.py", "--watch-firing", "maybe",
                                           expect=["watch_firing", "expects a boolean", "'maybe'"]),
    "maps-files-of-dvs-data": _refused("-m msvit.maps", "--config", "dvs128-gesture/dvs128-gesture.yml", "--files",
                                       "a.png", expect=["--files takes image files", "event data", "--images N"]),
    "baseline-with-coupled-ssa": _refused("cifar10/train.py", "--config", "spikformer.yml", "--batch-coupled-ssa",
                                          "true", expect=["batch_coupled_ssa True", "none of the baseline releases",
                                                          "set batch_coupled_ssa false"]),
    "baseline-recipe-model-mismatch": _refused("cifar10-dvs/train.py", "--config", "sdt.yml", "--model",
                                               "spikformer_dvs_2_256",
                                               expect=["model_kwargs.dvs_mode", "not an argument of spikformer_dvs_2_256"]),
    "maps-of-a-baseline": _refused("-m msvit.maps", "--config", "cifar10/sdt.yml", "--images", "1",
                                   expect=["msvit.maps draws the hierarchical models", "sdt_cifar_2_512"]),
    "aa-ops-unknown": _refused("cifar10/train.py", "--aa-ops", "Equalize,Twirl",
                               expect=["aa_ops", "unknown operations Twirl", "RandAugment knows"]),
    "teacher-unknown": _refused("imagenet/train.py", "--distillation-type", "hard", "--teacher-model",
                                "caformer_b36_in21ft1k", expect=["teacher_model 'caformer_b36_in21ft1k' is not a timm "
                                                                 "model", "'caformer_b36.sail_in22k_ft_in1k'"]),
    "teacher-typo": _refused("cifar10/train.py", "--distillation-type", "soft", "--teacher-model", "resnet1t",
                             expect=["teacher_model 'resnet1t'", "did you mean"]),
    "ann-with-a-time-step": _refused("digits/train.py", "--model", "deit_tiny_patch16_224", "--time-step", "2",
                                     expect=["--time-step", "deit_tiny_patch16_224 is an ANN", "no T, no spikes",
                                             "drop --time-step"]),
    "sml-with-tet": _refused("cifar10/train.py", "--config", "stmixer.yml", "--tet", "true",
                             expect=["tet with model_kwargs.sml", "one logit per sample", "drop --tet"]),
    "ann-with-tet": _refused("digits/train.py", "--model", "deit_tiny_patch16_224", "--tet", "true",
                             expect=["--tet", "is an ANN", "drop --tet"]),
    "ann-unknown-argument": _refused("digits/model.py", "--model", "deit_tiny_patch16_224", "--model-kwargs",
                                     "{embed_dimm: 48}", expect=["model_kwargs.embed_dimm", "VisionTransformer",
                                                                 "did you mean 'embed_dim'?"]),
    "ann-width-not-divisible-by-heads": _refused("digits/train.py", "--model", "deit_tiny_patch16_224",
                                                 "--model-kwargs", "{embed_dim: 30, num_heads: 4}",
                                                 expect=["cannot build deit_tiny_patch16_224", "embed_dim 30",
                                                         "divisible by num_heads"]),
    "ann-img-size-not-the-datas": _refused("digits/train.py", "--model", "deit_tiny_patch16_224", "--model-kwargs",
                                           "{img_size: 32}", expect=["model_kwargs.img_size 32", "img_size 16",
                                                                     "--img-size 32"]),
    "ann-on-event-data": _refused("cifar10-dvs/train.py", "--model", "deit_tiny_patch16_224",
                                  expect=["is an ANN", "event frames", "image dataset"]),
    "ann-name-typo": _refused("digits/train.py", "--model", "deit_tiny_patch16_22",
                              expect=["'deit_tiny_patch16_22' is not a registered model nor a timm model",
                                      "'deit_tiny_patch16_224'"]),
    "energy-of-an-ann": _refused("-m msvit.energy", "--config", "digits/digits.yml", "--model",
                                 "deit_tiny_patch16_224", "--model-kwargs", "{}", expect=["is an ANN", "MACs x 4.6 pJ"]),
    "distillation-without-teacher": _refused("cifar10/train.py", "--distillation-type", "hard",
                                             expect=["distillation_type hard needs a teacher", "--teacher-model"]),
    "distillation-alpha-above-1": _refused("cifar10/train.py", "--distillation-alpha", "1.5",
                                           expect=["distillation_alpha must be in [0, 1], got 1.5"]),
    "teacher-pretrained-head-of-another-class-count": _refused(
        "cifar10/train.py", "--distillation-type", "hard", "--teacher-model", "test_resnet", "--teacher-pretrained",
        "true", "--data-dir", "nothing", expect=["pretrained head has 1000 classes, the run 10", "--teacher-checkpoint"]),
}
if importlib.util.find_spec("cupy") is None:  # where CuPy is installed the backend may well work
    SETTINGS_REFUSED["cupy-not-installed"] = _refused("cifar10/train.py", "--neuron-backend", "cupy",
                                                      expect=["neuron backend 'cupy' cannot run", "auto or torch"])
if shutil.which("nvidia-smi") is None:  # most likely no CUDA device either
    SETTINGS_REFUSED["bench-cuda-without-cuda"] = _refused("-m msvit.bench", "--model", "msvit_cifar_4_384",
                                                           "--device", "cuda", expect=["--device cuda", "--device cpu"])


# Issue 23's cases, one table per area; each area's case functions sit just above its table.

# ---- the training run's life: resume and extension, Ctrl-C, failed starts, threads
def _resume_with_a_start_epoch(tmp: Path) -> Case:
    """--start-epoch places a new run on its schedule: a resumed run (config.yaml, a last.pth) refuses it."""
    script, args, _ = _resume_with_another_network(tmp)
    return script, [*args[:-2], "--start-epoch", 3], ["--start-epoch places a new run", "drop --start-epoch", "--epochs"]


def _resume_with_another_optimizer(tmp: Path) -> Case:
    """The run's last.pth holds AdamW's moments: another --opt cannot use them."""
    script, args, _ = _resume_with_a_start_epoch(tmp)
    return script, [*args[:-2], "--opt", "sgd"], ["--opt cannot change", "'adamw'", "--finetune"]


def _unknown_model_before_the_data(tmp: Path) -> Case:
    """A typo'd --model is refused before the (here missing) dataset is looked for."""
    return ("cifar10/train.py", ["--model", "msvit_cifar_4_38", "--data-dir", tmp / "nothing", "--output", tmp / "run"],
            ["msvit_cifar_4_38", "msvit_cifar_4_384"])


LIFECYCLE_REFUSED: dict[str, Callable[[Path], Case]] = {
    "resume-with-a-start-epoch": _resume_with_a_start_epoch,
    "resume-with-another-optimizer": _resume_with_another_optimizer,
    "train-unknown-model-before-the-data": _unknown_model_before_the_data,
}

# ---- evaluation and model choice: test.py, msvit.energy, msvit.maps, --finetune, help
def _run_checkpoint(tmp: Path, *argv: str, weights: bool = False) -> Path:
    """A cifar10 run's last.pth with its saved config (train.py's `config`), weights only where the case reads them."""
    import torch

    from msvit.zoo import create_dataset_model

    cfg = parse_args(list(argv), ROOT / "cifar10" / "cifar10.yml")
    cfg["num_classes"] = 10
    state = create_dataset_model(cfg, [cfg["model"]]).state_dict() if weights else {}
    torch.save({"model": state, "config": cfg, "epoch": 0}, tmp / "last.pth")
    return tmp / "last.pth"


def _test_with_a_model_name_typo(tmp: Path) -> Case:
    return ("cifar10/test.py", ["--checkpoint", _run_checkpoint(tmp), "--model", "msvit_cifar_4_38"],
            ["--model 'msvit_cifar_4_38' is not a registered model", "did you mean 'msvit_cifar_4_384'?"])


def _test_with_another_model(tmp: Path) -> Case:
    return ("cifar10/test.py", ["--checkpoint", _run_checkpoint(tmp), "--model", "qkformer_cifar_4_384"],
            ["--model qkformer_cifar_4_384 is not the checkpoint's model", "trained as msvit_cifar_4_384",
             "drop --model"])


def _finetune_from_a_reduced_checkpoint(tmp: Path) -> Case:
    path = _run_checkpoint(tmp, *TINY_STATIC, weights=True)
    return ("cifar10/train.py", ["--finetune", path, "--output", tmp / "run"],
            ["does not fit msvit_cifar_4_384", "It was trained as msvit_cifar_4_384 with model_kwargs {",
             '--model msvit_cifar_4_384 --model-kwargs "{depths: [1, 1, 1], embed_dim: 32, num_heads: 2}"'])


EVALUATION_REFUSED: dict[str, Callable[[Path], Case]] = {
    "test-model-name-typo": _test_with_a_model_name_typo,
    "test-model-not-the-checkpoints": _test_with_another_model,
    "finetune-reduced-checkpoint-of-ours": _finetune_from_a_reduced_checkpoint,
    "model-name-typo": _refused("cifar10/model.py", "--model", "qkformer_cifar_4_38",
                                expect=["'qkformer_cifar_4_38' is not a registered model",
                                        "did you mean 'qkformer_cifar_4_384'?"]),
    "energy-compare-model-name-typo": _refused("-m msvit.energy", "--config", "digits/digits.yml", "--compare",
                                               "msvit_cifar_4_38", expect=["--compare 'msvit_cifar_4_38'",
                                                                           "did you mean 'msvit_cifar_4_384'?"]),
}

# ---- data: your own ImageFolder, empty or too small splits
def _image_folder_with_another_num_classes(tmp: Path) -> Case:
    _imagenet(tmp / "data")  # 2 class folders
    return ("imagenet/train.py", ["--data-dir", tmp / "data", "--output", tmp / "run", "--num-classes", 5],
            ["num_classes is 5", f"{tmp / 'data' / 'train'} holds 2 class folders", "--num-classes 2", "null"])


_EMPTY_VAL_SPLIT = ["validation split of cifar10_dvs", "is empty (0 samples)", "add recordings"]


def _cifar10_dvs_without_validation_samples(tmp: Path) -> Case:
    # one recording per class: all ten train (the first ceil(90%) of each class), none validates
    make_cifar10_dvs_events_np(tmp, np.random.default_rng(0), counts={cls: 1 for cls in C10DVS_CLASSES})
    return "cifar10-dvs/train.py", ["--data-dir", tmp, "--output", tmp / "run", *ONE_EPOCH, *TINY_DVS], _EMPTY_VAL_SPLIT


def _evaluation_without_validation_samples(tmp: Path) -> Case:
    import torch

    from msvit.models import MODEL_NAMES
    from msvit.zoo import create_dataset_model

    make_cifar10_dvs_events_np(tmp, np.random.default_rng(0), counts={cls: 1 for cls in C10DVS_CLASSES})
    settings = ["--time-step", "2", *TINY_DVS]
    model = create_dataset_model(parse_args(settings, ROOT / "cifar10-dvs" / "cifar10-dvs.yml"), MODEL_NAMES)
    torch.save({"model": model.state_dict()}, tmp / "weights.pth")
    return ("cifar10-dvs/test.py", ["--checkpoint", tmp / "weights.pth", "--data-dir", tmp, "--verify-data", "false",
                                    *settings], _EMPTY_VAL_SPLIT)


DATA_REFUSED: dict[str, Callable[[Path], Case]] = {
    "image-folder-with-another-num-classes": _image_folder_with_another_num_classes,
    "train-without-validation-samples": _cifar10_dvs_without_validation_samples,
    "test-without-validation-samples": _evaluation_without_validation_samples,
}

# ---- the package as installed: optional dependencies
PACKAGE_REFUSED: dict[str, Callable[[Path], Case]] = {
    # tests/run_without.py runs the command as if the optional package were not installed
    "energy-plot-without-matplotlib": lambda tmp: (
        "tests/run_without.py matplotlib -m msvit.energy",
        ["--config", "digits/digits.yml", "--batches", 1, "--plot", tmp / "figures"],
        ["--plot needs matplotlib", 'pip install "msvit[figures]"']),
    "maps-without-matplotlib": lambda tmp: (
        "tests/run_without.py matplotlib -m msvit.maps",
        ["--config", "digits/digits.yml", "--images", 1, "--out", tmp / "maps"],
        ["needs matplotlib", 'pip install "msvit[figures]"']),
    "digits-without-scikit-learn": lambda tmp: (
        "tests/run_without.py sklearn digits/train.py", ["--output", tmp / "run"],
        ["the digits dataset needs scikit-learn", 'pip install "msvit[demo]"']),
}


def refuse(script: str, args: list, expected: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    # no DataLoader workers unless the case sets them; msvit.bench reads no data and has no such option
    workers = [] if script == "-m msvit.bench" else ["--workers", 0]
    return cli(script, *workers, *args), expected


BAD_INPUT: dict[str, Callable[[Path], Case]] = {
    "missing-dataset-folder": _missing_dataset,
    "dvs128-without-archive": _dvs128_without_archive,
    "unknown-option": _unknown_option,
    "unknown-yaml-key": _unknown_yaml_key,
    "malformed-yaml": _malformed_yaml,
    "wrong-type": _wrong_type,
    "coupling-not-a-boolean": _coupling_not_a_boolean,
    "test-without-checkpoint": _no_checkpoint,
    "yaml-as-checkpoint": _not_a_checkpoint("config.yaml", "# resolved settings\ndataset: cifar10\nlr: 0.001\n"),
    "csv-as-checkpoint": _not_a_checkpoint("summary.csv", "epoch,lr,train_loss\n0,0.001,2.3\n"),
    "download-without-network": _download_without_network,
    "truncated-training-image": _truncated_training_image,
    "dvs-frames-of-another-time-step": _dvs_frames_of_another_time_step,
    "resume-auto-without-output": _resume_auto_without_output,
    "resume-from-a-missing-checkpoint": _resume_from_a_missing_checkpoint,
    "unwritable-output-folder": _unwritable_output,
    "resume-with-another-network": _resume_with_another_network,
    "batch-larger-than-the-training-set": _batch_larger_than_the_training_set,
    "directory-as-checkpoint": _directory_as_checkpoint,
    "truncated-checkpoint": _truncated_checkpoint,
    "finetune-from-a-missing-file": lambda tmp: ("cifar10/train.py", ["--finetune", tmp / "gone.pth"],
                                                 ["--finetune", "not found", str(tmp / "gone.pth")]),
    "finetune-from-a-folder": lambda tmp: ("cifar10/train.py", ["--finetune", tmp], ["--finetune", "is a folder"]),
    "finetune-from-a-damaged-file": _finetune_from_a_damaged_file,
    "finetune-from-another-family": _finetune_from_another_family,
    "finetune-with-resume": lambda tmp: ("cifar10/train.py", ["--finetune", tmp / "a.pth", "--resume", tmp / "b.pth"],
                                         ["--finetune starts a new run", "--resume continues", "give one"]),
    "use-ema-without-ema": _use_ema_without_ema,
    "maps-missing-checkpoint": lambda tmp: ("-m msvit.maps", ["--config", "digits/digits.yml",
                                                              "--checkpoint", tmp / "gone.pth"],
                                            ["checkpoint file not found", str(tmp / "gone.pth")]),
    "maps-unreadable-file": _maps_of_an_unreadable_file,
    **SETTINGS_REFUSED,
    **LIFECYCLE_REFUSED,
    **EVALUATION_REFUSED,
    **DATA_REFUSED,
    **PACKAGE_REFUSED,
}
# ------------------------------------------------------------------------------- background subprocesses

class Started:
    """The subprocesses of the tests, PARALLEL at a time: those of the selected tests are submitted at once (in file
    order), any other on first request; `run` and `refusal` wait for one."""

    def __init__(self, pool: ThreadPoolExecutor, tmp_path_factory) -> None:
        self._pool, self._tmp = pool, tmp_path_factory
        self._runs: dict[str, Future[Run]] = {}
        self._refusals: dict[str, Future[tuple[subprocess.CompletedProcess, list[str]]]] = {}

    def submit_run(self, folder: str) -> None:
        if folder not in self._runs:
            self._runs[folder] = self._pool.submit(train_and_test, folder, self._tmp.mktemp(folder.replace("/", "-")))

    def submit_refusal(self, name: str) -> None:
        if name not in self._refusals:
            script, args, expected = BAD_INPUT[name](self._tmp.mktemp(name))
            self._refusals[name] = self._pool.submit(refuse, script, args, expected)

    def run(self, folder: str) -> Run:
        self.submit_run(folder)
        return self._runs[folder].result()

    def refusal(self, name: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        self.submit_refusal(name)
        return self._refusals[name].result()


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """Submits at once the subprocesses of this module's selected tests (after -k, node ids, ...), in their order."""
    pool = ThreadPoolExecutor(PARALLEL)
    jobs = Started(pool, tmp_path_factory)
    try:
        for item in request.session.items:
            if item.path != request.path:
                continue
            params = item.callspec.params if hasattr(item, "callspec") else {}
            if "folder" in params:
                jobs.submit_run(params["folder"])
            if "case" in params:
                jobs.submit_refusal(params["case"])
            if getattr(item, "originalname", "") == "test_evaluation_refuses_a_checkpoint_of_another_dataset":
                jobs.submit_run("cifar100")
            if getattr(item, "originalname", "") == "test_a_corrupt_image_stops_a_resumed_run_keeping_last_pth":
                jobs.submit_run("imagenet")
        yield jobs
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("folder", list(RECIPES))
def test_train_one_epoch_then_evaluate(started, folder):
    run = started.run(folder)
    ok(run.train)
    for name in ("config.yaml", "summary.csv", "last.pth", "best.pth"):
        assert (run.output / name).is_file(), f"{name} missing from {sorted(p.name for p in run.output.iterdir())}"
    assert list(run.output.glob("events.out.tfevents.*")), "no TensorBoard events"
    with (run.output / "summary.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == SUMMARY_HEADER
    assert len(rows) == 2 and rows[1][0] == "0", rows
    summary = dict(zip(rows[0], rows[1]))
    assert 0.0 <= float(summary["firing_rate"]) <= 1.0  # the firing watch measured the evaluation

    metrics = json.loads(ok(run.test).stdout)  # stdout holds the JSON object alone
    assert set(metrics) == {"top1", "top5", "loss", "n", "weights", "time_step", "batch_coupled_ssa", "val_batch_size"}
    assert metrics["weights"] == "raw"
    assert metrics["time_step"] == 2
    assert metrics["n"] == run.n_val
    recipe = yaml.safe_load(recipe_parts(folder)[1].read_text())
    # the run's evaluation batch (ONE_EPOCH: 4), taken from the checkpoint as test.py was given none
    assert metrics["batch_coupled_ssa"] is recipe["batch_coupled_ssa"]
    assert metrics["val_batch_size"] == 4 != recipe["val_batch_size"]
    if recipe.get("tet"):  # the baseline's recipe reached the run: its loss, its model, its frame size
        assert "TET loss (means 1, lambda 0.001)" in run.train.stdout + run.train.stderr
        saved = yaml.safe_load((run.output / "config.yaml").read_text())
        assert (saved["model"], saved["img_size"], saved["model_kwargs"]["dvs_mode"]) == ("sdt_dvs_2_256", 64, True)
    if folder == "imagenet":  # num_classes null: the 2 class folders, in train.py's head and test.py's (no flag)
        import torch

        saved = yaml.safe_load((run.output / "config.yaml").read_text())
        head = torch.load(run.output / "last.pth", map_location="cpu", weights_only=False)["model"]["head.weight"]
        assert recipe["num_classes"] is None and saved["num_classes"] == 2 and head.shape[0] == 2
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    # last.pth holds the model that the epoch's evaluation measured, on the same validation set
    assert metrics["top1"] == pytest.approx(float(summary["eval_top1"]), abs=1e-3)
    assert metrics["top5"] == pytest.approx(float(summary["eval_top5"]), abs=1e-3)
    assert metrics["loss"] == pytest.approx(float(summary["eval_loss"]), abs=1e-3)


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_error_line(started, case):
    proc, expected = started.refusal(case)
    message = error_message(proc)
    for part in expected:
        assert part in message


def test_evaluation_refuses_a_checkpoint_of_another_dataset(started, tmp_path):
    cifar100 = started.run("cifar100")
    ok(cifar100.train)
    _cifar10(tmp_path)
    proc = cli("cifar10/test.py", "--checkpoint", cifar100.output / "last.pth", "--data-dir", tmp_path, *EVAL)
    message = error_message(proc)
    assert "head.weight" in message and "head.bias" in message


def test_a_corrupt_image_stops_a_resumed_run_keeping_last_pth(started, tmp_path):
    imagenet = started.run("imagenet")
    ok(imagenet.train)
    data, output = tmp_path / "data", tmp_path / "run"
    shutil.copytree(imagenet.data, data)
    shutil.copytree(imagenet.output, output)
    last = (output / "last.pth").read_bytes()
    bad = data / "train" / "n01440764" / "n01440764_1.JPEG"
    bad.write_bytes(b"\x00 not a JPEG" * 16)
    proc = cli("imagenet/train.py", "--data-dir", data, "--output", output, "--resume", "auto", *ONE_EPOCH,
               *RECIPES["imagenet"].args, "--epochs", "2")
    message = error_message(proc)
    assert message.startswith(f"cannot read image {bad} (cannot identify image file)") and "--resume auto" in message
    assert (output / "last.pth").read_bytes() == last
