"""LightningModules: one per task type."""

from .classification import ClassificationTask

__all__ = ["ClassificationTask"]
