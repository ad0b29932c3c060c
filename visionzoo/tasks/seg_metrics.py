"""Segmentation metrics: IoU / Dice / accuracy from a confusion matrix, volumetric Dice, HD95.

Conventions (written down because papers differ):

* **Confusion matrix** ``cm[t, p]`` = pixels of ground-truth class ``t`` predicted as ``p``, accumulated over the
  whole evaluation set (torchmetrics ``MulticlassConfusionMatrix``, synchronised across DDP ranks); pixels whose
  ground truth is ``ignore_index`` are dropped before counting.
* **IoU** of class c = TP / (TP + FP + FN), **Dice** = 2TP / (2TP + FP + FN), **class accuracy** = TP / (TP + FN).
  A class absent from both predictions and ground truth over the whole set has 0/0: it is NaN and left out of
  the means (``mIoU``, ``mDice``, ``mAcc`` are NaN-excluded means, mmseg's convention). A class that is predicted
  but never present scores 0 and counts.
* **aAcc** = correctly classified valid pixels / valid pixels.
* **Volumetric Dice** (``vDice``): when batches carry ``volume_id``, TP/FP/FN per volume and class are summed over
  the volume's slices (equal to the Dice of the stacked 3D masks); per volume, the Dice of each foreground class
  (class 0 is background and excluded) that occurs in the volume's ground truth or prediction; ``vDice`` is the
  mean over volumes of the per-volume mean.
* **HD95** (MONAI ``compute_hausdorff_distance(percentile=95)``, symmetric, in pixels of the original
  resolution, foreground classes only): per image -- or per volume, on the stacked slices, when volume ids are
  present -- and class. Empty-mask convention (as BraTS): ground truth and prediction both empty -> 0; exactly
  one of them empty -> the image (or volume) diagonal, the largest distance possible. Ignored pixels count as
  background. ``hd95`` is the mean over images (volumes) and classes.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

__all__ = ["ConfusionMetrics", "HD95", "VolumeDice", "hd95_per_class", "metrics_from_confusion"]


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class ``IoU``, ``Dice``, ``Acc`` (NaN for classes absent from GT and prediction) and the NaN-excluded
    means ``mIoU``, ``mDice``, ``mAcc`` plus ``aAcc`` from a ``K×K`` confusion matrix (rows: ground truth)."""
    cm = cm.double()
    tp = cm.diagonal()
    gt = cm.sum(dim=1)  # TP + FN
    pred = cm.sum(dim=0)  # TP + FP
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    dice = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = cm.sum()
    return {
        "IoU": iou,
        "Dice": dice,
        "Acc": acc,
        "mIoU": _nanmean(iou),
        "mDice": _nanmean(dice),
        "mAcc": _nanmean(acc),
        "aAcc": tp.sum() / total if total > 0 else nan,
    }


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    keep = ~torch.isnan(x)
    return x[keep].mean() if keep.any() else torch.tensor(float("nan"), dtype=x.dtype, device=x.device)


class ConfusionMetrics(MulticlassConfusionMatrix):
    """A confusion matrix (honouring ``ignore_index``) whose ``compute_metrics()`` gives :func:`metrics_from_confusion`.

    ``update(preds, target)`` takes class indices of any (equal) shape.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # noqa: D102
        super().update(preds.reshape(-1), target.reshape(-1))

    def compute_metrics(self) -> dict[str, torch.Tensor]:
        return metrics_from_confusion(self.compute())


def _stable_hash(key: str) -> int:
    """A process-independent 63-bit id of a volume name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little") >> 1


class VolumeDice(Metric):
    """Volumetric Dice: per-volume TP/FP/FN summed over slices (see the module docstring)."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, volume_id: str) -> None:
        preds, target = preds.reshape(-1), target.reshape(-1)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        k = self.num_classes
        cm = torch.bincount(target.long() * k + preds.long(), minlength=k * k).reshape(k, k)
        tp = cm.diagonal()
        counts = torch.stack([tp, cm.sum(0) - tp, cm.sum(1) - tp], dim=1)  # K×3: TP, FP, FN
        self.keys.append(torch.tensor([_stable_hash(volume_id)], dtype=torch.long, device=preds.device))
        self.counts.append(counts.unsqueeze(0))

    def compute(self) -> torch.Tensor:
        if not self.keys:
            return torch.tensor(float("nan"))
        keys = dim_zero_cat(self.keys).cpu()
        counts = dim_zero_cat(self.counts).reshape(len(keys), self.num_classes, 3).double().cpu()
        per_volume = []
        for key in keys.unique():
            c = counts[keys == key].sum(0)
            tp, fp, fn = c[1:, 0], c[1:, 1], c[1:, 2]  # foreground classes
            denom = 2 * tp + fp + fn
            present = denom > 0
            if present.any():
                per_volume.append((2 * tp[present] / denom[present]).mean())
        return torch.stack(per_volume).mean().float() if per_volume else torch.tensor(float("nan"))


def hd95_per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
):
    """HD95 of each foreground class between two label maps (2D ``H×W`` or 3D ``D×H×W``), with the module's
    empty-mask convention. Returns a float64 tensor of ``num_classes - 1`` values."""
    from monai.metrics import compute_hausdorff_distance

    pred = pred.long().cpu()
    target = target.long().cpu()
    if ignore_index is not None:
        ignored = target == ignore_index
        target = target.masked_fill(ignored, 0)
        pred = pred.masked_fill(ignored, 0)
    diagonal = math.sqrt(sum(float(s) ** 2 for s in target.shape))
    out = torch.zeros(num_classes - 1, dtype=torch.float64)
    todo = []
    for c in range(1, num_classes):
        p, t = bool((pred == c).any()), bool((target == c).any())
        if not p and not t:
            out[c - 1] = 0.0
        elif p != t:
            out[c - 1] = diagonal
        else:
            todo.append(c)
    if todo:
        classes = torch.tensor(todo)
        p1h = (pred.unsqueeze(0) == classes.view(-1, *([1] * pred.ndim))).unsqueeze(0)  # 1×C×spatial
        t1h = (target.unsqueeze(0) == classes.view(-1, *([1] * target.ndim))).unsqueeze(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = compute_hausdorff_distance(p1h, t1h, include_background=True, percentile=95)[0]
        out[classes - 1] = values.double()
    return out


class HD95(Metric):
    """Mean HD95 over images (or volumes) and foreground classes; see the module docstring.

    ``update(pred, target)`` adds one 2D image; ``update(pred, target, volume_id, slice_index)`` adds one slice
    of a volume (slices are stacked by ``slice_index`` at ``compute``; the masks are kept until then).
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("values", default=[], dist_reduce_fx="cat")  # per image: K-1 values
        # volumes: per slice meta [hash, slice_index, h, w] and the flattened uint8/int16 masks
        self.add_state("slice_meta", default=[], dist_reduce_fx="cat")
        self.add_state("slice_pred", default=[], dist_reduce_fx="cat")
        self.add_state("slice_target", default=[], dist_reduce_fx="cat")

    def _small(self, x: torch.Tensor, is_target: bool) -> torch.Tensor:
        """Store labels compactly: uint8 when they fit, the ground truth's ignore label mapped to 255."""
        if self.num_classes <= 255:
            if is_target and self.ignore_index is not None:
                x = x.masked_fill(x == self.ignore_index, 255)
            return x.to(torch.uint8)
        return x.to(torch.int32)

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        volume_id: str | None = None,
        slice_index: int | None = None,
    ) -> None:
        if volume_id is None:
            self.values.append(
                hd95_per_class(pred, target, self.num_classes, self.ignore_index).unsqueeze(0).to(self.device)
            )
            return
        h, w = target.shape[-2:]
        meta = torch.tensor(
            [[_stable_hash(volume_id), int(slice_index or 0), int(h), int(w)]], dtype=torch.long
        )
        self.slice_meta.append(meta.to(self.device))
        self.slice_pred.append(self._small(pred.reshape(-1), False))
        self.slice_target.append(self._small(target.reshape(-1), True))

    def compute(self) -> torch.Tensor:
        rows = [dim_zero_cat(self.values).double().cpu()] if self.values else []
        if self.slice_meta:
            meta = dim_zero_cat(self.slice_meta).cpu()
            preds = dim_zero_cat(self.slice_pred).cpu()
            targets = dim_zero_cat(self.slice_target).cpu()
            ignore = (
                None if self.ignore_index is None else (255 if self.num_classes <= 255 else self.ignore_index)
            )
            volumes: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
            offset = 0
            for key, index, h, w in meta.tolist():
                n = h * w
                volumes[key].append(
                    (index, preds[offset : offset + n].view(h, w), targets[offset : offset + n].view(h, w))
                )
                offset += n
            for slices in volumes.values():
                slices.sort(key=lambda s: s[0])
                shapes = {tuple(s[1].shape) for s in slices}
                if len(shapes) != 1:
                    raise ValueError(
                        f"slices of one volume have different sizes {sorted(shapes)}; cannot stack them."
                    )
                pred = torch.stack([s[1] for s in slices]).long()
                target = torch.stack([s[2] for s in slices]).long()
                rows.append(hd95_per_class(pred, target, self.num_classes, ignore).unsqueeze(0))
        if not rows:
            return torch.tensor(float("nan"))
        values = torch.cat(rows).numpy()
        return torch.tensor(float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"))


def sanitize_class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Class names usable as metric keys (``val/IoU/<name>``): no spaces, commas or slashes; unique."""
    if not names or len(names) != num_classes:
        return [str(i) for i in range(num_classes)]
    out: list[str] = []
    for i, name in enumerate(names):
        clean = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name).split(",")[0].strip())
        clean = clean or str(i)
        out.append(clean if clean not in out else f"{clean}_{i}")
    return out
