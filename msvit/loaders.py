"""DataLoaders and samplers of the training and evaluation loops.

Evaluation: every process evaluates its own shard, each sample exactly once (`ShardSampler`).
"""
from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import DistEnv

__all__ = ["ShardSampler", "make_loader", "build_eval_loader"]


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`, in order: each sample is evaluated by exactly one
    process, with no padding (DistributedSampler would repeat samples to even out the shards)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, cfg: dict[str, Any], env: DistEnv, batch_size: int, sampler: Sampler,
                drop_last: bool) -> DataLoader:
    """A DataLoader with the run's worker count and memory pinning (CUDA only)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["workers"],
                      pin_memory=cfg["pin_mem"] and env.device.type == "cuda", drop_last=drop_last,
                      # fresh workers each epoch take their seeds from the reseeded main process
                      persistent_workers=False)


def build_eval_loader(dataset: Dataset, cfg: dict[str, Any], env: DistEnv) -> DataLoader:
    """Each process evaluates its own shard; every sample is counted exactly once."""
    batch = cfg["val_batch_size"] or cfg["batch_size"]
    return make_loader(dataset, cfg, env, batch, ShardSampler(len(dataset), env.rank, env.world_size), False)
