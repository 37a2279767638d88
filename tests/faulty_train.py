"""digits/train.py with one fault injected on the first attempt of a run, for the preemption and elastic tests.

    FAULT=SIGTERM|SIGUSR1|SIGKILL FAULT_RANK=1 FAULT_UPDATE=12 python faulty_train.py [train.py options]

The process of rank FAULT_RANK sends itself the signal right after its optimizer update number FAULT_UPDATE,
counted from the start of the process, unless torchrun has already restarted the workers. The in-process
tests use `with_fault` directly.
"""
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import msvit.training.train

DIGITS = Path(__file__).resolve().parents[1] / "digits"


def with_fault(create_optimizer: Callable, update: int, action: Callable[[], None]) -> Callable:
    """`create_optimizer` whose optimizers call `action()` right after their update number `update`."""
    def create(*args, **kwargs):
        optimizer = create_optimizer(*args, **kwargs)
        count = 0

        def after_step(opt, step_args, step_kwargs):
            nonlocal count
            count += 1
            if count == update:
                action()

        optimizer.register_step_post_hook(after_step)
        return optimizer
    return create


if __name__ == "__main__":
    signum = getattr(signal, os.environ["FAULT"])
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if os.environ.get("RANK", "0") == os.environ.get("FAULT_RANK", "0") and first_attempt:
        msvit.training.train.create_optimizer_v2 = with_fault(msvit.training.train.create_optimizer_v2, int(os.environ["FAULT_UPDATE"]),
                                                     lambda: os.kill(os.getpid(), signum))
    sys.path.insert(0, str(DIGITS))
    from model import CONFIG, VARIANTS  # digits/model.py

    msvit.training.train.main(CONFIG, VARIANTS)
