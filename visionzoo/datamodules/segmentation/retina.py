"""Retinal vessel sets: FIVES (2048² fundus photographs) and DRIVE (565×584, with field-of-view masks).

FIVES (the figshare archive, ``data.root`` = the folder holding ``train/`` and ``test/``, or its parent)::

    train/Original/<k>_<A|D|G|N>.png        600 images
    train/Ground truth/<k>_<A|D|G|N>.png    same names, 8-bit vessel masks (> 127)
    test/Original/...  test/Ground truth/... 200 images

DRIVE (``data.root`` = the ``DRIVE`` folder or its parent)::

    training/images/21_training.tif      training/1st_manual/21_manual1.gif    training/mask/21_training_mask.gif
    test/images/01_test.tif              test/1st_manual/01_manual1.gif        test/mask/01_test_mask.gif

Both are binary (background, vessel). Protocol: the official test set is the test split, scored once; the
releases have no validation set, so validation is a seeded hold-out of the official training set --

* FIVES (Jin et al. 2022, Sci. Data 9:475: 800 images, 600 train / 200 test, 200 per category AMD / DR /
  glaucoma / normal, the ``A|D|G|N`` name suffix): ``val_size: 0.1`` → 60 images stratified by category (15
  each), ``val_seed: 0``; QTSeg selected its checkpoint on the test set, we do not;
* DRIVE (Staal et al. 2004, IEEE TMI 23(4): 20 training / 20 test images, FOV masks): ``val_size: 4``
  (4 of the 20, ``val_seed: 0``), train on 16.

DRIVE's field of view: in validation/test batches every pixel outside the FOV mask gets
``ignore_index`` (255) in both ``mask`` and ``orig_mask``, so the loss and the metrics skip it, as DRIVE
results are reported inside the FOV; training masks keep those pixels as background (set
``fov_ignore_train: true`` to ignore them in training as well). A copy of DRIVE without ``test/1st_manual``
has no labelled test set and is refused (its protocol tests on the official test images).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError
from ._base import (
    OfficialSplitMixin,
    SampleReader,
    SegmentationDataModule,
    SegSample,
    list_files,
    locate,
    pair_masks,
    require_dir,
)


def category(name: str) -> str:
    """FIVES' disease category from ``<k>_<A|D|G|N>``: the hold-out is stratified by it."""
    return name.rsplit("_", 1)[-1].upper() if "_" in name else ""


class FIVESDataModule(OfficialSplitMixin, SegmentationDataModule):
    dataset_name = "FIVES"

    def __init__(self, root=None, val_size: float | int = 0.1, val_seed: int = 0, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self._init_holdout(val_size, val_seed)

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
        train = self._split(base, "train")
        return self._train_val_test(
            train,
            self._split(base, "test"),
            str(base),
            groups=[category(s.name) for s in train],
            names=("train/ (the official training set)", "test/ (the official test set)"),
        )


class DRIVEDataModule(OfficialSplitMixin, SegmentationDataModule):
    dataset_name = "DRIVE"
    ignore_index = 255

    def __init__(
        self,
        root=None,
        val_size: float | int = 4,
        val_seed: int = 0,
        fov_ignore_train: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_holdout(val_size, val_seed)
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
            raise DatasetError(
                f"folder '{base / 'test' / '1st_manual'}' is missing, so the official test images have no labels: "
                "expected DRIVE's test set with its manual annotations, which is what DRIVE results are reported on."
            )
        return self._train_val_test(
            train,
            self._split(base, "test"),
            str(base),
            names=("training/ (the official training set)", "test/ (the official test set)"),
        )
