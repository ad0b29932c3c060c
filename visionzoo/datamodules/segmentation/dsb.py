"""2018 Data Science Bowl, stage 1 training set (nuclei), binary (background, nucleus).

Layout of ``stage1_train.zip`` extracted into ``data.root/stage1_train`` (or as ``data.root``)::

    stage1_train/<id>/images/<id>.png     RGBA (alpha dropped), 670 images of varied sizes
    stage1_train/<id>/masks/<mask_id>.png one binary mask per nucleus instance: OR-merged

Protocol (Caicedo et al. 2019, Nat. Methods 16:1247: 670 labelled stage-1 training images; papers split them
at random), with QTSeg's folds as the defaults: ids sorted, 5 contiguous folds of 134 (``split_seed: null``);
test = fold ``fold`` (134, the images QTSeg reports on), val = a seeded 10% hold-out of the other folds
(``val_size: 0.1`` → 54, ``val_seed: 0``), train = the remaining 482. QTSeg itself validated on (and picked its
checkpoint by) the fold it reports and trained on all 536 others.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DatasetError
from ._base import KFoldMixin, SegmentationDataModule, SegSample, list_files, locate


class DSB2018DataModule(KFoldMixin, SegmentationDataModule):
    dataset_name = "DSB 2018 stage 1"

    def __init__(
        self,
        root=None,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = None,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "nucleus"]

    def _layout(self) -> str:
        return "ROOT/stage1_train/<id>/images/<id>.png with instance masks ROOT/stage1_train/<id>/masks/*.png"

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = root / "stage1_train" if (root / "stage1_train").is_dir() else root
        if locate(base, "images") is None:
            raise DatasetError(f"folder '{base}' holds no '<id>/images/' folder: expected {self._layout()}.")
        with os.scandir(base) as it:
            ids = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        samples = []
        for sid in ids:
            folder = base / sid
            if not (folder / "images").is_dir():
                continue
            images = list_files(folder / "images", (".png",))
            if not images:
                raise DatasetError(
                    f"folder '{folder / 'images'}' holds no .png image: expected {self._layout()}."
                )
            masks = list_files(folder / "masks", (".png",)) if (folder / "masks").is_dir() else []
            if not masks:
                raise DatasetError(
                    f"sample '{folder}' has no instance mask in '{folder / 'masks'}': expected {self._layout()}."
                )
            samples.append(SegSample(sid, str(images[0]), tuple(str(m) for m in masks)))
        return self._folds(samples, str(base))
