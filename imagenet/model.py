"""ImageNet-1K models: MSViT-10-384/512/768, QKFormer HST-10 and the baselines (Spikformer,
Spikingformer, Spike-driven Transformer), built from `imagenet.yml` or the recipe `--config NAME` selects.

    python model.py                          # the configured model and its size
    python model.py --model msvit_10_768   # another suitable model
"""
from pathlib import Path

from msvit.zoo import create_dataset_model, dataset_models, describe_dataset_model

CONFIG = Path(__file__).with_name("imagenet.yml")
VARIANTS = dataset_models("imagenet")  # MSViT, QKFormer and the baselines (msvit.zoo)


def create_model(cfg=None, **overrides):
    """The configured model; `cfg` is a resolved config dict (default: `imagenet.yml`)."""
    return create_dataset_model(CONFIG if cfg is None else cfg, VARIANTS, **overrides)


if __name__ == "__main__":
    describe_dataset_model(CONFIG, VARIANTS)
