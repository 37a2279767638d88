"""Stopping a run: SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) on any process stops every process after the same
optimizer update.

Schedulers (SLURM, Kubernetes, torchrun's agent) announce the end of a job with SIGTERM (SLURM can send
SIGUSR1 earlier with `--signal`) and kill it some seconds later (30 s by default for SLURM and torchrun).
The handler only sets a flag; after each update the processes agree on it with one small all-reduce, so
that they stop together, rank 0 writes a checkpoint holding the position inside the epoch, and the run
exits with EXIT_PREEMPTED for the scheduler to requeue it, or EXIT_INTERRUPTED after a Ctrl-C (a person
stopped it: a scheduler should not requeue it). The same signal a second time ends the process at once
(Ctrl-C: a KeyboardInterrupt; the checkpoint on disk is the previous complete one, as writes are atomic); another
kind of signal (torchrun's agent sends SIGTERM after the terminal's SIGINT) only confirms the stop.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from ..errors import EXIT_INTERRUPTED  # 128 + SIGINT: what a shell reports for a program ended by Ctrl-C

__all__ = ["EXIT_PREEMPTED", "EXIT_INTERRUPTED", "STOP_SIGNALS", "Preempted", "StopRequest"]

EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: a temporary failure, to be retried
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's; SIGINT (Ctrl-C) is caught as well
_CAUGHT = (*STOP_SIGNALS, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after writing its checkpoint; `message` says where and how to resume,
    `exit_code` is the process's exit status (EXIT_PREEMPTED, or EXIT_INTERRUPTED after a Ctrl-C)."""

    def __init__(self, message: str, exit_code: int = EXIT_PREEMPTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Catches STOP_SIGNALS and SIGINT while installed (a context manager); `agreed()` says whether any process
    got one."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        elif signum == self.signal:  # the same signal again: stop now, as without this handler
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in _CAUGHT:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        if self.signal is None:
            return "a signal on another process"
        return "Ctrl-C (SIGINT)" if self.signal == signal.SIGINT else signal.Signals(self.signal).name

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal == signal.SIGINT else EXIT_PREEMPTED

    def agreed(self, device: torch.device) -> bool:
        """True on every process when any process has been signalled (a collective: call it on all ranks)."""
        local = self.signal is not None
        if not (dist.is_available() and dist.is_initialized()):
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
