"""The train/val/test/predict loaders every DataModule shares.

Training order comes from :class:`EpochShuffleSampler` (a function of ``(shuffle_seed, epoch)`` only, so resumed
runs see the same batches); evaluation keeps file order. Subclasses choose the evaluation batch size and collate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from .samplers import EpochShuffleSampler


class SplitLoadersMixin:
    """Loaders over ``train_dataset`` / ``val_dataset`` / ``test_dataset`` built by ``setup(stage)``."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    shuffle_seed: int

    def _eval_batch_size(self) -> int:
        return self.batch_size

    def _eval_collate(self) -> Callable[[list[Any]], Any] | None:
        return None

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self._eval_batch_size(),
            sampler=EpochShuffleSampler(len(dataset), seed=self.shuffle_seed) if train else None,
            shuffle=False if train else None,
            drop_last=train and len(dataset) > self.batch_size,  # keep the only batch of a tiny set
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=None if train else self._eval_collate(),
        )

    def _dataset(self, name: str, stage: str) -> Dataset:
        if getattr(self, name) is None:
            self.setup(stage)  # type: ignore[attr-defined]
        return getattr(self, name)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("train_dataset", "fit"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val_dataset", "validate"), train=False)

    def test_dataloader(self) -> DataLoader:
        """The test split when the dataset has one, else the validation split."""
        return self._loader(self._dataset("test_dataset", "test"), train=False)
