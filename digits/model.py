"""Demo models for scikit-learn's 8x8 digits (upsampled): small members of the CIFAR families, built from `digits.yml`.

    python model.py                          # the configured model and its size
    python model.py --model qkformer_cifar_4_384   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, dataset_models, describe_dataset_model

CONFIG = Path(__file__).with_name("digits.yml")
VARIANTS = dataset_models("cifar10")  # every CIFAR model: MSViT, QKFormer and the baselines


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `digits.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
