"""Segmentation DataModules (contract in :mod:`._base`): natural scenes, medical sets, folders, synthetic."""

from __future__ import annotations

from ._base import SegmentationDataModule, SegmentationDataset, SegSample
from .ade20k import ADE20K_CLASSES, ADE20KDataModule
from .busi import BUSIDataModule
from .dsb import DSB2018DataModule
from .folder import SegFolderDataModule
from .isic import ISIC2016DataModule
from .msd import MSDDataModule
from .polyp import BKAIPolypDataModule, KvasirSEGDataModule
from .retina import DRIVEDataModule, FIVESDataModule
from .shapes import ShapesDataModule, make_shapes
from .splits import kfold_indices

__all__ = [
    "ADE20K_CLASSES",
    "ADE20KDataModule",
    "BKAIPolypDataModule",
    "BUSIDataModule",
    "DRIVEDataModule",
    "DSB2018DataModule",
    "FIVESDataModule",
    "ISIC2016DataModule",
    "KvasirSEGDataModule",
    "MSDDataModule",
    "SegFolderDataModule",
    "SegSample",
    "SegmentationDataModule",
    "SegmentationDataset",
    "ShapesDataModule",
    "kfold_indices",
    "make_shapes",
]
