"""ISIC 2016 (ISBI 2016 challenge, part 1: lesion segmentation), binary (background, lesion).

Layout of the official archives, each extracted into ``data.root`` (or into one folder below it)::

    ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg            900 dermoscopy images
    ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg                379 images
    ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

Masks are 8-bit (0/255), thresholded at > 127.

Protocol (Gutman et al. 2016, arXiv:1605.01397: the challenge releases 900 training and 379 test images and no
validation set): validation = a seeded hold-out of the official Training set (``val_size: 0.1`` → 90 images,
``val_seed: 0``; unstratified, Part 1 carries no class labels), train = the other 810, test = the 379 official
Test images, scored once. QTSeg selected its checkpoint on the Test set itself; we do not. QTSeg converts ISIC
images to YCrCb (``color_space: YCrCb``) and scales each image to [-1, 1] (``normalize: minmax``); the shipped
data config keeps RGB and the model's mean/std.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError
from ._base import (
    OfficialSplitMixin,
    SegmentationDataModule,
    SegSample,
    list_files,
    locate,
    pair_masks,
    require_dir,
)

PREFIX = "ISBI2016_ISIC_Part1_"


class ISIC2016DataModule(OfficialSplitMixin, SegmentationDataModule):
    dataset_name = "ISIC 2016 part 1"

    def __init__(self, root=None, val_size: float | int = 0.1, val_seed: int = 0, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self._init_holdout(val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "lesion"]

    def _layout(self) -> str:
        return (
            f"ROOT/{PREFIX}Training_Data/*.jpg with ROOT/{PREFIX}Training_GroundTruth/*_Segmentation.png "
            f"and ROOT/{PREFIX}Test_Data/*.jpg with ROOT/{PREFIX}Test_GroundTruth/*_Segmentation.png"
        )

    def _split(self, base: Path, name: str) -> list[SegSample]:
        images = list_files(
            require_dir(base / f"{PREFIX}{name}_Data", self._layout()), (".jpg", ".jpeg", ".png")
        )
        images = [p for p in images if not p.stem.endswith(("_Segmentation", "_superpixels"))]
        if not images:
            raise DatasetError(
                f"folder '{base / f'{PREFIX}{name}_Data'}' holds no .jpg image: expected {self._layout()}."
            )
        return pair_masks(
            images, require_dir(base / f"{PREFIX}{name}_GroundTruth", self._layout()), "_Segmentation"
        )

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, f"{PREFIX}Training_Data") or root
        return self._train_val_test(
            self._split(base, "Training"),
            self._split(base, "Test"),
            str(base),
            names=(f"{PREFIX}Training_Data", f"{PREFIX}Test_Data (the official test set)"),
        )
