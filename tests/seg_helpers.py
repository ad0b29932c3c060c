"""A tiny in-memory segmentation DataModule that follows the segmentation contract, for task/runner tests."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from visionzoo.errors import DatasetError

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def make_sample(rng: np.random.Generator, num_classes: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy background (class 0) with 1-2 rectangles of classes 1.. whose colour encodes the class."""
    mask = np.zeros((h, w), np.int64)
    image = rng.normal(0.2, 0.05, (3, h, w)).astype(np.float32)
    for _ in range(2):
        c = int(rng.integers(1, num_classes))
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + int(rng.integers(h // 4, h // 2)), x0 + int(rng.integers(w // 4, w // 2))
        mask[y0:y1, x0:x1] = c
        image[:, y0:y1, x0:x1] = np.asarray([(c * 0.37) % 1.0, (c * 0.61) % 1.0, 0.9], np.float32)[
            :, None, None
        ]
    return image, mask


class _Split(Dataset):
    def __init__(self, dm: TinySegDataModule, seed: int, train: bool) -> None:
        rng = np.random.default_rng(seed)
        self.dm, self.train = dm, train
        self.items = []
        for i in range(dm.num_samples):
            oh, ow = dm.orig_size
            image, mask = make_sample(rng, dm.num_classes, oh, ow)
            if dm.ignore_index is not None:
                mask[:2, :] = dm.ignore_index  # an unlabelled strip
            self.items.append((image, mask, i))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image, mask, i = self.items[index]
        size = (self.dm.image_size, self.dm.image_size)
        img = F.interpolate(torch.from_numpy(image)[None], size=size, mode="bilinear", align_corners=False)[0]
        img = (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        net_mask = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[
            0, 0
        ].long()
        item = {"image": img, "mask": net_mask}
        if not self.train:
            item.update(orig_mask=torch.from_numpy(mask), name=f"img{i}")
            if self.dm.volumes:
                item.update(volume_id=f"vol{i // 4}", slice_index=i % 4)
        return item


def collate_eval(batch: list[dict]) -> dict:
    out = {"image": torch.stack([b["image"] for b in batch]), "mask": torch.stack([b["mask"] for b in batch])}
    for key in ("orig_mask", "name", "volume_id", "slice_index"):
        if key in batch[0]:
            out[key] = [b[key] for b in batch]
    return out


class TinySegDataModule(L.LightningDataModule):
    task = "segmentation"
    in_chans = 3

    def __init__(
        self,
        num_classes: int = 3,
        num_samples: int = 8,
        image_size: int = 32,
        batch_size: int = 4,
        num_workers: int = 0,
        orig_size: tuple[int, int] = (40, 48),
        ignore_index: int | None = None,
        volumes: bool = False,
        metrics: list[str] | None = None,
        root: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
        self.num_samples, self.image_size, self.batch_size = num_samples, image_size, batch_size
        self.orig_size = tuple(orig_size)
        self.ignore_index = ignore_index
        self.volumes = volumes
        self.metrics = metrics
        self.root = root
        self.shuffle_seed = 0
        self.data_config_seen: dict | None = None

    def check(self) -> None:
        if self.root == "missing":
            raise DatasetError("data.root 'missing' does not exist: expected a tiny set.")

    def set_data_config(self, cfg: dict) -> None:
        self.data_config_seen = dict(cfg)

    @property
    def data_config(self) -> dict:
        return {"mean": MEAN, "std": STD, "input_size": (3, self.image_size, self.image_size)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Split(self, 0, True), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Split(self, 1, False), batch_size=self.batch_size, collate_fn=collate_eval)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
