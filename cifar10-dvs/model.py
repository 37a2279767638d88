"""CIFAR10-DVS models: MSViT 2-256 (MSSA in stage 1, mlp ratio 1) and the QKFormer HST-2-256 baseline, built from `cifar10-dvs.yml`.

    python model.py                          # the configured model and its size
    python model.py --model qkformer_dvs_2_256   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, describe_dataset_model

CONFIG = Path(__file__).with_name("cifar10-dvs.yml")
VARIANTS = ("msvit_dvs_2_256", "qkformer_dvs_2_256")


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `cifar10-dvs.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
