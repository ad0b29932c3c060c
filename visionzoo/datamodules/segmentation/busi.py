"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020), binary (background, lesion).

Layout of ``Dataset_BUSI_with_GT`` (in ``data.root`` or as ``data.root`` itself)::

    Dataset_BUSI_with_GT/benign/benign (1).png
    Dataset_BUSI_with_GT/benign/benign (1)_mask.png
    Dataset_BUSI_with_GT/benign/benign (4)_mask_1.png     extra masks of the same image: OR-merged
    Dataset_BUSI_with_GT/malignant/...   Dataset_BUSI_with_GT/normal/...

Protocol (Al-Dhabyani et al. 2020, Data in Brief 28:104863: 780 images, 437 benign / 210 malignant / 133
normal, no official split; papers use k-fold or random splits and often drop ``normal``), with QTSeg's folds
as the defaults: the ``normal`` images (empty masks) are dropped (``include_normal: true`` keeps them); per
class the images are sorted by file name and cut into 5 contiguous folds of ``n // 5`` (benign 87, malignant
42: the last 2 benign images are never in a test fold) -- ``split_seed: null``; with a ``split_seed`` the folds
are drawn per class after a seeded permutation instead. Test = fold ``fold`` (129 images, the ones QTSeg
reports on); val = a seeded 10% hold-out of the other folds, stratified by class (``val_size: 0.1`` → 52:
35 benign + 17 malignant, ``val_seed: 0``); train = the remaining 466. QTSeg itself validated on (and picked
its checkpoint by) the fold it reports and trained on all 518 others.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import DatasetError
from ._base import KFoldMixin, SegmentationDataModule, SegSample, list_files, locate, require_dir

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")


class BUSIDataModule(KFoldMixin, SegmentationDataModule):
    dataset_name = "BUSI (Dataset_BUSI_with_GT)"

    def __init__(
        self,
        root=None,
        include_normal: bool = False,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = None,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.include_normal = bool(include_normal)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return ["background", "lesion"]

    @property
    def categories(self) -> list[str]:
        return ["benign", "malignant", "normal"] if self.include_normal else ["benign", "malignant"]

    def _layout(self) -> str:
        return (
            "ROOT/Dataset_BUSI_with_GT/{benign,malignant,normal}/'<name> (k).png' with masks "
            "'<name> (k)_mask.png' (and '_mask_1.png', ... merged)"
        )

    def _category(self, folder: Path) -> list[SegSample]:
        files = list_files(require_dir(folder, self._layout()), (".png",))
        masks: dict[str, list[str]] = {}
        images = []
        for f in files:
            m = _MASK.match(f.stem)
            if m:
                masks.setdefault(m["stem"], []).append(str(f))
            else:
                images.append(f)
        if not images:
            raise DatasetError(f"folder '{folder}' holds no BUSI image: expected {self._layout()}.")
        samples = []
        for img in images:
            found = sorted(masks.get(img.stem, []))  # '_mask' sorts before '_mask_1'
            if not found:
                raise DatasetError(
                    f"image '{img}' has no mask '{img.stem}_mask.png': expected {self._layout()}."
                )
            samples.append(SegSample(f"{folder.name}/{img.stem}", str(img), tuple(found)))
        return samples

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "Dataset_BUSI_with_GT/benign")
        base = base / "Dataset_BUSI_with_GT" if base is not None else root
        samples, groups = [], []
        for cat in self.categories:
            part = self._category(base / cat)
            samples += part
            groups += [cat] * len(part)
        return self._folds(samples, str(base), groups)
