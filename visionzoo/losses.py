"""Segmentation losses: torch cross-entropy and MONAI's Dice / focal losses, each honouring ``ignore_index``.

Config (``data.loss`` or ``model.loss``; the model's wins)::

    loss:
      name: dice_ce          # ce | dice | focal | dice_ce | dice_focal
      ce_weight: 1.0         # weight of the CE term (ce, dice_ce)
      dice_weight: 1.0       # weight of the Dice term (dice, dice_ce, dice_focal)
      focal_weight: 1.0      # weight of the focal term (focal, dice_focal)
      class_weight: null     # per-class CE / focal weights
      label_smoothing: 0.0   # CE only
      gamma: 2.0             # focal
      focal_softmax: false   # false: MONAI's (and DiceFocalLoss's) sigmoid focal per class; true: softmax focal
      include_background: true   # Dice / focal over class 0 as well
      batch: false           # MONAI DiceLoss: one Dice over the whole batch instead of per image
      squared_pred: false
      smooth_nr: 1.0e-5
      smooth_dr: 1.0e-5

``dice_ce`` is MONAI's ``DiceCELoss`` (``dice_weight * Dice + ce_weight * CE``) and ``dice_focal`` its
``DiceFocalLoss``, assembled here from MONAI's ``DiceLoss`` / ``FocalLoss`` and torch's cross-entropy because
MONAI's combined losses do not take ``ignore_index``. Ignored pixels are removed from every term: CE via
``ignore_index``; Dice by zeroing both the softmax probabilities and the one-hot target there (MONAI's own
``ignore_index``); focal by averaging only over the valid pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from .errors import ConfigError

LOSS_NAMES = ("ce", "dice", "focal", "dice_ce", "dice_focal")
_KNOWN_KEYS = {
    "name",
    "ce_weight",
    "dice_weight",
    "focal_weight",
    "class_weight",
    "label_smoothing",
    "gamma",
    "focal_softmax",
    "include_background",
    "batch",
    "squared_pred",
    "smooth_nr",
    "smooth_dr",
}


class SegmentationLoss(nn.Module):
    """``forward(logits B×K×H×W, target long B×H×W) -> scalar``; see the module docstring for the terms."""

    def __init__(
        self,
        name: str = "ce",
        num_classes: int | None = None,
        ignore_index: int | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        focal_weight: float = 1.0,
        class_weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        gamma: float = 2.0,
        focal_softmax: bool = False,
        include_background: bool = True,
        batch: bool = False,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if name not in LOSS_NAMES:
            raise ConfigError(f"loss.name '{name}' is unknown; expected one of {', '.join(LOSS_NAMES)}.")
        self.name = name
        self.ignore_index = ignore_index
        terms = set(name.split("_"))
        self.ce_weight = float(ce_weight) if "ce" in terms else 0.0
        self.dice_weight = float(dice_weight) if "dice" in terms else 0.0
        self.focal_weight = float(focal_weight) if "focal" in terms else 0.0
        self.label_smoothing = float(label_smoothing)
        weight = None
        if class_weight is not None:
            weight = torch.as_tensor(list(class_weight), dtype=torch.float32)
            if num_classes is not None and weight.numel() != num_classes:
                raise ConfigError(
                    f"loss.class_weight has {weight.numel()} entries but the dataset has {num_classes} classes."
                )
        self.register_buffer("class_weight", weight, persistent=False)
        self.dice = (
            DiceLoss(
                include_background=include_background,
                to_onehot_y=True,
                softmax=True,
                squared_pred=squared_pred,
                smooth_nr=smooth_nr,
                smooth_dr=smooth_dr,
                batch=batch,
                ignore_index=ignore_index,
            )
            if self.dice_weight
            else None
        )
        self.focal = (
            FocalLoss(
                include_background=include_background,
                to_onehot_y=True,
                gamma=gamma,
                weight=class_weight,
                use_softmax=focal_softmax,
                reduction="none",
            )
            if self.focal_weight
            else None
        )

    def _valid(self, target: torch.Tensor) -> torch.Tensor | None:
        return None if self.ignore_index is None else target != self.ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits.float()  # Dice / softmax in full precision under bf16 autocast
        total = logits.new_zeros(())
        valid = self._valid(target)
        if self.ce_weight:
            ce = F.cross_entropy(
                logits,
                target,
                weight=self.class_weight,
                ignore_index=-100 if self.ignore_index is None else self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
            if valid is not None and not valid.any():
                ce = logits.sum() * 0.0  # every pixel ignored: CE would be NaN
            total = total + self.ce_weight * ce
        if self.dice is not None:
            total = total + self.dice_weight * self.dice(logits, target.unsqueeze(1))
        if self.focal is not None:
            safe = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
            per_pixel = self.focal(logits, safe.unsqueeze(1))  # B×K'×H×W
            if valid is None:
                focal = per_pixel.mean()
            else:
                mask = valid.unsqueeze(1).to(per_pixel.dtype)
                focal = (per_pixel * mask).sum() / (mask.sum() * per_pixel.shape[1]).clamp_min(1.0)
            total = total + self.focal_weight * focal
        return total


def build_loss(
    cfg: Mapping[str, Any] | str | None, num_classes: int, ignore_index: int | None
) -> SegmentationLoss:
    """A :class:`SegmentationLoss` from a config dict (or a bare name); unknown keys end in one sentence."""
    if cfg is None:
        cfg = {"name": "ce"}
    elif isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    unknown = sorted(set(cfg) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"loss has unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(_KNOWN_KEYS))}."
        )
    cfg.setdefault("name", "ce")
    return SegmentationLoss(num_classes=num_classes, ignore_index=ignore_index, **cfg)
