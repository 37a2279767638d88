"""The supported datasets: their names, class counts and builders; `build_datasets` picks one by cfg['dataset']."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sized

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .cifar import build_cifar10, build_cifar100
from .cifar10_dvs import build_cifar10_dvs
from .common import Built
from .digits import build_digits
from .dvs128_gesture import build_dvs128_gesture
from .imagenet import build_imagenet, image_folder_classes
from .transforms import describe_eval_transform

__all__ = ["build_datasets", "dataset_num_classes", "resolve_num_classes", "check_eval_split", "eval_transform_line",
           "dataset_name", "EVENT_DATASETS"]

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
_IMAGE_FOLDERS = frozenset({"imagenet"})  # class count: the data folder's (1000 above is ImageNet-1K's)
# what adds samples to a validation split that is empty or smaller than the number of processes
_SMALL_SPLIT_FIX = {
    "cifar10_dvs": "add recordings (the last 10% of each class folder of events_np/ validates; a class with "
                   "fewer than 10 recordings gives none)",
    "imagenet": "add images to the class folders of val/",
    "dvs128_gesture": "add gestures to events_np/test/",
}


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


def resolve_num_classes(cfg: Mapping[str, Any], train: bool) -> int:
    """The classifier's outputs for `cfg`: `num_classes` when set, else the dataset's class count.

    An ImageFolder set (`imagenet`: ImageNet-1K, ImageNet-100, Tiny-ImageNet, your own) counts the class folders
    of its train split (evaluation, `train=False`: val) without reading an image; the other sets have a fixed
    count. A `num_classes` that contradicts the count is a ConfigError naming both.
    """
    name = dataset_name(cfg.get("dataset"))
    wanted = cfg.get("num_classes")
    if name in _IMAGE_FOLDERS:
        found, folder = image_folder_classes(cfg, "train" if train else "val")
        if wanted is not None and wanted != found:
            raise ConfigError(f"num_classes is {wanted} but {folder} holds {found} class folders: set "
                              f"--num-classes {found}, or null to take the folder's count")
        return found
    expected = _DATASETS[name][0]
    if wanted is not None and wanted != expected:
        raise ConfigError(f"num_classes is {wanted} but {name} has {expected} classes; set --num-classes {expected}")
    return expected


def check_eval_split(dataset: Sized, cfg: Mapping[str, Any], processes: int) -> None:
    """A DataError when the validation split of `cfg['dataset']` is empty or smaller than the number of
    processes (each evaluates its own shard: some would evaluate nothing), naming its size and the fix."""
    n = len(dataset)
    if n >= max(processes, 1):
        return
    name = dataset_name(cfg.get("dataset"))
    where = f" in {cfg['data_dir']}" if cfg.get("data_dir") else ""
    fix = _SMALL_SPLIT_FIX.get(name, "check data_dir")
    if n == 0:
        raise DataError(f"the validation split of {name}{where} is empty (0 samples): {fix}")
    raise DataError(f"the validation split of {name}{where} has {n} samples, fewer than the {processes} processes "
                    f"that each evaluate a shard of it: {fix}, or run fewer processes")


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
