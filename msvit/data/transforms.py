"""timm's train and eval transforms for static images (CIFAR, ImageNet), from the recipe's keys.

The evaluation transform resizes the short side to `floor(img_size / crop_pct)` and centre-crops `img_size`.
`crop_pct: null` applies the rule of the authors' releases (QKFormer and MSViT `util/datasets.py`): 0.875 up
to 224 (224 px: resize 256, crop 224) and 1.0 above (384 px: resize 384, crop 384, the whole short side kept).
An explicit `crop_pct` wins.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

__all__ = ["image_transforms", "eval_transform", "eval_crop_pct", "describe_eval_transform", "mean_std",
           "RELEASE_CROP_PCT", "RELEASE_CROP_SWITCH"]

RELEASE_CROP_PCT = 224 / 256    # the releases' crop at and below 224 px
RELEASE_CROP_SWITCH = 224       # above this size the releases keep the whole short side (crop_pct 1.0)


def _pair(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    return float(value[0]), float(value[1])


def _img_size(cfg: Mapping[str, Any]) -> int:
    return int(cfg.get("img_size") or 224)


def eval_crop_pct(img_size: int, crop_pct: float | None = None) -> float:
    """The crop fraction of the evaluation at `img_size`: `crop_pct` when given, else the releases' rule
    (0.875 up to 224 px, 1.0 above)."""
    if crop_pct is not None:
        return float(crop_pct)
    return RELEASE_CROP_PCT if img_size <= RELEASE_CROP_SWITCH else 1.0


def mean_std(cfg: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation of static images: the recipe's mean and std, else ImageNet's."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean = tuple(float(m) for m in (cfg.get("mean") or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(s) for s in (cfg.get("std") or IMAGENET_DEFAULT_STD))
    return mean, std


def eval_transform(cfg: Mapping[str, Any]) -> Callable:
    """timm's evaluation transform: resize the short side to floor(img_size / crop_pct) (`interpolation`,
    bicubic by default), centre-crop img_size, normalise; crop_pct from `eval_crop_pct`."""
    from timm.data import create_transform

    img_size = _img_size(cfg)
    mean, std = mean_std(cfg)
    return create_transform(
        img_size, is_training=False, interpolation=cfg.get("interpolation") or "bicubic",
        mean=mean, std=std, crop_pct=eval_crop_pct(img_size, cfg.get("crop_pct")))


def image_transforms(cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """timm's train and eval transforms for static images, from the recipe's keys."""
    from timm.data import create_transform

    img_size = _img_size(cfg)
    mean, std = mean_std(cfg)
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
    if aa and cfg.get("aa_ops"):
        _restrict_rand_augment(train, aa, cfg["aa_ops"])
    return train, eval_transform(cfg)


def _restrict_rand_augment(train: Any, policy: str, ops: Sequence[str]) -> None:
    """Replace the RandAugment of timm's `train` Compose by the same policy over `ops` only (Spikformer's CIFAR
    loader draws from five operations; same magnitudes, image-size and mean hyper-parameters)."""
    from timm.data.auto_augment import RandAugment, rand_augment_transform

    steps = train.transforms
    index = next(i for i, step in enumerate(steps) if isinstance(step, RandAugment))
    steps[index] = rand_augment_transform(policy, dict(steps[index].ops[0].hparams), transforms=list(ops))


def describe_eval_transform(cfg: Mapping[str, Any]) -> str:
    """One line naming the evaluation transform `cfg` builds, read from the built transform's Resize and
    CenterCrop, e.g. 'eval transform: resize 384 (bicubic), centre crop 384 (crop_pct 1.0, the release's rule
    above 224)'."""
    from torchvision import transforms as T

    steps = getattr(eval_transform(cfg), "transforms", [])
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    img_size, given = _img_size(cfg), cfg.get("crop_pct")
    crop_pct = eval_crop_pct(img_size, given)
    if given is None:
        side = f"up to {RELEASE_CROP_SWITCH}" if img_size <= RELEASE_CROP_SWITCH else f"above {RELEASE_CROP_SWITCH}"
        why = f"the release's rule {side}"
    else:
        why = "as configured"
        if img_size > RELEASE_CROP_SWITCH and crop_pct != 1.0:
            why += (f"; above {RELEASE_CROP_SWITCH} the release keeps the whole short side (crop_pct 1.0, "
                    f"resize {img_size}): --crop-pct null applies its rule")
    parts = []
    if resize is not None:
        size = resize.size if isinstance(resize.size, int) else "x".join(map(str, resize.size))
        parts.append(f"resize {size} ({getattr(resize.interpolation, 'value', resize.interpolation)})")
    if crop is not None:
        parts.append(f"centre crop {'x'.join(map(str, dict.fromkeys(crop.size)))}")
    if not parts:  # not the timm layout this module builds
        parts.append(f"resize {math.floor(img_size / crop_pct)}, centre crop {img_size}")
    return f"eval transform: {', '.join(parts)} (crop_pct {float(crop_pct)}, {why})"
