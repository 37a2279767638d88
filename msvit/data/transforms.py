"""timm's train and eval transforms for static images (CIFAR, ImageNet), from the recipe's keys."""
from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["image_transforms"]


def _pair(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    return float(value[0]), float(value[1])


def image_transforms(cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """timm's train and eval transforms for static images, from the recipe's keys."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    img_size = int(cfg.get("img_size") or 224)
    mean = tuple(float(m) for m in (cfg.get("mean") or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(s) for s in (cfg.get("std") or IMAGENET_DEFAULT_STD))
    aa = cfg.get("aa")
    if isinstance(aa, str) and aa.strip().lower() in ("", "none"):
        aa = None
    train = create_transform(
        img_size, is_training=True,
        scale=_pair(cfg.get("scale"), (0.08, 1.0)), ratio=_pair(cfg.get("ratio"), (3 / 4, 4 / 3)),
        hflip=float(cfg.get("hflip", 0.5)), color_jitter=cfg.get("color_jitter", 0.4), auto_augment=aa,
        interpolation=cfg.get("train_interpolation") or "random", mean=mean, std=std,
        re_prob=float(cfg.get("reprob") or 0.0), re_mode=cfg.get("remode") or "const",
        re_count=int(cfg.get("recount") or 1))
    val = create_transform(
        img_size, is_training=False, interpolation=cfg.get("interpolation") or "bicubic",
        mean=mean, std=std, crop_pct=cfg.get("crop_pct"))
    return train, val
