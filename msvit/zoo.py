"""The model zoo: which model suits which dataset, the published figures, and `python -m msvit.zoo`,
which builds every model and prints its parameter table."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import timm
from torch import nn

from .errors import ConfigError, cli_entry
from .models import count_parameters

__all__ = ["ZooEntry", "ZOO", "create_dataset_model", "describe_dataset_model", "reference_batch_sizes", "main"]


@dataclass(frozen=True)
class ZooEntry:
    model: str
    dataset: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    published_params: str = ""
    published_top1: float | None = None  # %, from the papers (MSViT's non-ImageNet rows via an aggregator)
    # per-GPU (train, eval) batch of the release: with the batch-coupled SSA it is part of the network
    release_batch: tuple[int, int] | None = None


_CIFAR_BATCH, _IMAGENET_BATCH, _DVS_BATCH = (64, 64), (32, 32), (16, 16)
_IMAGENET_768_BATCH = (24, 32)  # the 768 models trained at 24 per GPU (x 8 GPUs x 3 accumulation steps)

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("msvit_cifar_4_384", "cifar10", dict(num_classes=10), "", 96.53, _CIFAR_BATCH),
    ZooEntry("msvit_cifar_4_384", "cifar100", dict(num_classes=100), "", 81.98, _CIFAR_BATCH),
    ZooEntry("msvit_10_384", "imagenet", {}, "17.69M", 80.09, _IMAGENET_BATCH),
    ZooEntry("msvit_10_512", "imagenet", {}, "30.23M", 82.96, _IMAGENET_BATCH),
    ZooEntry("msvit_10_768", "imagenet", {}, "69.80M", 85.06, _IMAGENET_768_BATCH),
    ZooEntry("msvit_dvs_2_256", "cifar10_dvs", dict(num_classes=10, mlp_ratio=1), "", 84.0, _DVS_BATCH),
    ZooEntry("msvit_dvs_2_256", "dvs128_gesture", dict(num_classes=11, mlp_ratio=4), "", 98.8, _DVS_BATCH),
    ZooEntry("qkformer_cifar_4_384", "cifar10", dict(num_classes=10), "6.74M", 96.18, _CIFAR_BATCH),
    ZooEntry("qkformer_cifar_4_384", "cifar100", dict(num_classes=100), "6.74M", 81.15, _CIFAR_BATCH),
    ZooEntry("qkformer_10_384", "imagenet", {}, "16.47M", 78.80, _IMAGENET_BATCH),
    ZooEntry("qkformer_10_512", "imagenet", {}, "29.08M", 82.04, _IMAGENET_BATCH),
    ZooEntry("qkformer_10_768", "imagenet", {}, "64.96M", 84.22, _IMAGENET_768_BATCH),
    ZooEntry("qkformer_dvs_2_256", "cifar10_dvs", dict(num_classes=10, mlp_ratio=1), "1.50M", 84.0, _DVS_BATCH),
    ZooEntry("qkformer_dvs_2_256", "dvs128_gesture", dict(num_classes=11, mlp_ratio=4), "1.50M", 98.6, _DVS_BATCH),
)


def reference_batch_sizes(cfg: dict[str, Any]) -> tuple[int, int, str] | None:
    """The per-process (train, eval) batch that a batch-coupled model of `cfg` is meant to run at, and where
    it comes from: the authors' release for a published model, else the YAML recipe (None without one)."""
    from .config import load_config

    entry = next((e for e in ZOO if e.model == cfg.get("model") and e.dataset == cfg.get("dataset")), None)
    if entry is not None and entry.release_batch is not None:
        return (*entry.release_batch, "the release")
    if not cfg.get("config"):
        return None
    recipe = load_config(cfg["config"])
    train = recipe.get("batch_size")
    if train is None:
        return None
    return train, recipe.get("val_batch_size") or train, "the recipe"


def create_dataset_model(cfg: dict[str, Any] | str | Path, variants: Sequence[str],
                         **overrides: Any) -> nn.Module:
    """Build the configured model (`cfg`: a resolved config or a YAML path), checking it is one of
    the `variants` that suit the dataset and its arguments (`config.check_model_kwargs`); `overrides` go
    to the model on top of the config."""
    from .config import check_model_kwargs, model_arguments, parse_args

    if not isinstance(cfg, dict):
        cfg = parse_args([], cfg)
    name = cfg.get("model")
    if name not in variants:
        raise ConfigError(f"model {name!r} does not suit dataset {cfg.get('dataset')!r}; "
                          f"choose one of {', '.join(variants)}")
    kwargs, labels = model_arguments(cfg)
    kwargs.update(overrides)
    labels.update({key: key for key in overrides})
    return timm.create_model(name, **check_model_kwargs(name, kwargs, labels))


@cli_entry
def describe_dataset_model(config: str | Path, variants: Sequence[str],
                           argv: Sequence[str] | None = None) -> None:
    """`python <dataset>/model.py [--key value ...]`: build the configured model and print its size."""
    from .config import parse_args

    cfg = parse_args(list(sys.argv[1:] if argv is None else argv), config)
    model = create_dataset_model(cfg, variants)
    print(f"{cfg['model']} for {cfg['dataset']}: {count_parameters(model):,} parameters, "
          f"input {model.pretrained_cfg['input_size']}, T={model.T}, {model.num_classes} classes "
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
                         published_top1=entry.published_top1,
                         build_s=time.perf_counter() - start))
    return rows


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    from .config import ArgumentParser

    parser = ArgumentParser(description="Build every MSViT/QKFormer model and print its parameters.")
    parser.add_argument("--model", nargs="*", help="only these model names")
    args = parser.parse_args(argv)
    entries = [e for e in ZOO if not args.model or e.model in args.model]
    header = f"{'model':22} {'dataset':15} {'classes':>7} {'input':>10} {'T':>3} {'params':>12} " \
             f"{'paper':>7} {'top-1 (paper)':>13}"
    print(header)
    print("-" * len(header))
    for row in parameter_table(entries):
        top1 = f"{row['published_top1']:.2f}" if row["published_top1"] is not None else "-"
        print(f"{row['model']:22} {row['dataset']:15} {row['classes']:>7} {row['input']:>10} {row['T']:>3} "
              f"{row['params']:>12,} {row['published_params'] or '-':>7} {top1:>13}")


if __name__ == "__main__":
    main()
