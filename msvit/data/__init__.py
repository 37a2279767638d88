"""Datasets and input pipelines: CIFAR-10/100, ImageNet, DVS128 Gesture, CIFAR10-DVS and scikit-learn's digits.

`build_datasets(cfg)` returns `(train, val)`; every sample is `(tensor, int_label)`:
  - static images: float32 `[3, H, W]`, normalised (timm transforms for CIFAR and ImageNet);
  - DVS data: float32 `[T, 2, 128, 128]` raw per-frame event counts (spikingjelly frames, `split_by='number'`),
    with `DVSAugment` on the training split when `cfg['dvs_aug']` is true.

Missing or malformed data raises `DataError` with a one-line message naming the problem and the fix.
`resolve_num_classes(cfg, train)` gives the classifier's outputs (an ImageFolder set: its class folders' count);
`check_eval_split` refuses a validation split that is empty or smaller than the number of processes.

One module per source (`cifar`, `imagenet`, `dvs128_gesture`, `cifar10_dvs`, `digits`); `registry` maps dataset
names to them; `events` holds the on-disk DVS pipeline both DVS sets share, `dvs_augment` their augmentation,
`transforms` the image transforms, `common` the helpers of every source.
"""
from .cifar10_dvs import CIFAR10_DVS_SPLIT_FILE, cifar10_dvs_split, read_cifar10_dvs_aedat
from .digits import DigitsDataset
from .dvs128_gesture import read_dvs128_aedat
from .dvs_augment import DVSAugment
from .events import FramesToTensor
from .registry import build_datasets, check_eval_split, dataset_num_classes, eval_transform_line, resolve_num_classes
from .transforms import image_transforms

__all__ = ["build_datasets", "dataset_num_classes", "resolve_num_classes", "check_eval_split", "eval_transform_line",
           "image_transforms", "DVSAugment",
           "FramesToTensor", "DigitsDataset", "cifar10_dvs_split", "CIFAR10_DVS_SPLIT_FILE", "read_dvs128_aedat",
           "read_cifar10_dvs_aedat"]
