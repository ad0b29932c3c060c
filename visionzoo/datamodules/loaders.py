"""The train/val/test/predict loaders every DataModule shares, and the training position kept in checkpoints.

* **Training** loaders draw their order from an :class:`~visionzoo.datamodules.samplers.EpochSampler` (a function of
  ``(shuffle_seed, epoch)``, this process's share under DDP) and seed each sample's augmentation from its draw
  (:class:`~visionzoo.datamodules.samplers.SeededDataset`), so the batches of a step never depend on workers, on
  the global RNG or on where the run was resumed.
* **Resuming** (:class:`TrainPositionMixin`): the DataModule's checkpoint state is the training position (epoch,
  batches already trained in it), read from Lightning's loop counters when the checkpoint is written. Lightning
  restores a DataModule before the model's ``configure_optimizers`` runs -- which builds the train loader (the
  schedule needs its length) before Lightning's own loop state is back -- so the first train loader starts
  exactly where the checkpoint stopped, mid-epoch included.
* **Evaluation** loaders keep file order and, under DDP, give each process a contiguous unpadded shard
  of whole batches (:class:`~visionzoo.datamodules.samplers.EvalShardSampler`): no sample is evaluated twice, and
  each in the batch it has in one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from .samplers import EpochSampler, EpochShuffleSampler, EvalShardSampler, SeededDataset, process_share

#: Lightning's warning for mid-epoch checkpoints whose loader lacks ``state_dict``; these loaders resume exactly
_NOT_RESUMABLE = r"You're resuming from a checkpoint that ended before the epoch ended"


def training_position(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches of it already trained)`` a run resumed from a checkpoint written now continues at.

    Mirrors how Lightning 2.6 restarts from its counters: a checkpoint written in an epoch-end hook, or after the
    epoch's last batch, continues with the next epoch; one written mid-epoch (``every_n_train_steps``, a
    ``max_steps`` stop, SIGTERM) continues with the next batch of the same epoch.
    """
    epochs = trainer.fit_loop.epoch_progress.current
    batches = trainer.fit_loop.epoch_loop.batch_progress
    epoch = int(epochs.completed)
    if epochs.processed > epochs.completed:  # on_train_epoch_end: the epoch already counts as processed
        return epoch + 1, 0
    if epochs.started == epochs.completed:  # before the epoch's first batch
        return epoch, 0
    if batches.is_last_batch:  # Lightning closes the epoch when it restores this checkpoint
        return epoch + 1, 0
    return epoch, int(batches.current.ready)


class TrainPositionMixin:
    """DataModule state: where training stands, so a resumed run's first train loader starts at the next batch."""

    trainer: Any
    _resume_position: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {"train_position": list(training_position(trainer))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        if position is None:
            return
        self._resume_position = (int(position[0]), int(position[1]))
        if self._resume_position[1]:  # Lightning only knows loaders with a state_dict as resumable
            warnings.filterwarnings("ignore", message=_NOT_RESUMABLE)

    def _train_start(self) -> tuple[int, int]:
        """``(epoch, batches to skip)`` for a new train loader: a restored position once, else Lightning's epoch."""
        position, self._resume_position = self._resume_position, None
        if position is not None:
            return position
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        # Lightning sets the sampler epoch only after it has created (and, with workers, pre-fetched) the iterator
        return int(trainer.fit_loop.epoch_progress.current.processed), 0


def train_loader(
    datamodule: TrainPositionMixin,
    dataset: Dataset,
    sampler: EpochSampler,
    *,
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A training loader positioned where ``datamodule`` says training stands (see :class:`TrainPositionMixin`)."""
    epoch, batches = datamodule._train_start()
    sampler.start_at(epoch, batches * batch_size)
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """File order (a plain ``SequentialSampler`` in one process); under DDP this process's shard of whole batches."""
    distributed = process_share()[1] > 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalShardSampler(len(dataset), batch_size) if distributed else None,  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )


class SplitLoadersMixin(TrainPositionMixin):
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
        if train:
            return train_loader(
                self,
                dataset,
                EpochShuffleSampler(len(dataset), seed=self.shuffle_seed),  # type: ignore[arg-type]
                batch_size=self.batch_size,
                drop_last=len(dataset) > self.batch_size,  # type: ignore[arg-type]  # keep a tiny set's only batch
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
        return eval_loader(
            dataset,
            batch_size=self._eval_batch_size(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=self._eval_collate(),
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
