"""Process groups from the launcher's environment (torchrun or torch.distributed.launch), sharding and
reductions. A single process without launcher variables runs as rank 0 of 1."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "all_reduce_sum", "broadcast_buffers", "barrier",
           "main_process_first", "cleanup", "set_threads"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK and join the process group (NCCL on CUDA, gloo on CPU).

    `device` forces 'cpu' or 'cuda'; by default CUDA is used when available.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # torchrun's agent keeps its store across worker restarts: without a prefix per attempt, restarted
        # workers may read the addresses their dead predecessors published and fail to connect
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if use_cuda else "gloo", store=dist.PrefixStore(f"attempt{attempt}", store),
                                rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, local_rank, dev)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank. DDP broadcasts them before each
    training forward, so after the last one every rank holds its own statistics; evaluating with
    those would measure a different model on each shard than the one rank 0 saves."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a one-off dataset conversion on disk), the others after it."""
    if not env.is_main:
        barrier()
    try:
        yield
    finally:
        if env.is_main:
            barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (the `threads` setting); None keeps torch's default (one per
    core, or OMP_NUM_THREADS). More threads than free cores (other jobs, several processes per machine) slow a
    run down many times over, and the thread count changes the order of floating-point sums, so results differ
    between thread counts (docs/training.md, 'Threads and reproducibility on CPU')."""
    if threads is not None:
        torch.set_num_threads(threads)
