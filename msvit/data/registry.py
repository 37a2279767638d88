"""The supported datasets: their names, class counts and builders; `build_datasets` picks one by cfg['dataset']."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .cifar import build_cifar10, build_cifar100
from .cifar10_dvs import build_cifar10_dvs
from .common import Built
from .digits import build_digits
from .dvs128_gesture import build_dvs128_gesture
from .imagenet import build_imagenet
from .transforms import describe_eval_transform

__all__ = ["build_datasets", "dataset_num_classes", "eval_transform_line", "dataset_name", "EVENT_DATASETS"]

# name -> (number of classes, builder(cfg, want_train) -> (train or None, val, classes found))
_DATASETS: dict[str, tuple[int, Callable[[Mapping[str, Any], bool], Built]]] = {
    "cifar10": (10, build_cifar10),
    "cifar100": (100, build_cifar100),
    "imagenet": (1000, build_imagenet),
    "dvs128_gesture": (11, build_dvs128_gesture),
    "cifar10_dvs": (10, build_cifar10_dvs),
    "digits": (10, build_digits),
}
_IMAGE_TRANSFORMS = frozenset({"cifar10", "cifar100", "imagenet"})  # the sets that use transforms.image_transforms
EVENT_DATASETS = frozenset({"dvs128_gesture", "cifar10_dvs"})  # samples are event frames [T, 2, H, W], not images


def dataset_name(name: Any) -> str:
    """The registry's spelling of a dataset name ('CIFAR10-DVS' -> 'cifar10_dvs'), or a ConfigError naming the
    supported ones."""
    if not isinstance(name, str):
        raise ConfigError(f"dataset must be a string, got {name!r}: use one of {', '.join(_DATASETS)}")
    key = name.strip().lower().replace("-", "_")
    if key not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(_DATASETS)}")
    return key


def dataset_num_classes(name: str) -> int:
    """Number of classes of a supported dataset (`cifar10` -> 10, `imagenet` -> 1000, ...)."""
    return _DATASETS[dataset_name(name)][0]


def eval_transform_line(cfg: Mapping[str, Any]) -> str | None:
    """The log line naming the evaluation transform of `cfg['dataset']` (`transforms.describe_eval_transform`),
    or None for the sets without one (DVS frames, digits)."""
    if dataset_name(cfg.get("dataset")) not in _IMAGE_TRANSFORMS:
        return None
    return describe_eval_transform(cfg)


def build_datasets(cfg: Mapping[str, Any], train: bool = True) -> tuple[Dataset | None, Dataset]:
    """The `(train, val)` datasets for `cfg['dataset']`; see the package docstring for the sample format.

    With `train=False` (evaluation) the training split is neither built nor required: `(None, val)`.
    Under DDP, build on rank 0 first and on the other ranks after a barrier: the first build of a DVS dataset
    converts and integrates files on disk, which concurrent builds would race on.
    """
    name = dataset_name(cfg.get("dataset"))
    train_set, val_set, found = _DATASETS[name][1](cfg, train)
    wanted = cfg.get("num_classes")
    # Labels >= the model's head size crash the loss far from the cause; say so here.
    if wanted is not None and found > int(wanted):
        raise DataError(f"{name} has {found} classes but num_classes is {wanted}: set num_classes: {found}")
    return train_set, val_set
