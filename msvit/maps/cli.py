"""`python -m msvit.maps`: the images (the evaluation set's first, or files) through a model, one sheet each."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import (EVALUATION_KEYS, ArgumentParser, architecture_kwargs, command_line_keys, parse_args,
                      print_program_help, restore_run_settings, warn_other_dataset)
from ..console import log, print_json, setup_logging, stdout_to_stderr
from ..data import build_datasets
from ..data.digits import digits_input, digits_settings
from ..data.registry import EVENT_DATASETS, dataset_name
from ..data.transforms import eval_transform, mean_std
from ..energy.text import model_label  # a reduced model named with its arguments, as the energy figures do
from ..errors import ConfigError, DataError, UserError, cli_entry
from ..models import BASELINE_NAMES, MODEL_NAMES
from ..models._checkpoint import load_checkpoint, read_checkpoint
from ..plotting import require_matplotlib
from ..training.distributed import set_threads
from ..training.loaders import seed_everything
from ..zoo import create_dataset_model
from .collect import check_block, collect_maps
from .sheet import draw_sheet, input_display

__all__ = ["read_image", "file_transform", "run", "main"]


# ---------------------------------------------------------------------- inputs

def _normalisation(cfg: dict[str, Any], dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the dataset's evaluation transform normalises with (None: DVS counts, not normalised)."""
    if dataset in EVENT_DATASETS:
        return None
    if dataset == "digits":
        settings = digits_settings(cfg)
        return settings["mean"], settings["std"]
    return mean_std(cfg)


def read_image(path: str) -> Any:
    """The image file at `path`, read by PIL, or a DataError naming the file and the fix."""
    if not Path(path).is_file():
        problem = "is a folder: give the image files in it" if Path(path).is_dir() else "not found: check the path"
        raise DataError(f"image file {path} {problem} (--files takes image files: PNG, JPEG, ...)")
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except (OSError, SyntaxError) as exc:
        reason = "not an image PIL can identify" if isinstance(exc, UnidentifiedImageError) else str(exc).split("\n")[0]
        raise DataError(f"cannot read image file {path} ({reason}): give a PNG or JPEG image") from None


def file_transform(cfg: dict[str, Any], dataset: str) -> Callable[[Any], torch.Tensor]:
    """The dataset's evaluation transform for a PIL image: timm's (resize, centre crop, normalise) for CIFAR and
    ImageNet; for digits the digits pipeline's (`digits_input`: grey levels in [0, 1], resized; light on dark)."""
    if dataset != "digits":
        transform = eval_transform(cfg)
        return lambda image: transform(image.convert("RGB"))
    settings = digits_settings(cfg)
    mean, std = (torch.tensor(settings[key]).view(-1, 1, 1) for key in ("mean", "std"))

    def digits(image: Any) -> torch.Tensor:
        grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
        return digits_input(grey, settings["img_size"], mean, std)
    return digits


# ---------------------------------------------------------------------- command line

USAGE = """usage: python -m msvit.maps --config FILE [--checkpoint PATH] [--images N | --files IMAGE ...]
                        [--out DIR] [--block INDEX] [--queries K] [--json] [--KEY VALUE ...]

  --checkpoint PATH  weights to map (random weights when absent)
  --images N         map the first N evaluation images (default 4)
  --files IMAGE ...  map these image files instead, put through the evaluation transform (not for DVS data)
  --out DIR          folder for the sheets (default maps), one PNG per image
  --block INDEX      the block of each stage whose attention is shown (default -1: the last)
  --queries K        SSA stages: the K query tokens with the most Q spikes per head (default 3)
  --json             print one JSON object (sheets, labels, predictions, spike totals) on stdout
"""
# the settings of test.py that this program does not read, or lists above
_NOT_READ = ("energy", "compare_ssa_coupling", "compile", "compile_mode", "amp", "amp_dtype", "batch_size",
             "checkpoint", "json")


def _split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This program's own options, and the rest: the settings `config.parse_args` reads."""
    parser = ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--files", nargs="+", default=None)
    parser.add_argument("--out", default="maps")
    parser.add_argument("--block", type=int, default=-1)
    parser.add_argument("--queries", type=int, default=3)
    return parser.parse_known_args(list(argv))


def _sheet_name(index: int, label: int | None, file: str | None) -> str:
    if file is not None:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(file).stem)[:40]
        return f"file_{index:03d}_{stem}.png"
    return f"image_{index:03d}_label_{label}.png"


def _class(index: int, classes: Sequence[str] | None) -> str:
    """A class index with its name where the dataset has one ('3 (cat)'), else the index."""
    name = str(classes[index]) if classes and 0 <= index < len(classes) else None
    return f"{index} ({name})" if name is not None and name != str(index) else str(index)


def _samples(cfg: dict[str, Any], dataset: str, opts: argparse.Namespace) -> tuple[list[torch.Tensor], list, list]:
    """(inputs, labels or None, class names or None) of the images to map."""
    if opts.files:
        transform = file_transform(cfg, dataset)
        return [transform(read_image(path)) for path in opts.files], [None] * len(opts.files), None
    _, val_set = build_datasets(cfg, train=False)
    if opts.images > len(val_set):
        raise ConfigError(f"--images {opts.images} is more than the {len(val_set)} evaluation images of {dataset}: "
                          f"give at most {len(val_set)}")
    samples = [val_set[i] for i in range(opts.images)]
    return [x for x, _ in samples], [int(y) for _, y in samples], getattr(val_set, "classes", None)


def run(cfg: dict[str, Any], opts: argparse.Namespace, given: Sequence[str] = ()) -> dict[str, Any]:
    """Build the configured model (architecture and data settings from the checkpoint's saved config when it has
    one), collect the maps of the chosen images in batches of val_batch_size and write one sheet per image."""

    if not cfg.get("dataset") or not cfg.get("model"):
        raise ConfigError("no dataset or model configured: pass --config <dataset>/<dataset>.yml")
    require_matplotlib("msvit.maps")  # before the model runs: the sheets need it
    dataset = dataset_name(cfg["dataset"])
    if opts.files and opts.images is not None:
        raise ConfigError("give either --images N or --files IMAGE ..., not both")
    if opts.files and dataset in EVENT_DATASETS:
        raise ConfigError(f"--files takes image files, but {dataset} is event data (DVS frames): "
                          f"use --images N to map its evaluation samples")
    opts.images = 4 if opts.images is None else opts.images
    if opts.images < 1:
        raise ConfigError(f"--images must be 1 or more, got {opts.images}")
    if opts.queries < 1:
        raise ConfigError(f"--queries must be 1 or more, got {opts.queries}")
    set_threads(cfg["threads"])
    setup_logging(True)
    checkpoint = read_checkpoint(cfg["checkpoint"]) if cfg["checkpoint"] else None
    restore_run_settings(cfg, checkpoint, list(given))
    if cfg["model"] in BASELINE_NAMES:  # one stage, and a real-valued stream in two of the three families
        raise ConfigError(f"msvit.maps draws the hierarchical models (MSViT, QKFormer), not {cfg['model']}: the "
                          f"baselines' sheets are not built yet; python -m msvit.energy gives their firing rates")
    seed_everything(cfg["seed"])  # without a checkpoint the weights are random: the same ones every run
    model = create_dataset_model(cfg, MODEL_NAMES)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, use_ema=cfg["use_ema"])
        warn_other_dataset(cfg, checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    check_block(model, opts.block)
    inputs, labels, classes = _samples(cfg, dataset, opts)
    out, sheets = Path(opts.out), []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"cannot create the --out folder {out} ({reason}): give a writable folder") from None
    if checkpoint is None:  # said once the input is known to be good, so that a refusal stays one line
        print("no --checkpoint: random weights, so the maps show an untrained network", file=sys.stderr)
    if model.config["batch_coupled_ssa"] and len(inputs) > 1:
        log.info("batch-coupled SSA: the last stage's output and the predictions depend on which images share a "
                 "batch (here batches of up to %d of the mapped images)", cfg["val_batch_size"])
    norm = _normalisation(cfg, dataset)
    step = max(int(cfg["val_batch_size"]), 1)
    weights = "random weights" if checkpoint is None else Path(cfg["checkpoint"]).name
    name = model_label(dict(model=cfg["model"], model_kwargs=architecture_kwargs(cfg)))  # a reduced model's arguments
    for start in range(0, len(inputs), step):
        batch = torch.stack(inputs[start:start + step]).to(device)
        for offset, maps in enumerate(collect_maps(model, batch, opts.block, opts.queries)):
            i = start + offset
            label, file = labels[i], opts.files[i] if opts.files else None
            subject = file or f"{dataset} evaluation image {i}: label {_class(label, classes)}"
            title = f"{subject}, predicted {_class(maps['prediction'], classes)}  -  {name}, {weights}"
            image = input_display(maps["input"], *(norm or (None, None)))
            path = draw_sheet(maps, out / _sheet_name(i, label, file), image=image, title=title)
            totals = {stage["name"]: float(stage["spikes"].sum()) for stage in maps["stages"]}
            sheets.append({"path": str(path), "index": i, **({"file": file} if file else {}), "label": label,
                           "prediction": maps["prediction"], "stage_spikes": totals, "title": title})
            log.info("wrote %s (%s, predicted %d)", path, file or f"label {label}", maps["prediction"])
    return {"model": cfg["model"], "dataset": dataset, "checkpoint": cfg["checkpoint"] or None,
            "block": opts.block, "queries": opts.queries, "batch_coupled_ssa": model.config["batch_coupled_ssa"],
            "out": str(out), "sheets": sheets}


@cli_entry
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m msvit.maps ...`: one sheet per image; a UserError is one `error: ...` line and exit code 2."""

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_program_help(USAGE, [k for k in EVALUATION_KEYS if k not in _NOT_READ])
        raise SystemExit(0)
    opts, rest = _split_argv(argv)
    cfg = parse_args(rest, None)
    with stdout_to_stderr(cfg["json"]):
        result = run(cfg, opts, command_line_keys(rest))
    if cfg["json"]:
        print_json(result)
    return result
