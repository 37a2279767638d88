"""The model zoo: which model suits which dataset (MSViT, QKFormer and the baselines), the published figures, the
release each follows, and `python -m msvit.zoo`, which builds every model and prints its parameter table (`--table`:
MSViT's ImageNet comparison table, `msvit.energy.table`). A model name that timm knows and this package does not
register is an ANN (`msvit.config.ann`): it suits any image dataset."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from torch import nn

from .models._checkpoint import CheckpointError, extract_state_dict, load_checkpoint, read_checkpoint
from .config import (DEFAULTS, ArgumentParser, check_model_kwargs, load_config, model_arguments, parse_args)
from .config.ann import ANN_WORDS, ann_arguments, check_ann_kwargs, is_ann, unknown_model_name
from .console import print_json, stdout_to_stderr
from .energy.dense import dense_costs
from .energy.meter import E_MAC_PJ
from .errors import ConfigError, cli_entry
from .models import count_parameters
from .models._registry import ALL_ARCHS

__all__ = ["ZooEntry", "ZOO", "BASELINE_ZOO", "dataset_models", "check_dataset_model", "create_dataset_model",
           "describe_dataset_model", "reference_batch_sizes", "load_model", "parameter_table", "main"]


@dataclass(frozen=True)
class ZooEntry:
    model: str
    dataset: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # img_size here: a row at another input size
    published_params: str = ""
    published_top1: float | None = None  # %, from the papers (MSViT's non-ImageNet rows via an aggregator)
    # per-GPU (train, eval) batch of the release: with the batch-coupled SSA it is part of the network
    release_batch: tuple[int, int] | None = None
    published_top5: float | None = None
    note: str = ""     # how the figure was obtained, where that is not a 224² (or native-size) run from scratch
    recipe: str = ""   # the repository's recipe for it, relative to the repository root
    batch_source: str = "the release"  # where release_batch comes from, as the logs name it
    follows: str = ""     # the release (repository and folder) whose model this is
    checkpoint: str = ""  # where the release's weights live ('' : none released)
    published_energy_mj: float | None = None  # per image, as MSViT's ImageNet table quotes it (each paper's own rule)


# The baselines (msvit.models: spikformer, spikingformer, spike_driven_transformer): no batch coupling, so no release batch; published figures from each paper
# (ImageNet Spikformer/SDT rows as MSViT's table quotes them), parameter counts from the authors' code.
_SPK, _SKF, _SDT = "ZK-Zhou/spikformer", "zhouchenlin2096/Spikingformer", "BICLab/Spike-Driven-Transformer"
_SKF_CKPT = "Baidu pan (password abcd), linked from the Spikingformer README"
_SDT_CKPT = "Google Drive, linked from the Spike-driven Transformer README"
_SDT_DVS = dict(num_classes=10, pooling_stat="0011", dvs_mode=True, img_size=64, T=10)
_CIFAR_BATCH, _IMAGENET_BATCH, _DVS_BATCH = (64, 64), (32, 32), (16, 16)
_IMAGENET_768_BATCH = (24, 32)  # the 768 models trained at 24 per GPU (x 8 GPUs x 3 accumulation steps)
# QKFormer's higher-resolution rows of HST-10-768 (its README and Table 2: 85.25 at 288², 85.65 / 97.74 at 384²)
_QKFORMER_384_NOTE = ("about ten epochs at 384² from the 224² weights: the release's log of epochs 201-209 "
                      "(best 85.65 / 97.74 at epoch 203, its checkpoint-203), the tail of a 210-epoch cosine at "
                      "effective batch 512; imagenet/finetune_384.yml")
_QKFORMER_288_NOTE = ("288² 'input size for inference' (the paper's Table 2 caption, which says the same of the "
                      "384 row, yet that one was fine-tuned); no log or recipe survives, the download link is gone")
_QKFORMER_384_BATCH = (8, 8)    # inferred from the 384 log's lr (effective 512 with accum 8 on 8 GPUs) and memory
# The Spike-driven Transformer V2 (Meta-SpikeFormer): published at T 4 after a T 1 pre-training, fine-tuned with hard
# distillation from an ANN teacher (CAFormer-B36, ImageNet-21k); MSViT's table labels the three sizes 10-384/512/768
_V2 = "BICLab/Spike-Driven-Transformer-V2 classification/models.py (35f245f)"
_V2_CKPT = ("Google Drive folder linked from the V2 README: 55M_kd.pth (T 1) and, very likely, 55M_kd_T4.pth (T 4); "
            "both need kd=True")

# STMixer (Spiking Token Mixer, NeurIPS 2024): the current release (hard reset); no CIFAR figure found
_STM = "brain-intelligence-lab/STMixer_demo models/STMixer.py (38a0786)"
_STM_CKPT = ("Google Drive file 12VeoDWvnUcPk-8uM7gP9XRQSSzb5O5D-, linked from the STMixer_demo README "
             "(STMixer_8_768; its head count not verified)")


def _v2_note(label: str) -> str:
    return (f"T 4 with knowledge distillation from an ANN teacher (CAFormer-B36), fine-tuned from T 1; MSViT's table "
            f"calls it SDT v2-{label}")


BASELINE_ZOO = (
    ZooEntry("spikformer_8_384", "imagenet", {}, "16.81M", 70.24, follows=f"{_SPK} imagenet/ (embed_dim 384)",
             recipe="imagenet/spikformer.yml", published_energy_mj=5.97),
    ZooEntry("spikformer_8_512", "imagenet", {}, "29.68M", 73.38, follows=f"{_SPK} imagenet/",
             recipe="imagenet/spikformer.yml"),
    ZooEntry("spikformer_8_768", "imagenet", {}, "66.34M", 74.81, follows=f"{_SPK} imagenet/ (embed_dim 768)",
             recipe="imagenet/spikformer.yml", published_energy_mj=20.0),
    ZooEntry("spikformer_cifar_4_384", "cifar10", {}, "9.32M", 95.51, follows=f"{_SPK} cifar10/",
             recipe="cifar10/spikformer.yml"),
    ZooEntry("spikformer_cifar_4_384", "cifar100", dict(num_classes=100), "9.32M", 78.21,
             follows=f"{_SPK} cifar10/ (100 classes)", recipe="cifar100/spikformer.yml"),
    ZooEntry("spikformer_dvs_2_256", "cifar10_dvs", {}, "2.57M", 80.9, follows=f"{_SPK} cifar10dvs/",
             recipe="cifar10-dvs/spikformer.yml"),
    ZooEntry("spikingformer_8_384", "imagenet", {}, "16.81M", 72.45, follows=f"{_SKF} imagenet/ (embed_dim 384)",
             recipe="imagenet/spikingformer.yml"),
    ZooEntry("spikingformer_8_512", "imagenet", {}, "29.68M", 74.79, follows=f"{_SKF} imagenet/ (embed_dim 512)",
             recipe="imagenet/spikingformer.yml"),
    ZooEntry("spikingformer_8_768", "imagenet", {}, "66.34M", 75.85, follows=f"{_SKF} imagenet/",
             checkpoint=_SKF_CKPT, recipe="imagenet/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar10", {}, "9.32M", 95.81, follows=f"{_SKF} cifar10/",
             note="400 epochs, the released recipe and checkpoint (95.61 at 300)", checkpoint=_SKF_CKPT,
             recipe="cifar10/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar100", dict(num_classes=100, num_heads=8), "9.32M", 79.21,
             follows=f"{_SKF} cifar100/", note="400 epochs, the released recipe (79.09 at 300)",
             recipe="cifar100/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar10", dict(embed_dim=256, num_heads=8), "4.15M", 94.77,
             follows=f"{_SKF} cifar10/ (embed_dim 256)", recipe="cifar10/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar10", dict(depth=2), "5.76M", 95.22,
             follows=f"{_SKF} cifar10/ (depth 2)", recipe="cifar10/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar100", dict(num_classes=100, embed_dim=256, num_heads=8), "4.15M",
             77.43, follows=f"{_SKF} cifar100/ (embed_dim 256)", recipe="cifar100/spikingformer.yml"),
    ZooEntry("spikingformer_cifar_4_384", "cifar100", dict(num_classes=100, depth=2, num_heads=8), "5.76M", 78.34,
             follows=f"{_SKF} cifar100/ (depth 2)", recipe="cifar100/spikingformer.yml"),
    ZooEntry("spikingformer_dvs_2_256", "cifar10_dvs", dict(num_classes=10), "2.57M", 81.3,
             follows=f"{_SKF} cifar10-dvs/", recipe="cifar10-dvs/spikingformer.yml"),
    ZooEntry("spikingformer_dvs_2_256", "dvs128_gesture", {}, "2.57M", 98.3, follows=f"{_SKF} dvs128-gesture/",
             recipe="dvs128-gesture/spikingformer.yml"),
    ZooEntry("sdt_8_384", "imagenet", {}, "16.81M", 72.28, follows=f"{_SDT} conf/imagenet/8_384_300E_t4.yml",
             checkpoint=_SDT_CKPT, recipe="imagenet/sdt.yml", published_energy_mj=3.9),
    ZooEntry("sdt_6_512", "imagenet", {}, "23.37M", 74.11, follows=f"{_SDT} conf/imagenet/6_512_300E_t4.yml",
             checkpoint=_SDT_CKPT, recipe="imagenet/sdt_6_512.yml"),
    ZooEntry("sdt_8_512", "imagenet", {}, "29.68M", 74.57, follows=f"{_SDT} conf/imagenet/8_512_300E_t4.yml",
             checkpoint=_SDT_CKPT, recipe="imagenet/sdt.yml", published_energy_mj=4.5),
    ZooEntry("sdt_10_512", "imagenet", {}, "36.01M", 74.66,
             follows=f"{_SDT} conf/imagenet/10_384_300E_t4.yml (which holds 10-512)", checkpoint=_SDT_CKPT,
             recipe="imagenet/sdt_10_512.yml"),
    ZooEntry("sdt_8_768", "imagenet", {}, "66.34M", None, follows=f"{_SDT} conf/imagenet/8_768_300E_t4.yml",
             checkpoint=_SDT_CKPT, recipe="imagenet/sdt_8_768.yml", published_energy_mj=6.09),
    ZooEntry("sdt_8_768", "imagenet", dict(img_size=288), "66.34M", 77.07,
             note="a 288x288 test (resize 320, centre crop 288) of the model trained at 224 (MSViT's table lists "
                  "it at 224)", follows=f"{_SDT} README --large-valid", checkpoint=_SDT_CKPT,
             recipe="imagenet/sdt_8_768.yml"),
    ZooEntry("sdt_cifar_2_512", "cifar10", {}, "10.28M", 95.60, follows=f"{_SDT} conf/cifar10/2_512_300E_t4.yml",
             recipe="cifar10/sdt.yml"),
    ZooEntry("sdt_cifar_2_512", "cifar100", dict(num_classes=100), "10.28M", 78.4,
             follows=f"{_SDT} conf/cifar100/2_512_300E_t4.yml", recipe="cifar100/sdt.yml"),
    ZooEntry("sdt_dvs_2_256", "cifar10_dvs", _SDT_DVS, "2.57M", 80.0,
             note="published at T 16; the released config is T 10, which its authors say does not reach it (SDT#14)",
             follows=f"{_SDT} conf/cifar10-dvs/2_256_200E_t10_TET.yml", recipe="cifar10-dvs/sdt.yml"),
    ZooEntry("sdt_dvs_2_256", "dvs128_gesture", {}, "2.57M", 99.3, follows=f"{_SDT} conf/gesture/2_256_200E_t16.yml",
             recipe="dvs128-gesture/sdt.yml"),
    *(ZooEntry(f"metaspikformer_8_{width}", "imagenet", dict(T=4, kd=True), params, top1, follows=_V2,
               checkpoint=_V2_CKPT if width == 512 else "", note=_v2_note(label))
      for width, params, top1, label in ((256, "15.1M", 74.10, "10-384"), (384, "31.3M", 77.20, "10-512"),
                                         (512, "55.4M", 80.00, "10-768"))),
    ZooEntry("metaspikformer_8_768", "imagenet", {}, "", None, follows=_V2),
    ZooEntry("stmixer_8_768", "imagenet", {}, "", 76.68, follows=_STM, checkpoint=_STM_CKPT,
             recipe="imagenet/stmixer.yml", published_energy_mj=4.45,
             note="T 1; top-1 and energy as SMixer (ICLR 2026) quotes them, the paper's table not found; heads "
                  "not released: 16 assumed (61.17M; 8 heads 58.71M, 12 heads 59.94M)"),
    ZooEntry("stmixer_cifar_10_384", "cifar10", {}, "", None, follows=_STM, recipe="cifar10/stmixer.yml"),
    ZooEntry("stmixer_cifar_4_384", "cifar10", {}, "", None, follows=_STM),
    ZooEntry("stmixer_cifar_10_384", "cifar100", dict(num_classes=100), "", None, follows=_STM,
             recipe="cifar100/stmixer.yml"),
    ZooEntry("stmixer_cifar_4_384", "cifar100", dict(num_classes=100), "", None, follows=_STM,
             note="STMixer-4-384-16, the paper's CIFAR-100 ablation model (T 1); its top-1 not found"),
)

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("msvit_cifar_4_384", "cifar10", dict(num_classes=10), "", 96.53, _CIFAR_BATCH),
    ZooEntry("msvit_cifar_4_384", "cifar100", dict(num_classes=100), "", 81.98, _CIFAR_BATCH),
    ZooEntry("msvit_10_384", "imagenet", {}, "17.69M", 80.09, _IMAGENET_BATCH, published_energy_mj=16.65),
    ZooEntry("msvit_10_512", "imagenet", {}, "30.23M", 82.96, _IMAGENET_BATCH, published_energy_mj=24.74),
    ZooEntry("msvit_10_768", "imagenet", {}, "69.80M", 85.06, _IMAGENET_768_BATCH, published_energy_mj=45.88),
    ZooEntry("msvit_dvs_2_256", "cifar10_dvs", dict(num_classes=10, mlp_ratio=1), "", 84.0, _DVS_BATCH),
    ZooEntry("msvit_dvs_2_256", "dvs128_gesture", dict(num_classes=11, mlp_ratio=4), "", 98.8, _DVS_BATCH),
    ZooEntry("qkformer_cifar_4_384", "cifar10", dict(num_classes=10), "6.74M", 96.18, _CIFAR_BATCH),
    ZooEntry("qkformer_cifar_4_384", "cifar100", dict(num_classes=100), "6.74M", 81.15, _CIFAR_BATCH),
    ZooEntry("qkformer_10_384", "imagenet", {}, "16.47M", 78.80, _IMAGENET_BATCH, published_energy_mj=15.13),
    ZooEntry("qkformer_10_512", "imagenet", {}, "29.08M", 82.04, _IMAGENET_BATCH, published_energy_mj=21.99),
    ZooEntry("qkformer_10_768", "imagenet", {}, "64.96M", 84.22, _IMAGENET_768_BATCH, published_energy_mj=38.91),
    ZooEntry("qkformer_10_768", "imagenet", dict(img_size=288), "64.96M", 85.25, None, note=_QKFORMER_288_NOTE),
    ZooEntry("qkformer_10_768", "imagenet", dict(img_size=384), "64.96M", 85.65, _QKFORMER_384_BATCH, 97.74,
             note=_QKFORMER_384_NOTE, recipe="imagenet/finetune_384.yml",
             batch_source="the release's 384 fine-tune (its per-GPU batch inferred from the logged lr)"),
    ZooEntry("qkformer_dvs_2_256", "cifar10_dvs", dict(num_classes=10, mlp_ratio=1), "1.50M", 84.0, _DVS_BATCH),
    ZooEntry("qkformer_dvs_2_256", "dvs128_gesture", dict(num_classes=11, mlp_ratio=4), "1.50M", 98.6, _DVS_BATCH),
    *BASELINE_ZOO,
)


def dataset_models(dataset: str) -> tuple[str, ...]:
    """The registered models the zoo lists for `dataset`, in its order (a dataset folder's suitable models)."""
    return tuple(dict.fromkeys(e.model for e in ZOO if e.dataset == dataset))


def reference_batch_sizes(cfg: dict[str, Any]) -> tuple[int, int, str] | None:
    """The per-process (train, eval) batch that a batch-coupled model of `cfg` is meant to run at, and where
    it comes from: the authors' release for a published model, else the YAML recipe (None without one)."""
    rows = [e for e in ZOO if e.model == cfg.get("model") and e.dataset == cfg.get("dataset")]
    # a row at the run's input size with a known batch (the 384 fine-tune), else the model's first row
    sized = [e for e in rows if e.release_batch is not None and e.kwargs.get("img_size") == cfg.get("img_size")]
    entry = (sized or rows or [None])[0]
    if entry is not None and entry.release_batch is not None:
        return (*entry.release_batch, entry.batch_source)
    if not cfg.get("config"):
        return None
    recipe = load_config(cfg["config"])
    train = recipe.get("batch_size")
    if train is None:
        return None
    return train, recipe.get("val_batch_size") or train, "the recipe"


def check_dataset_model(cfg: Mapping[str, Any], variants: Sequence[str]) -> None:
    """A ConfigError unless `cfg['model']` is one of the `variants` that suit the dataset: a typo gets the closest
    registered name, another registered model the list."""
    name = cfg.get("model")
    if is_ann(name):  # timm's ANN suits any image dataset (config.ann refuses event data)
        return
    if isinstance(name, str) and name not in ALL_ARCHS and name not in variants:  # a typo
        raise unknown_model_name(name)
    if name not in variants:
        raise ConfigError(f"model {name!r} does not suit dataset {cfg.get('dataset')!r}; "
                          f"choose one of {', '.join(variants)}")


def create_dataset_model(cfg: dict[str, Any] | str | Path, variants: Sequence[str],
                         **overrides: Any) -> nn.Module:
    """Build the configured model (`cfg`: a resolved config or a YAML path), checking it is one of
    the `variants` that suit the dataset and its arguments (`config.check_model_kwargs`); `overrides` go
    to the model on top of the config."""
    if not isinstance(cfg, dict):
        cfg = parse_args([], cfg)
    check_dataset_model(cfg, variants)
    name = cfg["model"]
    ann = is_ann(name)
    kwargs, labels = ann_arguments(cfg) if ann else model_arguments(cfg)
    kwargs.update(overrides)
    labels.update({key: key for key in overrides})
    if ann:
        return timm.create_model(name, pretrained=False, **check_ann_kwargs(name, kwargs, labels))
    return timm.create_model(name, **check_model_kwargs(name, kwargs, labels))


def load_model(path: str | os.PathLike | Mapping[str, Any], use_ema: bool = False, **overrides: Any) -> nn.Module:
    """The model of a checkpoint with its weights, in eval mode: one call from a run's best.pth / last.pth.

    Our checkpoints carry their run's settings: the model is rebuilt as it was trained (its name, model_kwargs,
    the legacy dim/num_heads/mlp_ratio, num_classes, T and the SSA setting). The authors' carry none: pass
    `model=NAME` (and any argument their release differs in, e.g. `mlp_ratio=1`); num_classes comes from the
    head's weight. `overrides` are the model's keyword arguments on top (`T=2`, `batch_coupled_ssa=False`,
    `model=...` for another registered model that takes the same tensors). `use_ema`: the EMA weights."""
    checkpoint = path if isinstance(path, Mapping) else read_checkpoint(path)
    state = extract_state_dict(checkpoint, use_ema=use_ema)
    saved = checkpoint.get("config") if isinstance(checkpoint.get("config"), Mapping) else None
    overrides = dict(overrides)
    name = overrides.pop("model", None) or (saved or {}).get("model")
    if name is None:
        raise CheckpointError(f"{_source(path)} carries no saved settings (an authors' release, or bare weights): "
                              f"pass the model it holds, load_model(path, model=NAME), e.g. model="
                              f"'qkformer_cifar_4_384'; python -m msvit.zoo lists the registered models")
    ann = is_ann(name)
    if name not in ALL_ARCHS and not ann:
        raise CheckpointError(str(unknown_model_name(name)))
    kwargs: dict[str, Any] = {}  # the authors': the registered model's own arguments (the release's)
    labels: dict[str, str] = {}
    if ann:  # timm's ANN: its run's model_kwargs, classes and input size
        kwargs, labels = ann_arguments({**DEFAULTS, **{k: v for k, v in (saved or {}).items() if k in DEFAULTS},
                                        "model": name})
    elif saved is not None:
        # the kernel is not the network: the default (auto) runs anywhere, a run's cupy would not on a CPU
        cfg = {**DEFAULTS, **{k: v for k, v in saved.items() if k in DEFAULTS and k != "neuron_backend"}}
        if "batch_coupled_ssa" not in saved:
            cfg["batch_coupled_ssa"] = False  # saved before the setting existed: its SSA ran per sample
        kwargs, labels = model_arguments(cfg)
    head = state.get("head.weight")
    if "num_classes" not in kwargs and isinstance(head, torch.Tensor) and head.dim() == 2:
        kwargs["num_classes"], labels["num_classes"] = head.shape[0], "num_classes"
    kwargs.update(overrides)
    labels.update({key: key for key in overrides})
    checked = check_ann_kwargs(name, kwargs, labels) if ann else check_model_kwargs(name, kwargs, labels)
    model = timm.create_model(name, **({"pretrained": False} if ann else {}), **checked)
    load_checkpoint(model, checkpoint, use_ema=use_ema)
    return model.eval()


def _source(path: Any) -> str:
    return "the checkpoint" if isinstance(path, Mapping) else f"checkpoint {os.fspath(path)}"


@cli_entry
def describe_dataset_model(config: str | Path, variants: Sequence[str],
                           argv: Sequence[str] | None = None) -> None:
    """`python <dataset>/model.py [--key value ...]`: build the configured model and print its size."""
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv), config, program="model")
    model = create_dataset_model(cfg, variants)
    size = model.pretrained_cfg["input_size"]
    if is_ann(cfg["model"]) and cfg["img_size"]:  # the data's size fed timm's constructor
        size = (size[0], cfg["img_size"], cfg["img_size"])
    what = ANN_WORDS if is_ann(cfg["model"]) else f"T={model.T}"
    side = getattr(model, "training_only_parameters", lambda: 0)()  # STMixer's SML side branches
    side_words = f" (of which {side:,} in training-only side branches)" if side else ""
    print(f"{cfg['model']} for {cfg['dataset']}: {count_parameters(model):,} parameters{side_words}, "
          f"input {size}, {what}, {model.num_classes} classes "
          f"(suitable models: {', '.join(variants)})")


def parameter_table(entries: Sequence[ZooEntry] = ZOO) -> list[dict[str, Any]]:
    """Build each model and return its measured parameter count next to the published figures."""
    rows = []
    for entry in entries:
        start = time.perf_counter()
        model = timm.create_model(entry.model, **entry.kwargs)
        cfg = model.pretrained_cfg
        rows.append(dict(model=entry.model, dataset=entry.dataset, classes=model.num_classes,
                         input="x".join(map(str, cfg["input_size"])), T=model.T,
                         params=count_parameters(model), published_params=entry.published_params,
                         published_top1=entry.published_top1, published_top5=entry.published_top5,
                         note=entry.note, recipe=entry.recipe, build_s=time.perf_counter() - start))
    return rows


def _table(firing: Sequence[str], as_json: bool) -> None:
    """`--table`: the comparison table (msvit.energy.table) as Markdown, or one JSON object; logs on stderr."""
    from .energy.table import comparison_table, format_table, read_firing

    with stdout_to_stderr(as_json):
        rows = comparison_table(ZOO, read_firing(firing))
    if as_json:
        print_json({"e_mac_pj": E_MAC_PJ, "firing": list(firing), "rows": rows})
    else:
        print(format_table(rows))


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description="Build every registered model (MSViT, QKFormer, the baselines) and print "
                                        "its parameters.")
    parser.add_argument("--model", nargs="*", help="only these model names")
    parser.add_argument("--energy", action="store_true", help="instead: the rate-independent energy figures of the "
                        "rows with a published energy (msvit.energy.dense.dense_costs)")
    parser.add_argument("--table", action="store_true", help="instead: MSViT's ImageNet comparison table as this "
                        "codebase sees it (msvit.energy.table)")
    parser.add_argument("--firing", nargs="+", default=[], metavar="FILE", help="with --table: outputs of python "
                        "-m msvit.energy --json whose measured energies fill our energy column")
    parser.add_argument("--json", action="store_true", help="with --table: one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.table or args.json or args.firing:
        return _table(args.firing, args.json)
    entries = [e for e in ZOO if not args.model or e.model in args.model]
    if args.energy:
        print(f"{'model':26} {'T':>3} {'paper mJ':>9} {'MACs mJ':>8} {'dense GFLOPs/step':>17} {'implied rate':>12}")
        for entry in (e for e in entries if e.published_energy_mj is not None):
            row = dense_costs(entry)
            print(f"{row['model']:26} {row['T']:>3} {row['published_energy_mj']:>9.2f} {row['mac_mj']:>8.3f} "
                  f"{row['dense_gflops']:>17.2f} {row['implied_rate']:>12.2f}")
        return
    header = f"{'model':26} {'dataset':15} {'classes':>7} {'input':>10} {'T':>3} {'params':>12} " \
             f"{'paper':>7} {'top-1 (paper)':>13} {'top-5':>6}"
    print(header)
    print("-" * len(header))
    notes = []
    for row in parameter_table(entries):
        top1 = f"{row['published_top1']:.2f}" if row["published_top1"] is not None else "-"
        top5 = f"{row['published_top5']:.2f}" if row["published_top5"] is not None else "-"
        mark = ""
        if row["note"]:
            notes.append(f"[{len(notes) + 1}] {row['model']} at {row['input']}: {row['note']}")
            mark = f" [{len(notes)}]"
        print(f"{row['model']:26} {row['dataset']:15} {row['classes']:>7} {row['input']:>10} {row['T']:>3} "
              f"{row['params']:>12,} {row['published_params'] or '-':>7} {top1:>13} {top5:>6}{mark}")
    if notes:
        print()
        print("\n".join(notes))


if __name__ == "__main__":
    main()
