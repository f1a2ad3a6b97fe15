"""A data order that is a pure function of (seed, epoch) and can restart at any batch.

Resume is bit-exact only if the resumed run sees exactly the batches the uninterrupted run would have seen and
the global RNG (dropout, ...) is consumed identically. So: the permutation comes from its own generator seeded
from (seed, epoch); the DataLoader gets its own generator too (creating an iterator would otherwise draw from the
global RNG); and workers are seeded from that generator, never from the clock.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (same on every platform and Python version)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation of range(n) for one epoch, starting at batch `start_batch`."""

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        for b in range(self.start_batch, self.batches_per_epoch):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def _seed_worker(worker_id: int) -> None:
    # torch already seeded this worker from the loader's generator; extend that to Python and numpy.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def train_loader(dataset, *, batch_size: int, seed: int, epoch: int, start_batch: int, num_workers: int,
                 pin_memory: bool = False) -> DataLoader:
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch, start_batch=start_batch)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(derive_seed(seed, epoch, "loader")),
                      worker_init_fn=_seed_worker if num_workers else None)


def val_loader(dataset, *, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_seed_worker if num_workers else None)
