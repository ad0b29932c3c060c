"""ADE20K scene parsing (SceneParsing / ADEChallengeData2016): 150 classes, 20,210 train / 2,000 val.

Layout of ``ADEChallengeData2016.zip`` (``data.root`` = that folder or its parent)::

    images/training/ADE_train_00000001.jpg     annotations/training/ADE_train_00000001.png
    images/validation/ADE_val_00000001.jpg     annotations/validation/ADE_val_00000001.png

Annotations hold 0 (other / unlabelled) and 1..150. Reduce-zero-label (the standard protocol): 0 →
``ignore_index`` 255 and k → k-1, so ``num_classes`` is 150.

Protocol (Zhou et al. 2017, CVPR; mmsegmentation's ``schedule_160k`` configs): the test images have no public
annotations, so the reported number is the **final** (160k-iteration) checkpoint's single-scale mIoU on the
2,000 official validation images -- here the ``test`` split, run with ``test_ckpt: last``. The periodic
validation during training (checkpoint selection or monitoring) never sees those images: it runs on a seeded
hold-out of the training images (``val_size: 500``, ``val_seed: 0``), so training uses 19,710 of the 20,210
(mmseg trains on all of them and monitors on the official val set). Train: the short side is resized to ``image_size`` (``resize:
shortest``), then the config's ops scale, pad (mask fill 255) and crop to ``image_size``; validation
images are stretched to ``image_size`` and metrics are taken on the original annotation (``orig_mask``).
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
from .folder import IndexMaskReader

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
assert len(ADE20K_CLASSES) == 150


class ADE20KDataModule(OfficialSplitMixin, SegmentationDataModule):
    dataset_name = "ADE20K (ADEChallengeData2016)"
    ignore_index = 255

    def __init__(
        self,
        root=None,
        image_size=512,
        resize: str = "shortest",
        val_size: float | int = 500,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, image_size=image_size, resize=resize, **kwargs)
        self._init_holdout(val_size, val_seed)

    @property
    def class_names(self) -> list[str]:
        return list(ADE20K_CLASSES)

    def _layout(self) -> str:
        return (
            "ROOT/images/{training,validation}/*.jpg with ROOT/annotations/{training,validation}/*.png "
            "(ROOT = ADEChallengeData2016)"
        )

    def _reader(self, split: str) -> SampleReader:
        return IndexMaskReader(150, self.ignore_index, reduce_zero_label=True)

    def _split(self, base: Path, split: str) -> list[SegSample]:
        images = list_files(require_dir(base / "images" / split, self._layout()), (".jpg", ".jpeg", ".png"))
        if not images:
            raise DatasetError(
                f"folder '{base / 'images' / split}' holds no image: expected {self._layout()}."
            )
        return pair_masks(images, require_dir(base / "annotations" / split, self._layout()), "", (".png",))

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        base = locate(root, "images/training") or root
        return self._train_val_test(
            self._split(base, "training"),
            self._split(base, "validation"),
            str(base),
            names=("images/training", "images/validation (the official val set; test labels are withheld)"),
        )
