"""ImageNet-1K models: MSViT-10-384/512/768 and the QKFormer HST-10 baselines, built from `imagenet.yml`.

    python model.py                          # the configured model and its size
    python model.py --model msvit_10_768   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, describe_dataset_model

CONFIG = Path(__file__).with_name("imagenet.yml")
VARIANTS = ("msvit_10_384", "msvit_10_512", "msvit_10_768", "qkformer_10_384", "qkformer_10_512", "qkformer_10_768")


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `imagenet.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
