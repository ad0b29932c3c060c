"""Lightning callbacks that give every run the same outputs: seeding, resumable checkpoints, curves, pictures."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .datamodules.samplers import draw_seed


class BatchSeed(L.Callback):
    """Re-seed torch, numpy and ``random`` before every training batch from ``(seed, epoch, batch, rank)``.

    Lightning does not restore the global RNG on resume, so dropout, drop-path and Mixup draws would diverge after
    a restart. Seeding each batch from its position makes a run resumed at any batch draw what an uninterrupted run
    draws there (the data's own randomness is seeded per sample, see :mod:`visionzoo.datamodules.samplers`).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = draw_seed("batch", self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class ResumableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` (the ``last.ckpt`` one) that also saves where a run stops early, as a mid-epoch checkpoint.

    * **``max_steps`` or ``trainer.should_stop`` mid-epoch**: saved at that batch's end. Lightning would save in
      ``on_train_epoch_end`` only, after counting the partial epoch as done, so resuming with more epochs skipped the
      rest of the epoch (or stopped at once with "max_epochs reached"); saved here, the resumed run continues with
      the next batch.
    * **SIGTERM** (a pre-empted or killed job; single process only): saved after the batch Lightning stops at.
      Under DDP the ranks may stop at different batches, so only the periodic checkpoints can be trusted there.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stops = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if stops and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save_now(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and trainer.training and trainer.world_size == 1:
            self._save_now(trainer)

    def _save_now(self, trainer: L.Trainer) -> None:
        if self._last_global_step_saved == trainer.global_step or trainer.sanity_checking:
            return
        self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))


class TrainingCurves(L.Callback):
    """Collect epoch-level metrics and draw them as a PNG in the run directory after each epoch."""

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def _record(self, trainer: L.Trainer, prefixes: tuple[str, ...]) -> None:
        for key, value in trainer.callback_metrics.items():
            if not key.startswith(prefixes) or key.endswith("_step") or "lr" in key:
                continue
            if key.count("/") > 1:  # per-class values (val/IoU/<class>): too many lines for one panel
                continue
            name = key.removesuffix("_epoch")
            points = self.history[name]
            if points and points[-1][0] == trainer.current_epoch:
                points[-1] = (trainer.current_epoch, float(value))
            else:
                points.append((trainer.current_epoch, float(value)))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, ("train/",))
        self._record(trainer, ("val/",))
        self.draw(Path(trainer.default_root_dir) / self.filename)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, ("val/",))

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = defaultdict(list, {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()})

    @rank_zero_only
    def draw(self, path: Path) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        losses = sorted(k for k in self.history if k.endswith("loss"))
        others = sorted(k for k in self.history if not k.endswith("loss"))
        panels = [p for p in (losses, others) if p]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, keys, title in zip(axes[0], panels, ("loss", "metrics"), strict=False):
            for key in keys:
                epochs, values = zip(*self.history[key], strict=True)
                ax.plot(epochs, values, marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)


class SegmentationOverlays(L.Callback):
    """Each validation epoch, save a grid of image / ground truth / prediction overlays.

    Rows are the first ``num_images`` validation images; columns the image, the ground-truth overlay and the
    predicted overlay (at the network resolution; tiles under ``min_size`` px high are enlarged). Written to ``<run dir>/<dirname>/epoch_XXX.png`` and, when a
    TensorBoardLogger is attached, as the image ``val/overlays``. Does nothing for tasks other than
    segmentation (so it can sit in the default callbacks). Predictions come from the ``"preds"`` entry that
    :class:`~visionzoo.tasks.SegmentationTask`'s ``validation_step`` returns.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        alpha: float = 0.5,
        dirname: str = "val_overlays",
        min_size: int = 128,
    ) -> None:
        self.num_images = num_images
        self.min_size = min_size
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.alpha = alpha
        self.dirname = dirname
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return (
            getattr(pl_module, "task", None) == "segmentation"
            and not trainer.sanity_checking
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if len(self._rows) >= self.num_images or not self._active(trainer, pl_module):
            return
        if not isinstance(outputs, dict) or "preds" not in outputs or not isinstance(batch, dict):
            return
        for image, mask, pred in zip(batch["image"], batch["mask"], outputs["preds"]):
            if len(self._rows) >= self.num_images:
                break
            self._rows.append((image.detach().cpu(), mask.detach().cpu(), pred.detach().cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows or not self._active(trainer, pl_module):
            return
        grid = self.make_grid(pl_module)
        self._rows = []
        self._save(trainer, grid)

    def make_grid(self, pl_module: L.LightningModule) -> np.ndarray:
        """The ``H×W×3`` uint8 grid: one row per kept image (image | ground truth | prediction), 4 px gaps."""
        from .overlays import denormalize, overlay, to_rgb

        cfg = getattr(pl_module, "data_config", None) or {}
        k = int(pl_module.num_classes)
        ignore = getattr(pl_module, "ignore_index", None)
        rows = []
        for image, mask, pred in self._rows:
            picture = denormalize(image, cfg.get("mean"), cfg.get("std"), cfg.get("normalize", "mean_std"))
            picture = to_rgb(picture, cfg.get("color_space", "RGB"))
            clear_bg = (
                bool(getattr(pl_module, "has_background", False)) or k <= 2
            )  # class 0 "background" uncoloured
            tiles = [
                picture,
                overlay(picture, mask, k, self.alpha, ignore, clear_bg),
                overlay(picture, pred, k, self.alpha, ignore, clear_bg),
            ]
            scale = -(-self.min_size // picture.shape[0])  # small inputs (e.g. 64 px) are enlarged, nearest
            if scale > 1:
                tiles = [t.repeat(scale, axis=0).repeat(scale, axis=1) for t in tiles]
            rows.append(np.concatenate(_with_gaps(tiles, axis=1), axis=1))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        return np.concatenate(_with_gaps(rows, axis=0), axis=0)

    @rank_zero_only
    def _save(self, trainer: L.Trainer, grid: np.ndarray) -> None:
        from PIL import Image

        path = Path(trainer.default_root_dir) / self.dirname / f"epoch_{trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/overlays", grid, trainer.global_step, dataformats="HWC")


def _with_gaps(tiles: list[np.ndarray], axis: int, gap: int = 4) -> list[np.ndarray]:
    """Interleave white strips between ``tiles`` along ``axis`` (1: side by side, 0: stacked)."""
    out: list[np.ndarray] = []
    for i, tile in enumerate(tiles):
        if i:
            shape = list(tile.shape)
            shape[axis] = gap
            out.append(np.full(shape, 255, dtype=np.uint8))
        out.append(tile)
    return out


class FreezeSubmodule(L.Callback):
    """Keep ``model.<submodule>`` frozen for the first ``epochs`` epochs, then train it.

    Used for QTSeg's recipe (the pretrained encoder is frozen while the official 1-based epoch
    counter is below 50, i.e. for 49 epochs). Gradients are switched off rather than the
    parameters removed from the optimizer, as the official code does: the optimizer keeps every
    parameter and AdamW skips those without a gradient, so the LR schedule is shared by all.
    """

    def __init__(self, submodule: str = "encoder", epochs: int = 49) -> None:
        self.submodule = submodule
        self.epochs = epochs

    def _target(self, pl_module: L.LightningModule) -> torch.nn.Module:
        model = getattr(pl_module, "model", pl_module)
        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        target = model.get_submodule(self.submodule) if self.submodule else model
        return target

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for param in self._target(pl_module).parameters():
            param.requires_grad_(not frozen)
