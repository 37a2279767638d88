"""Spike and attention maps of MSViT / QKFormer models, one PNG sheet per image.

    python -m msvit.maps --config digits/digits.yml [--checkpoint PATH] [--images 4 | --files A.png B.jpg ...]
                         [--out maps] [--block -1] [--queries 3] [--json] [--key value ...]

Per image, `collect_maps` records (with forward hooks that exist only during the call, the model in eval mode,
no gradients):

- each stage's output spike count (the residual stream after the stage's last block, counts 0/1/2...), summed
  over channels and time steps, on the stage's token grid `[H, W]`;
- in stages with token attention (QKTA, MSSA), for one block per stage (`block`, default -1: the last), the
  binary mask of the attention neuron `attn_lif` per head and time step, `[heads, T, H, W]` (its `[T, B, heads,
  1, N]` output with the N tokens in raster order);
- in SSA stages, for that block, the scores of the `queries` query tokens with the most Q spikes in each head:
  score(i, j) = sum over T and the head's channels d of q[t, d, i] * k[t, d, j] (q, k: the spikes of `q_lif` and
  `k_lif`; a head takes a contiguous group of C / heads channels), `[heads, K, H, W]`. The batch-coupled SSA
  couples only the output neuron, so these scores are per sample.

`draw_sheet` (`msvit.map_sheet`) draws them; `main` is the command line.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data.registry import EVENT_DATASETS, dataset_name
from .errors import ConfigError, DataError, UserError, cli_entry
from .layers import SpikingSelfAttention, TokenAttention
from .map_sheet import draw_sheet, input_display, sheet_size
from .plotting import require_matplotlib

__all__ = ["collect_maps", "check_block", "draw_sheet", "input_display", "sheet_size", "read_image", "file_transform",
           "main"]


# ---------------------------------------------------------------------- collection

def _stages(model: nn.Module) -> list[tuple[str, nn.Module, nn.Sequential]]:
    """(name, patch embedding, blocks) of every stage of a SpikingTransformer."""
    return [(f"stage{i}", getattr(model, f"patch_embed{i}"), getattr(model, f"stage{i}"))
            for i in range(1, model.num_stages + 1)]


def check_block(model: nn.Module, block: int) -> None:
    """Raise ConfigError unless `block` indexes a block in every stage that has blocks."""
    depths = [len(blocks) for _, _, blocks in _stages(model)]
    shallowest = min((d for d in depths if d), default=0)
    if not shallowest:
        return
    if not -shallowest <= block < shallowest:
        raise ConfigError(f"--block {block} is out of range: the stages have {', '.join(map(str, depths))} blocks; "
                          f"give an index from {-shallowest} to {shallowest - 1} (-1: the last block of each stage)")


def _attention_kind(attn: nn.Module) -> str | None:
    if isinstance(attn, TokenAttention):
        return "MSSA" if attn.multi_scale else "QKTA"
    return "SSA" if isinstance(attn, SpikingSelfAttention) else None


def _top_queries(q: torch.Tensor, k: torch.Tensor, heads: int, count: int) -> tuple[torch.Tensor, ...]:
    """SSA scores of the `count` queries with the most Q spikes per sample and head, from the spikes `q`, `k`
    `[T, B, C, N]`: (query tokens [B, heads, K], their Q spikes [B, heads, K], scores [B, heads, K, N])."""
    T, B, C, N = q.shape
    q, k = q.reshape(T, B, heads, C // heads, N).double(), k.reshape(T, B, heads, C // heads, N).double()
    spikes = q.sum(dim=(0, 3))                                       # [B, heads, N]
    order = torch.sort(spikes, dim=-1, descending=True, stable=True).indices[..., :count]  # ties: lower token
    chosen = q.gather(-1, order.unsqueeze(0).unsqueeze(3).expand(T, B, heads, C // heads, order.shape[-1]))
    scores = torch.einsum("tbhdi,tbhdj->bhij", chosen, k)
    return order, spikes.gather(-1, order), scores


@torch.no_grad()
def collect_maps(model: nn.Module, inputs: torch.Tensor, block: int = -1, queries: int = 3) -> list[dict[str, Any]]:
    """Run `model` (a SpikingTransformer) on `inputs` (`[B, C, H, W]` images or `[B, T, C, H, W]` frames) and
    return per image a dict: `input` (the sample as the model got it), `logits`, `prediction` (int) and
    `stages`, one dict per stage with `name` ('stage1'), `spikes` `[H, W]`, and for the stages with attention
    `kind` ('MSSA', 'QKTA' or 'SSA'), `block` (the index into the stage) and either `mask` `[heads, T, H, W]`
    (token attention) or `queries` (token indices `[heads, K]`), `query_spikes` `[heads, K]` and `scores`
    `[heads, K, H, W]` (SSA). Arrays are numpy; the model's training mode is restored afterwards."""
    if queries < 1:
        raise ConfigError(f"--queries must be 1 or more, got {queries}")
    check_block(model, block)
    seen: dict[str, Any] = {}
    handles = []

    def keep(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[key] = out.detach()
        return hook

    def keep_grid(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            seen[key] = tuple(args[0].shape[-2:])
        return hook

    plan = []
    for name, embed, blocks in _stages(model):
        last = blocks[-1] if len(blocks) else embed  # an empty stage passes the embedding's output on
        handles.append(last.register_forward_hook(keep(f"{name}.out")))
        attn = blocks[block].attn if len(blocks) else None
        kind = _attention_kind(attn) if attn is not None else None
        plan.append((name, attn, kind, block % len(blocks) if len(blocks) else None))
        if kind is None:
            continue
        handles.append(attn.register_forward_pre_hook(keep_grid(f"{name}.grid")))
        lifs = ("attn_lif",) if kind != "SSA" else ("q_lif", "k_lif")
        handles += [getattr(attn, lif).register_forward_hook(keep(f"{name}.{lif}")) for lif in lifs]
    training = model.training
    model.eval()
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)

    batch = inputs.shape[0]
    images = [{"input": inputs[b].detach().float().cpu().numpy(), "logits": logits[b].float().cpu().numpy(),
               "prediction": int(logits[b].argmax()), "stages": []} for b in range(batch)]
    for name, attn, kind, index in plan:
        spikes = seen[f"{name}.out"].double().sum(dim=(0, 2)).cpu().numpy()  # [B, H, W]
        per_image: list[dict[str, Any]] = [{"name": name, "spikes": spikes[b]} for b in range(batch)]
        if kind is not None:
            H, W = seen[f"{name}.grid"]
            heads = attn.num_heads
            if kind == "SSA":
                order, q_spikes, scores = _top_queries(seen[f"{name}.q_lif"], seen[f"{name}.k_lif"], heads, queries)
                order, q_spikes = order.cpu().numpy(), q_spikes.cpu().numpy()
                scores = scores.reshape(*scores.shape[:3], H, W).cpu().numpy()
                for b, entry in enumerate(per_image):
                    entry.update(queries=order[b], query_spikes=q_spikes[b], scores=scores[b])
            else:
                mask = seen[f"{name}.attn_lif"]                           # [T, B, heads, 1, N]
                mask = mask[:, :, :, 0].permute(1, 2, 0, 3).reshape(batch, heads, -1, H, W).cpu().numpy()
                for b, entry in enumerate(per_image):
                    entry["mask"] = mask[b]
            for entry in per_image:
                entry.update(kind=kind, block=index)
        for image, entry in zip(images, per_image):
            image["stages"].append(entry)
    return images


# ---------------------------------------------------------------------- inputs

def _normalisation(cfg: dict[str, Any], dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the dataset's evaluation transform normalises with (None: DVS counts, not normalised)."""
    if dataset in EVENT_DATASETS:
        return None
    if dataset == "digits":
        from .data.digits import digits_settings

        settings = digits_settings(cfg)
        return settings["mean"], settings["std"]
    from .data.transforms import mean_std

    return mean_std(cfg)


def read_image(path: str) -> Any:
    """The image file at `path`, read by PIL, or a DataError naming the file and the fix."""
    from PIL import Image, UnidentifiedImageError

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
        from .data.transforms import eval_transform

        transform = eval_transform(cfg)
        return lambda image: transform(image.convert("RGB"))
    from .data.digits import digits_input, digits_settings

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
    from .config import ArgumentParser

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
    from .data import build_datasets

    _, val_set = build_datasets(cfg, train=False)
    if opts.images > len(val_set):
        raise ConfigError(f"--images {opts.images} is more than the {len(val_set)} evaluation images of {dataset}: "
                          f"give at most {len(val_set)}")
    samples = [val_set[i] for i in range(opts.images)]
    return [x for x, _ in samples], [int(y) for _, y in samples], getattr(val_set, "classes", None)


def run(cfg: dict[str, Any], opts: argparse.Namespace, given: Sequence[str] = ()) -> dict[str, Any]:
    """Build the configured model (architecture and data settings from the checkpoint's saved config when it has
    one), collect the maps of the chosen images in batches of val_batch_size and write one sheet per image."""
    from .models._checkpoint import load_checkpoint, read_checkpoint
    from .config import restore_run_settings, warn_other_dataset
    from .console import log, setup_logging
    from .training.distributed import set_threads
    from .energy.text import model_label  # a reduced model named with its arguments, as the energy figures do
    from .config import architecture_kwargs
    from .training.loaders import seed_everything
    from .models import MODEL_NAMES
    from .models._registry import BASELINE_NAMES
    from .zoo import create_dataset_model

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
    from .config import EVALUATION_KEYS, command_line_keys, parse_args, print_program_help
    from .console import print_json, stdout_to_stderr

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


if __name__ == "__main__":
    main()
