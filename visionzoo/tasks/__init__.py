"""LightningModules: one per task type."""

from .classification import ClassificationTask
from .segmentation import SegmentationTask

__all__ = ["ClassificationTask", "SegmentationTask"]
