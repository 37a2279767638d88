"""CIFAR-10 models: MSViT 4-384, QKFormer HST-4-384 and the baselines (Spikformer,
Spikingformer, Spike-driven Transformer), built from `cifar10.yml` or the recipe `--config NAME` selects.

    python model.py                          # the configured model and its size
    python model.py --model qkformer_cifar_4_384   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, dataset_models, describe_dataset_model

CONFIG = Path(__file__).with_name("cifar10.yml")
VARIANTS = dataset_models("cifar10")  # MSViT, QKFormer and the baselines (msvit.zoo)


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `cifar10.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
