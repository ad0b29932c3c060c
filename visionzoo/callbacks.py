"""Lightning callbacks that give every run the same outputs: curves, seeding, summaries."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only


class EpochSeed(L.Callback):
    """Re-seed every RNG at the start of each training epoch from ``(seed, epoch)``.

    Lightning does not restore the global RNG state on resume, so augmentation and drop-path
    draws would diverge after a restart. Seeding per epoch makes a run stopped at an epoch
    boundary and resumed end with exactly the weights of an uninterrupted run.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch * 7_919 + trainer.global_rank) % (2**31)
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)


class TrainingCurves(L.Callback):
    """Collect epoch-level metrics and draw them as a PNG in the run directory after each epoch."""

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def _record(self, trainer: L.Trainer, prefixes: tuple[str, ...]) -> None:
        for key, value in trainer.callback_metrics.items():
            if not key.startswith(prefixes) or key.endswith("_step") or "lr" in key:
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
