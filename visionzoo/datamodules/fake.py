"""Synthetic, deterministic, learnable tensors for tests (no disk, no download).

Every class has a fixed smooth random pattern; a sample is its class pattern plus Gaussian noise,
so a model can learn (and overfit) the labels. Images are already in normalized space (mean/std of
the data config are not applied); the size follows ``image_size`` (default 32) or, when that is
``None``, the model's input size.

Protocol: three separately drawn sets from the same class patterns (noise generator ``split_offset`` 0 = train,
1 = val, 2 = test), so the checkpoint chosen on ``val`` is tested on other samples: ``num_samples`` train,
``num_val_samples`` val and ``num_test_samples`` test (both default to ``num_samples``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..provenance import split_entry
from ._base import ClassificationDataModule, _positive_int


def make_fake_classification(
    num_classes: int,
    num_samples: int,
    size: tuple[int, int],
    seed: int,
    split_offset: int = 0,
    noise: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images N×3×H×W float32, targets N long)``: balanced labels, class pattern + noise."""
    proto_gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, 3, 4, 4, generator=proto_gen)
    protos = F.interpolate(protos, size=size, mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed + 1000003 * (split_offset + 1))
    targets = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
    images = protos[targets] + noise * torch.randn(num_samples, 3, *size, generator=gen)
    return images.contiguous(), targets.long()


class FakeDataModule(ClassificationDataModule):
    """``num_samples`` train, ``num_val_samples`` val and ``num_test_samples`` test samples (module docstring)."""

    #: noise-generator offset of each split (see :func:`make_fake_classification`)
    SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}

    def __init__(
        self,
        num_classes: int = 10,
        num_samples: int = 64,
        image_size: int | None = 32,
        seed: int = 0,
        num_val_samples: int | None = None,
        num_test_samples: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_transform: dict | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            image_size=image_size,
            train_transform=None,
        )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"data.num_classes must be an integer >= 2, got {num_classes!r}.")
        self._num_classes = num_classes
        self.num_samples = _positive_int(num_samples, "data.num_samples")
        self.num_val_samples = _positive_int(
            num_samples if num_val_samples is None else num_val_samples, "data.num_val_samples"
        )
        self.num_test_samples = _positive_int(
            self.num_val_samples if num_test_samples is None else num_test_samples, "data.num_test_samples"
        )
        self.seed = int(seed)
        self._built_size: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self._num_classes)]

    def _sizes(self) -> dict[str, int]:
        return {"train": self.num_samples, "val": self.num_val_samples, "test": self.num_test_samples}

    def split_info(self) -> dict:
        """Generator settings of each split, hashed (the samples are a function of them)."""
        h, w = self.input_size[1:]
        out = {}
        for split, n in self._sizes().items():
            rule = (
                f"fake: seed {self.seed}, split_offset {self.SPLIT_OFFSETS[split]}, {self._num_classes} classes, "
                f"{h}x{w}"
            )
            out[split] = split_entry(rule, [f"{rule}: sample {i}" for i in range(n)])
        return out

    def _build_datasets(self, stage: str | None) -> None:
        size = tuple(self.input_size[1:])
        if self._built_size == size:
            return
        for split, n in self._sizes().items():
            data = make_fake_classification(
                self._num_classes, n, size, self.seed, split_offset=self.SPLIT_OFFSETS[split]
            )
            setattr(self, f"{split}_dataset", TensorDataset(*data))
        self._built_size = size

    def _on_data_config_changed(self) -> None:
        if self.train_dataset is not None:
            self._build_datasets(None)
