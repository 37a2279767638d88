"""CIFAR10-DVS models: MSViT 2-256 (MSSA in stage 1, mlp ratio 1), QKFormer HST-2-256 and the baselines (Spikformer,
Spikingformer, Spike-driven Transformer), built from `cifar10-dvs.yml` or the recipe `--config NAME` selects.

    python model.py                          # the configured model and its size
    python model.py --model qkformer_dvs_2_256   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, dataset_models, describe_dataset_model

CONFIG = Path(__file__).with_name("cifar10-dvs.yml")
VARIANTS = dataset_models("cifar10_dvs")  # MSViT, QKFormer and the baselines (msvit.zoo)


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `cifar10-dvs.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
