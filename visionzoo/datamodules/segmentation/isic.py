"""ISIC 2016 (ISBI 2016 challenge, part 1: lesion segmentation), binary (background, lesion).

Layout of the official archives, each extracted into ``data.root`` (or into one folder below it)::

    ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg            900 dermoscopy images
    ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg                379 images
    ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

Masks are 8-bit (0/255), thresholded at > 127. Split: the official 900/379; ``fold: null`` (default)
validates on the test set as QTSeg does; ``fold: k`` validates on fold k of the training images. QTSeg
converts ISIC images to YCrCb (``color_space: YCrCb``) and scales each image to [-1, 1] (``normalize:
minmax``); the shipped config keeps RGB and the model's mean/std.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError
from ._base import (
    SegmentationDataModule,
    SegSample,
    TrainTestMixin,
    list_files,
    locate,
    pair_masks,
    require_dir,
)

PREFIX = "ISBI2016_ISIC_Part1_"


class ISIC2016DataModule(TrainTestMixin, SegmentationDataModule):
    dataset_name = "ISIC 2016 part 1"

    def __init__(
        self, root=None, fold: int | None = None, num_folds: int = 5, split_seed: int | None = 0, **kwargs
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed)

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
        return self._train_val_test(self._split(base, "Training"), self._split(base, "Test"), str(base))
