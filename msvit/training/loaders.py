"""DataLoaders and samplers of the training and evaluation loops.

Training is resumable at any batch: `SeededSamples` makes each sample's augmentation a function of (seed,
epoch, index) alone, whichever worker or rank loads it, and `ResumableSampler` starts an epoch's shuffled
order after a given number of samples. Together they let a run stopped mid-epoch continue with exactly the batches, and
the augmented images, that an uninterrupted run would have seen.
Evaluation: every process evaluates its own shard, each sample exactly once (`ShardSampler`).
"""
from __future__ import annotations

import random
import signal
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data import check_eval_split
from .distributed import DistEnv

__all__ = ["derived_seed", "seed_host_generators", "seed_everything", "SeededSamples", "ResumableSampler", "ShardSampler", "make_loader",
           "ignore_sigint", "build_train_loader", "build_eval_loader"]

_SAMPLE_STREAM = 0x5A3D1E  # keeps the samples' seeds apart from the training steps' (same seed, epoch, number)


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a few integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([k % 2**32 for k in keys] + [len(keys)]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_host_generators(seed: int) -> None:
    """Seed python's, numpy's and torch's CPU generators (about 15 us, where torch.manual_seed takes 100)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators, CUDA's included."""
    seed_host_generators(seed)
    torch.cuda.manual_seed_all(seed)  # lazy: nothing happens before CUDA is initialised


class SeededSamples(Dataset):
    """`dataset` whose item `i` is drawn with the global generators seeded from (seed, epoch, i): random
    augmentations no longer depend on which worker loads a sample, or on what was loaded before it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:  # before the epoch's iterator starts its workers
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed_host_generators(derived_seed(_SAMPLE_STREAM, self.seed, self.epoch, index))
        return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch can start after the first `start_sample` samples of its shuffled order, counted
    over all processes. With the geometry of the stopped run (batch size, process count) each process continues its
    own share at its next batch, exactly; with another (a job requeued on other GPUs) the processes share the rest
    of the order, so the epoch still trains each sample once."""

    def __init__(self, dataset: Dataset, env: DistEnv, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
        self.batch_size, self.start_sample = batch_size, 0

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: int | None = None) -> None:
        """Start `epoch` at this geometry's batch `start_batch`, or after `start_sample` samples of its order."""
        super().set_epoch(epoch)
        self.start_sample = start_batch * self.batch_size * self.num_replicas if start_sample is None else start_sample

    def _rest(self) -> list[int]:
        """The epoch's order (DistributedSampler's: a seeded permutation repeated up to `total_size`) after
        `start_sample`, padded likewise to a multiple of the process count: every process gets as many batches."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        rest = (order * -(-self.total_size // len(order)))[self.start_sample:self.total_size]
        padded = len(rest) + (-len(rest)) % self.num_replicas
        return (rest * -(-padded // len(rest)))[:padded] if rest else []

    def __iter__(self) -> Iterator[int]:
        return iter(self._rest()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        remaining = max(self.total_size - self.start_sample, 0)
        return -(-remaining // self.num_replicas)


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
    """A DataLoader with the run's worker count and memory pinning (CUDA only); its workers ignore Ctrl-C."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["workers"],
                      pin_memory=cfg["pin_mem"] and env.device.type == "cuda", drop_last=drop_last,
                      # fresh workers each epoch take their seeds from the reseeded main process
                      persistent_workers=False, worker_init_fn=ignore_sigint)


def ignore_sigint(worker_id: int) -> None:
    """A DataLoader worker's start: Ctrl-C reaches the terminal's whole process group, workers included; they
    leave it to the main process, which finishes the update, saves and stops them (else a worker that quits
    on it breaks the batch the main process is waiting for)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_loader(dataset: SeededSamples, cfg: dict[str, Any], env: DistEnv) -> DataLoader:
    """Shuffled full batches of this process's share; `loader.sampler.set_epoch(epoch, start_batch)` and
    `loader.dataset.set_epoch(epoch)` before each epoch."""
    sampler = ResumableSampler(dataset, env, cfg["seed"], cfg["batch_size"])
    return make_loader(dataset, cfg, env, cfg["batch_size"], sampler, drop_last=True)


def build_eval_loader(dataset: Dataset, cfg: dict[str, Any], env: DistEnv) -> DataLoader:
    """Each process evaluates its own shard; every sample is counted exactly once. A split that is empty or
    smaller than the number of processes is a DataError (`msvit.data.check_eval_split`)."""
    check_eval_split(dataset, cfg, env.world_size)
    batch = cfg["val_batch_size"] or cfg["batch_size"]
    return make_loader(dataset, cfg, env, batch, ShardSampler(len(dataset), env.rank, env.world_size), False)
