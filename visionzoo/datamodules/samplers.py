"""Samplers whose output is a function of ``(seed, epoch, process)`` only, so resumed and DDP runs are exact.

* :class:`EpochSampler` (base of the training samplers): the epoch's order comes from ``seed + epoch``, not from the
  global RNG; each process takes its own share of it (so Lightning keeps the sampler under DDP instead of wrapping it);
  it can start mid-epoch (:meth:`EpochSampler.start_at`); every index it yields is a :class:`SeededIndex` carrying the
  seed of that draw, with which :class:`SeededDataset` seeds the augmentation of that one sample.
* :class:`EvalShardSampler`: evaluation order, split into contiguous, unpadded shards of whole batches, so under DDP
  every sample is evaluated exactly once, in the batch it has in one process, and the shards concatenated in rank
  order are the single-process order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..errors import ConfigError


def process_share() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the default process group, ``(0, 1)`` outside DDP."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def draw_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (e.g. ``seed, epoch, position``): stable across processes and Python runs."""
    key = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class SeededIndex(int):
    """A dataset index that carries the seed of its draw.

    The DataLoader hands sampler items to the workers unchanged, and persistent workers never see ``set_epoch``,
    so the draw's seed must travel with the index. Being an ``int``, it indexes any dataset and compares like one.
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return SeededIndex, (int(self), self.seed)


class SeededDataset(Dataset):
    """Runs ``dataset[index]`` with torch (CPU), numpy and ``random`` seeded from the index's :class:`SeededIndex` seed.

    Augmentation then depends on ``(seed, epoch, position)`` only, not on the worker, the number of workers or where
    a run was resumed. Datasets that keep their own generators derive them from ``torch.initial_seed()`` (e.g. the
    segmentation datasets' albumentations pipelines), which this seeding sets. The states are not restored
    afterwards (numpy's save and restore alone would cost 90 us a sample): with ``num_workers=0`` the training
    process's draws are reseeded before each batch anyway (:class:`visionzoo.callbacks.BatchSeed`).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes (pids, transform, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        seed = getattr(index, "seed", None)
        if seed is not None:
            torch.default_generator.manual_seed(
                seed
            )  # CPU only: torch.manual_seed also visits every accelerator
            random.seed(seed)
            np.random.seed(seed % 2**32)
        return self.dataset[int(index)]


class EpochSampler(DistributedSampler):
    """Base of the training samplers: per-epoch order from ``(seed, epoch)``, this process's share, mid-epoch start.

    A subclass implements :meth:`epoch_order` (the order over all processes). :attr:`chunk` consecutive indices
    stay together when the order is shared out (a PK batch); every process gets the same number of chunks (the
    order is cycled to fill the last round), so the processes stay in step. A ``DistributedSampler`` subclass, so
    Lightning calls :meth:`set_epoch` on it directly instead of replacing it under DDP.
    """

    chunk: int = 1

    def __init__(self, num_samples: int, seed: int = 0) -> None:  # noqa: D107 (DistributedSampler's init not used)
        self.num_samples_total = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self.rank, self.num_replicas = process_share()
        self._start = 0

    def epoch_order(self, epoch: int) -> list[int]:
        """Every process's indices of ``epoch``, in order."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each training epoch; a pending mid-epoch start is kept for the same epoch."""
        if int(epoch) != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    def start_at(self, epoch: int, skip: int) -> None:
        """Make the next iteration yield ``epoch``'s share from its ``skip``-th index on (a mid-epoch resume)."""
        self.epoch, self._start = int(epoch), int(skip)

    def _share(self) -> list[tuple[int, int]]:
        """``(position in the epoch order, index)`` of this process's share of the current epoch."""
        order = self.epoch_order(self.epoch)
        if self.num_replicas == 1 or not order:
            return list(enumerate(order))
        k = self.chunk
        chunks = [list(range(i, min(i + k, len(order)))) for i in range(0, len(order), k)]
        rounds = -(-len(chunks) // self.num_replicas)
        chunks = [chunks[i % len(chunks)] for i in range(rounds * self.num_replicas)]
        return [(p, order[p]) for c in chunks[self.rank :: self.num_replicas] for p in c]

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0  # a mid-epoch start applies to one iteration
        epoch = self.epoch
        for position, index in self._share()[start:]:
            yield SeededIndex(index, draw_seed(self.seed, epoch, position))

    def __len__(self) -> int:
        return len(self._share())


class EpochShuffleSampler(EpochSampler):
    """A random permutation per epoch drawn from ``seed + epoch``, not from the global RNG."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        super().__init__(num_samples, seed)
        self.num_samples = num_samples  # the name tests and DistributedSampler users read

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples_total, generator=generator).tolist()

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.num_samples_total
        return -(-self.num_samples_total // self.num_replicas)


class EvalShardSampler(DistributedSampler):
    """File order, cut into ``world_size`` contiguous, unpadded shards of whole batches.

    Lightning's own DDP sampler pads the last round with repeated samples, which then count twice in every metric.
    Here each sample is evaluated once; and since a shard is a run of the single-process batches, every batch --
    hence every feature, to the bit -- is what one process computes, and gathering per-rank results in rank order
    restores the single-process order (Re-ID ranking breaks distance ties by gallery order). A set with fewer
    batches than processes is cut per sample instead; one with fewer samples than processes is refused (a process
    without a batch would never join the metrics' synchronisation).
    """

    def __init__(self, num_samples: int, batch_size: int = 1) -> None:  # noqa: D107
        self.rank, self.num_replicas = process_share()
        self.num_samples_total = n = int(num_samples)
        self.epoch, self.seed, self.shuffle, self.drop_last = 0, 0, False, False
        w, r = self.num_replicas, self.rank
        if n < w:
            raise ConfigError(
                f"an evaluation set of {n} samples cannot be split over {w} processes without repeating samples; "
                "evaluate it on fewer devices."
            )
        unit = batch_size if -(-n // batch_size) >= w else 1
        units = -(-n // unit)
        self.begin, self.end = min(n, r * units // w * unit), min(n, (r + 1) * units // w * unit)
        self.num_samples = self.end - self.begin

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.num_samples
