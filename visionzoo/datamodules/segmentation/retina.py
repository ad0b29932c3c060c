"""Retinal vessel sets: FIVES (2048² fundus photographs) and DRIVE (565×584, with field-of-view masks).

FIVES (the figshare archive, ``data.root`` = the folder holding ``train/`` and ``test/``, or its parent)::

    train/Original/<k>_<A|D|G|N>.png        600 images
    train/Ground truth/<k>_<A|D|G|N>.png    same names, 8-bit vessel masks (> 127)
    test/Original/...  test/Ground truth/... 200 images

DRIVE (``data.root`` = the ``DRIVE`` folder or its parent)::

    training/images/21_training.tif      training/1st_manual/21_manual1.gif    training/mask/21_training_mask.gif
    test/images/01_test.tif              test/1st_manual/01_manual1.gif        test/mask/01_test_mask.gif

Both are binary (background, vessel). Splits: the official train/test; ``fold: null`` (default)
validates on the test set (QTSeg's protocol for FIVES); ``fold: k`` validates on fold k of the training
images. DRIVE's field of view: in validation/test batches every pixel outside the FOV mask gets
``ignore_index`` (255) in both ``mask`` and ``orig_mask``, so the loss and the metrics skip it, as DRIVE
results are reported inside the FOV; training masks keep those pixels as background (set
``fov_ignore_train: true`` to ignore them in training as well). Copies of DRIVE without
``test/1st_manual`` need ``data.fold=k``.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError
from ._base import (
    SampleReader,
    SegmentationDataModule,
    SegSample,
    TrainTestMixin,
    list_files,
    locate,
    pair_masks,
    require_dir,
)


class FIVESDataModule(TrainTestMixin, SegmentationDataModule):
    dataset_name = "FIVES"

    def __init__(
        self, root=None, fold: int | None = None, num_folds: int = 5, split_seed: int | None = 0, **kwargs
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "vessel"]

    def _layout(self) -> str:
        return (
            "ROOT/{train,test}/Original/*.png with masks of the same names in ROOT/{train,test}/Ground truth/"
        )

    def _split(self, base: Path, split: str) -> list[SegSample]:
        images = list_files(require_dir(base / split / "Original", self._layout()))
        if not images:
            raise DatasetError(
                f"folder '{base / split / 'Original'}' holds no image: expected {self._layout()}."
            )
        return pair_masks(images, require_dir(base / split / "Ground truth", self._layout()))

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "train/Original") or root
        return self._train_val_test(self._split(base, "train"), self._split(base, "test"), str(base))


class DRIVEDataModule(TrainTestMixin, SegmentationDataModule):
    dataset_name = "DRIVE"
    ignore_index = 255

    def __init__(
        self,
        root=None,
        fold: int | None = None,
        num_folds: int = 5,
        split_seed: int | None = 0,
        fov_ignore_train: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed)
        self.fov_ignore_train = bool(fov_ignore_train)

    @property
    def class_names(self) -> list[str]:
        return ["background", "vessel"]

    def _layout(self) -> str:
        return (
            "ROOT/DRIVE/{training,test}/images/<k>_{training,test}.tif with ROOT/DRIVE/{training,test}/1st_manual/<k>_manual1.gif "
            "and FOV masks ROOT/DRIVE/{training,test}/mask/<k>_{training,test}_mask.gif"
        )

    def _reader(self, split: str) -> SampleReader:
        ignore = split != "train" or self.fov_ignore_train
        return SampleReader(fov_ignore=self.ignore_index if ignore else None)

    def _split(self, base: Path, split: str) -> list[SegSample]:
        folder = base / split
        images = list_files(require_dir(folder / "images", self._layout()))
        if not images:
            raise DatasetError(f"folder '{folder / 'images'}' holds no image: expected {self._layout()}.")
        manual = require_dir(folder / "1st_manual", self._layout())
        fov_dir = require_dir(folder / "mask", self._layout())
        fovs = {p.name.split("_")[0]: p for p in list_files(fov_dir)}
        samples = []
        for sample in self._pair(images, manual):
            key = sample.name.split("_")[0]
            if key not in fovs:
                raise DatasetError(
                    f"image '{sample.image}' has no FOV mask '{fov_dir / f'{key}_{split}_mask.gif'}': expected {self._layout()}."
                )
            samples.append(SegSample(sample.name, sample.image, sample.masks, str(fovs[key])))
        return samples

    @staticmethod
    def _pair(images: list[Path], manual: Path) -> list[SegSample]:
        masks = {p.name.split("_")[0]: p for p in list_files(manual) if "_manual" in p.name}
        out = []
        for img in images:
            key = img.name.split("_")[0]
            if key not in masks:
                raise DatasetError(
                    f"image '{img}' has no vessel mask '{manual / f'{key}_manual1.gif'}': every image needs one."
                )
            out.append(SegSample(img.name.rsplit(".", 1)[0], str(img), (str(masks[key]),)))
        return out

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "training/images") or root
        train = self._split(base, "training")
        if not (base / "test" / "1st_manual").is_dir():
            if self.fold is None:
                raise DatasetError(
                    f"folder '{base / 'test' / '1st_manual'}' is missing, so the test images have no labels: "
                    "set data.fold=0 to validate on a fold of the training images."
                )
            splits = self._train_val_test(train, [], str(base))
            return {**splits, "test": splits["val"]}
        return self._train_val_test(train, self._split(base, "test"), str(base))
