"""Pretrained-config helpers shared by the zoo's model families."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import PretrainedCfg

__all__ = ["SegmentationPretrainedCfg"]


@dataclass
class SegmentationPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus ``task``, so ``timm.get_pretrained_cfg(name).task == 'segmentation'``.

    ``visionzoo.train.model_task`` reads it to pair models with datasets. Families must not copy the field into
    ``model.pretrained_cfg``: timm re-validates that dict with its own ``PretrainedCfg`` when a saved model is
    reloaded (``local-dir:`` / ``hf-hub:``) and rejects unknown keys.
    """

    task: str = "segmentation"
