"""Evaluate a checkpoint on the dvs128-gesture validation set: `python test.py --checkpoint PATH [--json]`."""
from model import CONFIG, VARIANTS

from msvit.training.evaluate import main

if __name__ == "__main__":
    main(CONFIG, VARIANTS)
