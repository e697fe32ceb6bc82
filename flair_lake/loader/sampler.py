"""Batch samplers: shuffled per epoch, disjoint per rank for DDP."""

from __future__ import annotations

import math

import numpy as np
import torch


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yield lists of dataset indices, reshuffled every epoch and split disjointly across ranks.

    Every rank draws the same seeded permutation of ``seed + epoch`` and takes its own strided slice, so ranks
    read disjoint samples; the permutation is padded by wrapping around (as torch's DistributedSampler) so that
    every rank has the same number of batches. Call :meth:`set_epoch` before each epoch.

    Args:
        n: dataset length.
        batch_size: samples per batch.
        shuffle: permute every epoch; else the natural order.
        rank, world_size: this process and the number of processes.
        seed: base seed, shared by all ranks.
        drop_last: drop the rank's last incomplete batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 seed: int = 0, drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.rank, self.world_size, self.seed, self.drop_last = rank, world_size, seed, drop_last
        self.epoch = 0
        self.per_rank = math.ceil(n / world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next permutation."""
        self.epoch = epoch

    def rank_indices(self) -> np.ndarray:
        """Return this rank's sample indices for the current epoch."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle \
            else np.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:  # wrap around so every rank gets the same count
            order = np.concatenate([order, order[: total - self.n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        idx = self.rank_indices()
        for s in range(0, len(idx), self.batch_size):
            batch = idx[s:s + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)
