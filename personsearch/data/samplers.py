"""Samplers whose order is a pure function of (seed, epoch): exact resume, identical DDP shards.

`EpochSampler` yields `(index, seed, epoch)` keys: a dataset that accepts such a key draws its
augmentation from `np.random.default_rng((seed, epoch, index))`, so a sample looks the same
whatever the number of workers or ranks and whether the run was interrupted or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int, int]  #: (dataset index, seed, epoch)


class EpochSampler(Sampler[SampleKey]):
    """Shuffled training order for one rank; whole global batches only.

    Each epoch is a permutation drawn from a generator seeded with (seed, epoch); it is cut to
    a multiple of the global batch, and rank r takes its slice of every global batch, so all
    ranks see the same number of batches. `set_epoch(epoch, start_batch)` skips batches already
    trained before an interruption.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} ranks")
        if size < batch_size:
            raise ValueError(f"{size} samples are fewer than one batch of {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's global order of indices (before sharding)."""
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[SampleKey]:
        order = self.order(self.epoch)[: self.batches_per_epoch * self.batch_size]
        batches = order.view(self.batches_per_epoch, self.world_size, self.local_batch)
        mine = batches[self.start_batch :, self.rank].reshape(-1)
        for index in mine.tolist():
            yield (index, self.seed, self.epoch)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch


class ShardSampler(Sampler[int]):
    """Evaluation order for one rank: indices rank, rank + W, ... (no padding, no repeats)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
