"""Image classification as a LightningModule.

The task owns loss, metrics, optimizer and schedule; it receives an already-built timm model
and never touches files (the DataModule does).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .compiling import maybe_compile
from .optim import configure_optimizers


class ClassificationTask(L.LightningModule):
    """Supervised classification with label smoothing, optional Mixup/CutMix and top-1/top-5.

    Logs ``train/loss``, ``train/lr``, ``val/loss``, ``val/acc1``, ``val/acc5`` (and ``test/*``). Evaluation values
    are means over samples (loss) and counts (accuracy), summed across DDP processes by torchmetrics, so with the
    loaders' unpadded evaluation shards they equal the single-process values.
    ``optimizer`` holds ``create_optimizer_v2`` kwargs; ``scheduler`` holds the warm-up + cosine
    settings (see :func:`visionzoo.tasks.optim.build_scheduler`); ``mixup`` holds timm ``Mixup``
    kwargs or is ``None``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = maybe_compile(model, compile)
        self.num_classes = num_classes
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})
        self.mixup_fn = self._build_mixup(mixup, num_classes, label_smoothing)
        # Mixup produces soft targets that already carry the smoothing.
        self.train_criterion: torch.nn.Module = (
            SoftTargetCrossEntropy()
            if self.mixup_fn is not None
            else torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        )
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.top_k = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=self.top_k, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=self.top_k, average="micro")

    @staticmethod
    def _build_mixup(cfg: dict[str, Any] | None, num_classes: int, smoothing: float) -> Mixup | None:
        if not cfg:
            return None
        cfg = dict(cfg)
        if (
            cfg.get("mixup_alpha", 0) <= 0
            and cfg.get("cutmix_alpha", 0) <= 0
            and not cfg.get("cutmix_minmax")
        ):
            return None
        return Mixup(num_classes=num_classes, label_smoothing=smoothing, **cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mixup_fn is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup_fn(images, targets)
            loss = self.train_criterion(self(images), targets)
        elif self.mixup_fn is not None:  # odd last batch: timm Mixup needs pairs
            loss = F.cross_entropy(self(images), targets, label_smoothing=self.hparams.label_smoothing)
        else:
            loss = self.train_criterion(self(images), targets)
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        if self._trainer is not None and self._trainer.optimizers:
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False
            )
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        # per-sample sums, so the epoch value is the mean over samples whatever the batching or number of processes
        images, targets = batch
        logits = self(images)
        getattr(self, f"{stage}_loss").update(F.cross_entropy(logits, targets, reduction="none"))
        getattr(self, f"{stage}_acc1").update(logits, targets)
        if self.num_classes >= 5:  # top-5 is meaningless with fewer classes
            getattr(self, f"{stage}_acc5").update(logits, targets)
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_epoch=True, prog_bar=stage == "val")
        self.log(f"{stage}/acc1", getattr(self, f"{stage}_acc1"), on_epoch=True, prog_bar=stage == "val")
        if self.num_classes >= 5:
            self.log(f"{stage}/acc5", getattr(self, f"{stage}_acc5"), on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).softmax(dim=-1)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self.model, self.trainer, self.optimizer_cfg, self.scheduler_cfg)
