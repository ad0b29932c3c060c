"""Generic segmentation folders: ``ROOT/images/*`` with ``ROOT/masks/*`` matched by file stem.

Layouts (``images_dir``/``masks_dir`` rename the two folders)::

    ROOT/images/<name>.<ext>        + ROOT/masks/<name><mask_suffix>.<ext>   → k-fold split
    ROOT/images/{train,val,test}/... + ROOT/masks/{train,val,test}/...      → the given splits
    ROOT/images/{train,val}/...      + ROOT/masks/{train,val}/...           → val folder = test (see below)

Masks (``mask_mode``): ``index`` (default) — single-channel PNGs (grayscale or palette) whose pixel
values are class indices into ``classes`` (an RGB mask whose three channels are equal is read as
grayscale); ``binary`` — 8-bit masks thresholded at > 127 into ``[background, foreground]``.
``reduce_zero_label: true`` maps 0 → ``ignore_index`` (255) and k → k-1 (the ADE20K convention).
A label outside ``0..len(classes)-1`` that is not ``ignore_index`` is a DatasetError naming the file.

Protocol (:mod:`.splits`; train, val and test are always disjoint):

* ``train/``, ``val/`` and ``test/`` folders: used as they are (val selects checkpoints, test is scored once);
* only ``train/`` and ``val/``: a given "val" folder is usually the set a benchmark reports on, so it becomes
  the **test** split, and validation is a seeded hold-out of ``train/`` (``val_size: 0.1``, ``val_seed: 0``);
* no split folders: ``num_folds``-fold over the sorted names (``split_seed: 0``; null = contiguous folds);
  test = fold ``fold``, val = a seeded ``val_size`` hold-out of the other folds, train = the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError, DatasetError
from ._base import (
    KFoldMixin,
    OfficialSplitMixin,
    SampleReader,
    SegmentationDataModule,
    SegSample,
    list_files,
    pair_masks,
    require_dir,
)


class IndexMaskReader(SampleReader):
    """Masks whose pixel values are class indices (optionally with ADE20K's reduce-zero-label)."""

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, reduce_zero_label: bool = False
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label

    def decode_mask(self, path: str) -> np.ndarray:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
        arr = np.asarray(img)
        if arr.ndim == 3:
            if (
                arr.shape[-1] >= 3
                and (arr[..., 0] == arr[..., 1]).all()
                and (arr[..., 0] == arr[..., 2]).all()
            ):
                arr = arr[..., 0]
            else:
                raise DatasetError(
                    f"mask '{path}' is a colour image: expected single-channel index masks (grayscale or palette PNG)."
                )
        arr = arr.astype(np.int32)
        if self.reduce_zero_label:
            zero = arr == 0
            arr -= 1
            arr[zero] = 255 if self.ignore_index is None else self.ignore_index
        bad = arr >= self.num_classes
        if self.ignore_index is not None:
            bad &= arr != self.ignore_index
        if bad.any() or (arr < 0).any():
            value = int(arr[bad][0]) if bad.any() else int(arr.min())
            raise DatasetError(
                f"mask '{path}' holds label {value}, outside the {self.num_classes} classes 0..{self.num_classes - 1}"
                f"{'' if self.ignore_index is None else f' and ignore_index {self.ignore_index}'}."
            )
        return arr.astype(np.uint8) if arr.max(initial=0) < 256 else arr

    def merge(self, masks: list[np.ndarray]) -> np.ndarray:
        return masks[0]


class SegFolderDataModule(KFoldMixin, OfficialSplitMixin, SegmentationDataModule):
    dataset_name = "a segmentation folder"

    def __init__(
        self,
        root=None,
        classes: Sequence[str] = ("background", "foreground"),
        mask_mode: str = "index",
        mask_suffix: str = "",
        images_dir: str = "images",
        masks_dir: str = "masks",
        ignore_index: int | None = None,
        reduce_zero_label: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = 0,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._classes = [str(c) for c in classes]
        if len(self._classes) < 2:
            raise ConfigError(
                f"data.classes must list at least 2 classes (background first), got {self._classes}."
            )
        if mask_mode not in ("index", "binary"):
            raise ConfigError(f"data.mask_mode must be index or binary, got {mask_mode!r}.")
        if mask_mode == "binary" and len(self._classes) != 2:
            raise ConfigError(
                f"data.mask_mode=binary needs exactly 2 classes, got {len(self._classes)}: {self._classes}."
            )
        self.mask_mode = mask_mode
        self.mask_suffix = str(mask_suffix or "")
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = 255 if reduce_zero_label and ignore_index is None else ignore_index
        self.split_names = (train_split, val_split, test_split)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def _layout(self) -> str:
        i, m = self.images_dir, self.masks_dir
        return f"ROOT/{i}/<name>.<ext> with ROOT/{m}/<name>{self.mask_suffix}.<ext> (optionally inside {'/'.join(self.split_names[:2])}[/{self.split_names[2]}] sub-folders)"

    def _reader(self, split: str) -> SampleReader:
        if self.mask_mode == "binary":
            return SampleReader()
        return IndexMaskReader(self.num_classes, self.ignore_index, self.reduce_zero_label)

    def _pairs(self, images_dir: Path, masks_dir: Path) -> list[SegSample]:
        images = list_files(require_dir(images_dir, self._layout()))
        if not images:
            raise DatasetError(f"folder '{images_dir}' holds no image: expected {self._layout()}.")
        return pair_masks(images, require_dir(masks_dir, self._layout()), self.mask_suffix)

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        images, masks = root / self.images_dir, root / self.masks_dir
        train, val, test = self.split_names
        require_dir(images, self._layout())
        if not (images / train).is_dir():
            return self._folds(self._pairs(images, masks), str(root))
        given = {
            "train": self._pairs(images / train, masks / train),
            "val": self._pairs(images / val, masks / val),
        }
        if (images / test).is_dir():
            given["test"] = self._pairs(images / test, masks / test)
            self._sources = {
                k: f"{self.images_dir}/{self.split_names[i]}/ (given)" for i, k in enumerate(given)
            }
            return given
        return self._train_val_test(
            given["train"],
            given["val"],
            str(images / train),
            names=(
                f"{self.images_dir}/{train}/",
                f"{self.images_dir}/{val}/ (the given val folder, used as test)",
            ),
        )
