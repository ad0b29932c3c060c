"""Lightning DataModules. Classification ones share the contract in :mod:`._base`, segmentation ones
the contract in :mod:`.segmentation._base`."""

from __future__ import annotations

from ._base import DEFAULT_DATA_CONFIG, DEFAULT_TRAIN_TRANSFORM, ClassificationDataModule
from .digits import DigitsDataModule
from .fake import FakeDataModule
from .folder import IMG_EXTENSIONS, ImageFolderDataModule, ImageNetDataModule, UnreadableImageWarning
from .reid import Market1501DataModule, PKSampler, ReIDDataModule
from .reid_folder import ReIDFolderDataModule
from .segmentation import *  # noqa: F403  (segmentation DataModules, listed in segmentation.__all__)
from .segmentation import __all__ as _segmentation_all

__all__ = [
    "ClassificationDataModule",
    "DEFAULT_DATA_CONFIG",
    "DEFAULT_TRAIN_TRANSFORM",
    "DigitsDataModule",
    "FakeDataModule",
    "IMG_EXTENSIONS",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "Market1501DataModule",
    "PKSampler",
    "ReIDDataModule",
    "ReIDFolderDataModule",
    "UnreadableImageWarning",
    *_segmentation_all,
]
