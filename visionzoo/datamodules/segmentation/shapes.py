"""Built-in synthetic segmentation set: ellipses and polygons on a textured background (no disk).

Classes: 0 background, 1 ellipse, 2 polygon (a random triangle or quadrilateral). Every image has 1–4
shapes of random size, position and colour (ellipses lean warm, polygons cool, so a small model learns
the task in a few epochs) drawn over a smooth random gradient with noise; later shapes cover earlier
ones. Generation is deterministic by ``seed`` (validation uses ``seed + 1``) and happens in memory at the
network size (``image_size``, default 64), so ``orig_mask`` equals ``mask``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...errors import ConfigError
from .._base import _positive_int
from ._base import SampleReader, SegmentationDataModule, SegSample


def make_shapes(num: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images N×H×W×3 uint8, masks N×H×W uint8 in {0, 1, 2})``."""
    h, w = size
    rng = np.random.default_rng(seed)
    images = np.empty((num, h, w, 3), np.uint8)
    masks = np.zeros((num, h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = min(h, w)
    for i in range(num):
        c0, c1 = rng.uniform(40, 140, 3), rng.uniform(40, 140, 3)
        t = (xx / max(w - 1, 1) * rng.uniform(-1, 1) + yy / max(h - 1, 1) * rng.uniform(-1, 1) + 1) / 2
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 8, (h, w, 3))
        img = np.clip(bg, 0, 255).astype(np.uint8)
        mask = masks[i]
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
            r = rng.uniform(0.08, 0.25) * scale
            if rng.random() < 0.5:  # ellipse, warm colour
                colour = (rng.uniform(170, 255), rng.uniform(60, 200), rng.uniform(0, 90))
                axes = (max(1, int(r)), max(1, int(r * rng.uniform(0.5, 1.0))))
                args = ((int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0.0, 360.0)
                cv2.ellipse(img, *args, tuple(float(c) for c in colour), -1)
                cv2.ellipse(mask, *args, 1, -1)
            else:  # polygon, cool colour
                colour = (rng.uniform(0, 90), rng.uniform(60, 200), rng.uniform(170, 255))
                k = int(rng.integers(3, 5))
                # evenly spread vertices with jitter: no sliver polygons
                angles = (
                    rng.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(k) + rng.uniform(-0.2, 0.2, k)) / k
                )
                pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).astype(np.int32)
                cv2.fillPoly(img, [pts], tuple(float(c) for c in colour))
                cv2.fillPoly(mask, [pts], 2)
        images[i] = img
    return images, masks


class ArrayReader(SampleReader):
    """Samples held in memory: ``SegSample.image`` is the row index as a string."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.images, self.masks = images, masks

    def load(self, sample: SegSample, with_mask: bool = True):
        i = int(sample.image)
        return self.images[i], (self.masks[i] if with_mask else None)

    def check_sizes(self, sample: SegSample) -> None:
        pass


class ShapesDataModule(SegmentationDataModule):
    dataset_name = "the built-in shapes set"

    def __init__(
        self,
        num_samples: int = 64,
        num_val_samples: int = 16,
        seed: int = 0,
        image_size=64,
        root=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_workers", 0)
        super().__init__(root=None, image_size=image_size, **kwargs)
        if root is not None:
            raise ConfigError(
                "data.root must stay null for the built-in shapes set, which is generated in memory."
            )
        self.num_samples = _positive_int(num_samples, "data.num_samples")
        self.num_val_samples = _positive_int(num_val_samples, "data.num_val_samples")
        self.seed = int(seed)
        self._arrays: dict[str, tuple[int, int, ArrayReader]] = {}

    @property
    def class_names(self) -> list[str]:
        return ["background", "ellipse", "polygon"]

    def _layout(self) -> str:
        return "nothing (generated in memory)"

    def _check_root(self) -> Path:
        return Path(".")

    def _generated(self, split: str) -> ArrayReader:
        size = tuple(self.input_size[1:])
        got = self._arrays.get(split)
        if got is None or got[:2] != size:
            n, seed = {
                "train": (self.num_samples, self.seed),
                "val": (self.num_val_samples, self.seed + 1),
                "test": (self.num_val_samples, self.seed + 2),
            }[split]
            got = (*size, ArrayReader(*make_shapes(n, size, seed)))
            self._arrays[split] = got
        return got[2]

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        train = [SegSample(f"shapes_train_{i:04d}", str(i)) for i in range(self.num_samples)]
        val = [SegSample(f"shapes_val_{i:04d}", str(i)) for i in range(self.num_val_samples)]
        test = [SegSample(f"shapes_test_{i:04d}", str(i)) for i in range(self.num_val_samples)]
        self._sources = {
            "train": f"generated, seed {self.seed}",
            "val": f"generated, seed {self.seed + 1}",
            "test": f"generated, seed {self.seed + 2}",
        }
        return {"train": train, "val": val, "test": test}

    def _reader(self, split: str) -> SampleReader:
        return self._generated("test" if split == "predict" else split)

    def _rebuild_datasets(self) -> None:
        # a new size means new arrays: rebuild the datasets from scratch
        built = [
            n for n in ("train_dataset", "val_dataset", "test_dataset", "predict_dataset") if getattr(self, n)
        ]
        for n in built:
            setattr(self, n, None)
        if built:
            self.setup(None)
