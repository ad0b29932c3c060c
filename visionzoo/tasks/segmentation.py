"""Semantic segmentation as a LightningModule.

The task takes a segmenter -- any module mapping ``B×C×H×W`` images to ``B×K×H×W`` logits at the input size: a
zoo segmenter (``pretrained_cfg['task'] == 'segmentation'``) or a classifier backbone wrapped with a dense head
(:class:`visionzoo.models.dense.DenseSegmenter`). It owns the loss (:mod:`visionzoo.losses`), the metrics
(:mod:`visionzoo.tasks.seg_metrics`), the inference mode (:mod:`visionzoo.inference`) and the optimizer/schedule
(shared with classification, :mod:`visionzoo.tasks.optim`).

Batches follow the segmentation DataModule contract: train ``{"image", "mask"}``; val/test additionally
``"orig_mask"`` (list of ``h_i×w_i`` masks at the original resolution) and ``"name"``, optionally
``"volume_id"`` / ``"slice_index"``; predict ``{"image", "name", "orig_size"}``.

Metrics are computed at the original resolution: the logits are resized (bilinear) to each ``orig_mask`` before
the argmax. Logged: ``train/loss``, ``train/lr``, ``val/loss``, ``val/mIoU``, ``val/mDice``, ``val/aAcc``,
``val/mAcc`` (means over all classes, background included, mmseg's convention; ``val/loss`` is the mean over images of
each image's loss), ``val/fgIoU`` / ``val/fgDice``
(means over classes 1.. when class 0 is named "background": for binary sets the foreground Dice papers report),
per class ``val/IoU/<class>`` and ``val/Dice/<class>`` (``per_class``), ``val/vDice`` when the batches carry
volume ids, ``val/hd95`` when ``metrics`` asks for ``hd95``; the same under ``test/``. Conventions (NaN-excluded
means, empty masks) are in :mod:`visionzoo.tasks.seg_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from ..errors import ConfigError
from ..inference import build_inferer
from ..losses import build_loss
from .compiling import maybe_compile
from .optim import configure_optimizers
from .seg_metrics import HD95, ConfusionMetrics, VolumeDice, sanitize_class_names


def _nanmean(values: torch.Tensor) -> float:
    keep = ~torch.isnan(values)
    return float(values[keep].mean()) if keep.any() else float("nan")


#: metric names ``metrics`` may list; IoU / Dice / accuracy are always computed, vDice whenever volume ids exist
KNOWN_METRICS = {"miou", "mdice", "aacc", "macc", "iou", "dice", "vdice", "hd95"}


class SegmentationTask(L.LightningModule):
    """Supervised semantic segmentation.

    Args:
        model: the segmenter; ``None`` rebuilds it from ``model_spec`` (how ``load_from_checkpoint`` works).
        num_classes: classes the model predicts, background included.
        class_names: names for the per-class metrics (``val/IoU/<name>``); default the class indices.
        ignore_index: ground-truth label excluded from loss and metrics (e.g. 255), or ``None``.
        loss: :func:`visionzoo.losses.build_loss` config (default cross-entropy).
        aux_weight: weight of the auxiliary head's loss when the model has one (``model.aux_head``).
        optimizer / scheduler: as in :class:`~visionzoo.tasks.ClassificationTask`.
        inference: :func:`visionzoo.inference.build_inferer` config for val/test/predict (default whole image).
        metrics: extra metrics to compute, e.g. ``["hd95"]``.
        per_class: log per-class IoU and Dice.
        model_spec: the dict :func:`visionzoo.models.dense.build_from_spec` rebuilds the model from (stored in the
            checkpoint so ``predict.py`` needs only the ``.ckpt``).
        data_config: ``{"mean", "std", "input_size"}`` the images were normalised with (for pictures and predict).
        compile: ``torch.compile`` the model.
    """

    task = "segmentation"

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        loss: Mapping[str, Any] | str | None = None,
        aux_weight: float = 0.4,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        inference: Mapping[str, Any] | None = None,
        metrics: Sequence[str] | None = None,
        per_class: bool = True,
        model_spec: Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if model is None:
            if model_spec is None:
                raise ValueError("SegmentationTask needs a model or a model_spec to rebuild one.")
            from ..models.dense import build_from_spec

            model = build_from_spec(model_spec, pretrained=False)
        self.model = maybe_compile(model, compile)
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.class_keys = sanitize_class_names(class_names, self.num_classes)
        # class 0 is background (the medical sets): also log foreground-only means, the numbers papers report
        self.has_background = bool(class_names) and str(class_names[0]).strip().lower() in (
            "background",
            "bg",
        )
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})
        self.criterion = build_loss(loss, self.num_classes, self.ignore_index)
        self.aux_weight = float(aux_weight)
        self.inferer = build_inferer(inference)
        self.per_class = bool(per_class)
        requested = {str(m).lower() for m in (metrics or [])}
        unknown = sorted(requested - KNOWN_METRICS)
        if unknown:
            raise ConfigError(
                f"metrics has unknown name(s) {', '.join(unknown)}; expected some of {sorted(KNOWN_METRICS)}."
            )
        self.data_config = dict(data_config or {})

        self.train_loss = MeanMetric()
        for stage in ("val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_cm", ConfusionMetrics(self.num_classes, self.ignore_index))
            setattr(self, f"{stage}_vdice", VolumeDice(self.num_classes, self.ignore_index))
            setattr(
                self,
                f"{stage}_hd95",
                HD95(self.num_classes, self.ignore_index) if "hd95" in requested else None,
            )

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _has_aux(self) -> bool:
        return self.aux_weight > 0 and getattr(self.model, "aux_head", None) is not None

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        if self._has_aux():
            logits, aux = self.model(images, return_aux=True)
            loss = self.criterion(logits, masks) + self.aux_weight * self.criterion(aux, masks)
        else:
            loss = self.criterion(self.model(images), masks)
        self.train_loss(loss.detach())
        self.log(
            "train/loss",
            self.train_loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=images.shape[0],
        )
        if self._trainer is not None and self._trainer.optimizers:
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False
            )
        return loss

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the size of ``images`` with the configured inference mode (whole image or sliding window)."""
        return self.inferer(self.model, images)

    # ---------------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> dict[str, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        logits = self.infer(images).float()
        # one loss per image, averaged over images: the value does not depend on batching or on the DDP split
        losses = torch.stack([self.criterion(logits[i : i + 1], masks[i : i + 1]) for i in range(len(masks))])
        getattr(self, f"{stage}_loss").update(losses)
        loss = losses.mean()
        self.log(
            f"{stage}/loss",
            getattr(self, f"{stage}_loss"),
            on_step=False,
            on_epoch=True,
            prog_bar=stage == "val",
        )
        preds = logits.argmax(dim=1)
        targets = batch.get("orig_mask")
        if targets is None:
            targets = masks
        volume_ids = batch.get("volume_id")
        slice_index = batch.get("slice_index")
        cm, vdice, hd95 = (getattr(self, f"{stage}_{name}") for name in ("cm", "vdice", "hd95"))
        for i in range(len(targets)):
            target = torch.as_tensor(targets[i]).to(self.device, non_blocking=True).long()
            if tuple(target.shape) == tuple(preds.shape[-2:]):
                pred = preds[i]
            else:  # back to the original resolution: bilinear on the logits, then argmax
                pred = F.interpolate(
                    logits[i : i + 1], size=target.shape[-2:], mode="bilinear", align_corners=False
                )
                pred = pred.argmax(dim=1)[0]
            cm.update(pred, target)
            vid = None if volume_ids is None else str(volume_ids[i])
            if vid is not None:
                vdice.update(pred, target, vid)
            if hd95 is not None:
                index = None if slice_index is None else int(slice_index[i])
                hd95.update(pred, target, vid, index)
        return {"loss": loss.detach(), "preds": preds.detach()}

    def _log_epoch(self, stage: str) -> None:
        cm, vdice, hd95 = (getattr(self, f"{stage}_{name}") for name in ("cm", "vdice", "hd95"))
        if not cm.update_called:
            return
        res = cm.compute_metrics()
        out: dict[str, float] = {f"{stage}/{k}": float(res[k]) for k in ("mIoU", "mDice", "aAcc", "mAcc")}
        if self.has_background and self.num_classes > 1:
            out[f"{stage}/fgIoU"] = _nanmean(res["IoU"][1:])
            out[f"{stage}/fgDice"] = _nanmean(res["Dice"][1:])
        if self.per_class:
            for key, iou, dice in zip(
                self.class_keys, res["IoU"].tolist(), res["Dice"].tolist(), strict=True
            ):
                out[f"{stage}/IoU/{key}"] = iou
                out[f"{stage}/Dice/{key}"] = dice
        if vdice.update_called:
            out[f"{stage}/vDice"] = float(vdice.compute())
        if hd95 is not None and hd95.update_called:
            out[f"{stage}/hd95"] = float(hd95.compute())
        prog = {f"{stage}/mIoU", f"{stage}/mDice"} if stage == "val" else set()
        for key, value in out.items():
            # already reduced over all ranks by torchmetrics' compute(); every rank logs the same value
            self.log(key, value, prog_bar=key in prog, sync_dist=False, rank_zero_only=False)
        for metric in (cm, vdice, hd95):
            if metric is not None:
                metric.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per image ``{"name", "mask"}``: class indices (long, CPU) at ``orig_size`` when given."""
        images = batch["image"] if isinstance(batch, Mapping) else batch[0]
        logits = self.infer(images).float()
        names = batch.get("name") if isinstance(batch, Mapping) else None
        sizes = batch.get("orig_size") if isinstance(batch, Mapping) else None
        out = []
        for i in range(images.shape[0]):
            lg = logits[i : i + 1]
            if sizes is not None:
                size = tuple(int(s) for s in sizes[i])
                if size != tuple(lg.shape[-2:]):
                    lg = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)
            out.append({"name": names[i] if names is not None else str(i), "mask": lg.argmax(dim=1)[0].cpu()})
        return out

    # ---------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self.model, self.trainer, self.optimizer_cfg, self.scheduler_cfg)
