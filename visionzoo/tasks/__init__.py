"""LightningModules: one per task type."""

from .classification import ClassificationTask
from .distillation import DistillationTask
from .segmentation import SegmentationTask

__all__ = ["ClassificationTask", "DistillationTask", "SegmentationTask"]
