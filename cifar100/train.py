"""Train on cifar100 with `cifar100.yml`; any key can be overridden: `python train.py --key value`.

    python train.py                          # one process (GPU if available)
    torchrun --nproc_per_node=8 train.py     # or: python -m torch.distributed.launch --nproc_per_node=8 train.py
    python train.py --resume auto --output RUN_FOLDER
"""
from model import CONFIG, VARIANTS

from msvit.training.train import main

if __name__ == "__main__":
    main(CONFIG, VARIANTS)
