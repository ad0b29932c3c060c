"""Colonoscopy polyp sets: Kvasir-SEG (binary) and BKAI-IGH NeoPolyp-Small (binary or 3-class).

Kvasir-SEG (``kvasir-seg.zip``, extracted into ``data.root`` or as ``data.root`` itself)::

    Kvasir-SEG/images/<id>.jpg    1000 images
    Kvasir-SEG/masks/<id>.jpg     same names, JPEG masks thresholded at > 127

Protocol (Jha et al. 2020, MMM, "Kvasir-SEG: A Segmented Polyp Dataset": 1,000 images, no official split;
papers use random 880/120 or 900/100 splits or k-fold): 5-fold over the sorted names permuted with
``split_seed: 0``; test = fold ``fold`` (200 images), val = a seeded 10% hold-out of the other folds
(``val_size: 0.1`` → 80, ``val_seed: 0``), train = the remaining 720.

BKAI-IGH NeoPolyp-Small (the Kaggle competition archive)::

    train/train/<id>.jpeg         1000 images (``train/<id>.jpeg`` is accepted as well)
    train_gt/train_gt/<id>.jpeg   RGB colour-coded masks: red = neoplastic, green = non-neoplastic

Masks are decoded in HSV (JPEG colours are noisy): red is hue ≤ 10 or ≥ 160, green 36..70, both with
saturation ≥ 100 and value ≥ 20. Labels as in QTSeg: 0 background, 1 non-neoplastic (green), 2 neoplastic
(red). ``three_class: false`` (default, QTSeg's protocol) merges them into one polyp class.

Protocol (Ngoc Lan et al. 2021, NeoUNet, ISVC: 1,000 labelled images, the 200 test images' masks are hidden on
Kaggle, so papers split the 1,000): QTSeg's folds -- sorted names, 5 contiguous folds of 200
(``split_seed: null``); test = fold ``fold`` (the images QTSeg reports on), val = a seeded 10% hold-out of the
other four folds (``val_size: 0.1`` → 80, ``val_seed: 0``), train = the remaining 720. QTSeg itself
validated on (and picked its checkpoint by) the fold it reports and trained on all 800 others. The
competition's ``test/test`` images have no public masks (use ``data.predict_dir`` for them).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...errors import DatasetError
from ._base import (
    KFoldMixin,
    SampleReader,
    SegmentationDataModule,
    SegSample,
    list_files,
    locate,
    pair_masks,
    require_dir,
)


class KvasirSEGDataModule(KFoldMixin, SegmentationDataModule):
    dataset_name = "Kvasir-SEG"

    def __init__(
        self,
        root=None,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = 0,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "polyp"]

    def _layout(self) -> str:
        return "ROOT/Kvasir-SEG/images/*.jpg with masks of the same names in ROOT/Kvasir-SEG/masks/"

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "Kvasir-SEG/images")
        base = base / "Kvasir-SEG" if base is not None else root
        images = list_files(require_dir(base / "images", self._layout()))
        if not images:
            raise DatasetError(f"folder '{base / 'images'}' holds no image: expected {self._layout()}.")
        samples = pair_masks(images, require_dir(base / "masks", self._layout()))
        return self._folds(samples, str(base))


def decode_bkai(rgb: np.ndarray) -> np.ndarray:
    """RGB colour-coded BKAI mask → uint8 labels: 0 background, 1 non-neoplastic (green), 2 neoplastic (red)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)  # OpenCV hue is 0..179
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (s >= 100) & (v >= 20)
    red = coloured & ((h <= 10) | (h >= 160))
    green = coloured & (h >= 36) & (h <= 70)
    out = np.zeros(rgb.shape[:2], np.uint8)
    out[green] = 1
    out[red] = 2
    return out


class BKAIReader(SampleReader):
    def __init__(self, three_class: bool = False) -> None:
        super().__init__()
        self.three_class = three_class

    def decode_mask(self, path: str) -> np.ndarray:
        from ..folder import load_rgb

        labels = decode_bkai(np.asarray(load_rgb(path)))
        return labels if self.three_class else (labels > 0).astype(np.uint8)


class BKAIPolypDataModule(KFoldMixin, SegmentationDataModule):
    dataset_name = "BKAI-IGH NeoPolyp-Small"

    def __init__(
        self,
        root=None,
        three_class: bool = False,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = None,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.three_class = bool(three_class)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "non_neoplastic", "neoplastic"] if self.three_class else ["background", "polyp"]

    def _layout(self) -> str:
        return (
            "ROOT/train/train/*.jpeg with RGB colour-coded masks of the same names in ROOT/train_gt/train_gt/"
        )

    def _reader(self, split: str) -> SampleReader:
        return BKAIReader(self.three_class)

    @staticmethod
    def _inner(folder: Path) -> Path:
        return folder / folder.name if (folder / folder.name).is_dir() else folder

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "train_gt") or root
        images = list_files(self._inner(require_dir(base / "train", self._layout())))
        if not images:
            raise DatasetError(
                f"folder '{self._inner(base / 'train')}' holds no image: expected {self._layout()}."
            )
        masks = self._inner(require_dir(base / "train_gt", self._layout()))
        return self._folds(pair_masks(images, masks), str(base))
