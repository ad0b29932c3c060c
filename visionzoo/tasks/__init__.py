"""LightningModules: one per task type."""

from .classification import ClassificationTask
from .distillation import DistillationTask
from .reid import ReIDTask
from .segmentation import SegmentationTask

__all__ = ["ClassificationTask", "DistillationTask", "ReIDTask", "SegmentationTask"]
