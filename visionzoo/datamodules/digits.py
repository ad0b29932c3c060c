"""scikit-learn's bundled handwritten digits: the embedded default dataset (real data, no download).

1,797 grayscale 8×8 images of the digits 0-9 (values 0..16), released without a split. Protocol: three
disjoint stratified parts drawn with ``seed`` (default 0), the usual hold-out convention for a dataset with no
official split (scikit-learn ``train_test_split``; the digits' own docs split it at random too): ``test_fraction``
(default 0.2: **360** images) is held out first, then ``val_fraction`` of all images (default 0.1: **180**) from the
rest, leaving **1,257** for training. The checkpoint is chosen on ``val``; ``test`` is evaluated once. In
``setup`` the images are scaled to 0..1 and upsampled once (bilinear) to ``image_size`` and cached;
each sample is then replicated to 3 channels and normalized with the data config's mean/std. Training
adds a cheap random translation (never a flip: a flipped digit is another symbol).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from ._base import _TRAIN_TRANSFORM_KEYS, ClassificationDataModule

NUM_DIGITS_SAMPLES = 1797

#: ``train_transform`` keys the digits understand.
DIGITS_TRAIN_TRANSFORM = {"translate": 0.0625}  # max shift as a fraction of the side: ±2 px at 32


class TensorImageDataset(Dataset):
    """Cached 1-channel images in 0..1 → normalized 3-channel samples, optionally randomly shifted."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        max_shift: int = 0,
    ) -> None:
        self.images = images  # N×1×H×W float in 0..1
        self.targets = targets  # N long
        self.max_shift = int(max_shift)
        self.set_normalization(mean, std)

    def set_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
        if dx == 0 and dy == 0:
            return x
        h, w = x.shape[-2:]
        out = torch.zeros_like(x)  # background is 0 (black) before normalization
        out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.max_shift > 0:
            x = self._shift(x)
        x = (x.expand(3, -1, -1) - self.mean) / self.std
        return x, int(self.targets[index])


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images N×8×8 float32 in 0..16, targets N int64)`` from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise DatasetError(
            "the digits dataset needs scikit-learn, which is not importable: install scikit-learn>=1.4."
        ) from err
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def three_way_split(
    targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified ``(train, val, test)`` indices, disjoint, each sorted.

    ``test`` (``ceil(test_fraction * N)``) is drawn first, then ``val`` (``ceil(val_fraction * N)``) from the rest.
    """
    from sklearn.model_selection import train_test_split

    n = len(targets)
    everything = np.arange(n)
    rest, test = train_test_split(
        everything, test_size=test_fraction, stratify=targets, random_state=seed, shuffle=True
    )
    n_val = int(np.ceil(val_fraction * n))
    train, val = train_test_split(
        rest, test_size=n_val, stratify=targets[rest], random_state=seed + 1, shuffle=True
    )
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified ``(train_indices, val_indices)``, each sorted."""
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        np.arange(len(targets)), test_size=val_fraction, stratify=targets, random_state=seed, shuffle=True
    )
    return np.sort(train_idx), np.sort(val_idx)


class DigitsDataModule(ClassificationDataModule):
    """Handwritten digits 0-9 (scikit-learn), upsampled to ``image_size`` (default 32).

    ``image_size`` overrides the model's input size (set it to ``None`` to use the model's own);
    ``train_transform`` may set ``translate`` (max random shift as a fraction of the side, default
    0.0625 = ±2 px at 32; 0 disables it). timm augmentation keys do not apply to these tensors and are
    ignored with a warning.
    """

    def __init__(
        self,
        image_size: int | None = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        train_transform: dict | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            image_size=image_size,
            train_transform=train_transform,
        )
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
                raise ConfigError(f"data.{name} must be a number strictly between 0 and 1, got {value!r}.")
        if float(val_fraction) + float(test_fraction) >= 0.9:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction is {float(val_fraction) + float(test_fraction):g}: "
                "expected below 0.9, so that training keeps at least a tenth of the images."
            )
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
        self.test_indices: np.ndarray | None = None
        self._raw: tuple[torch.Tensor, torch.Tensor] | None = None  # N×1×8×8 in 0..1, N
        self._cache: tuple[int, int, torch.Tensor] | None = None  # (H, W, N×1×H×W)

    def _validate_train_transform(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - set(DIGITS_TRAIN_TRANSFORM) - _TRAIN_TRANSFORM_KEYS)
        if unknown:
            raise ConfigError(
                f"data.train_transform has unknown key(s) {', '.join(unknown)} for the digits: "
                f"expected {', '.join(DIGITS_TRAIN_TRANSFORM)}."
            )
        ignored = sorted(set(kwargs) & _TRAIN_TRANSFORM_KEYS)
        if ignored:
            warnings.warn(
                f"data.train_transform key(s) {', '.join(ignored)} do not apply to the digits and are ignored.",
                UserWarning,
                stacklevel=3,
            )
        merged = dict(DIGITS_TRAIN_TRANSFORM)
        merged.update({k: v for k, v in kwargs.items() if k in DIGITS_TRAIN_TRANSFORM})
        translate = merged["translate"]
        if not isinstance(translate, int | float) or not 0.0 <= float(translate) < 0.5:
            raise ConfigError(
                f"data.train_transform.translate must be a fraction in [0, 0.5), got {translate!r}."
            )
        return merged

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def check(self) -> None:
        """Nothing on disk to check beyond scikit-learn's bundled file, which ``setup`` loads."""

    def _images(self) -> torch.Tensor:
        """All images upsampled to the current input size (computed once per size and cached)."""
        if self._raw is None:
            images, targets = load_digits_arrays()
            self._raw = (torch.from_numpy(images / 16.0).unsqueeze(1), torch.from_numpy(targets))
        _, h, w = self.input_size
        if self._cache is None or self._cache[:2] != (h, w):
            raw = self._raw[0]
            up = (
                raw
                if (h, w) == tuple(raw.shape[-2:])
                else F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False)
            )
            self._cache = (h, w, up.clamp_(0.0, 1.0).contiguous())
        return self._cache[2]

    def _split(self) -> None:
        """Draw the three index sets once (from the bundled targets only: no images needed)."""
        if self.train_indices is not None:
            return
        if self._raw is None:
            images, targets = load_digits_arrays()
            self._raw = (torch.from_numpy(images / 16.0).unsqueeze(1), torch.from_numpy(targets))
        self.train_indices, self.val_indices, self.test_indices = three_way_split(
            self._raw[1].numpy(), self.val_fraction, self.test_fraction, self.seed
        )

    def split_info(self) -> dict[str, dict[str, Any]]:
        """Indices into scikit-learn's ``load_digits()`` order, hashed (see :mod:`visionzoo.provenance`)."""
        from ..provenance import split_entry

        self._split()
        rule = (
            f"scikit-learn load_digits, stratified split seed {self.seed} "
            f"(val_fraction {self.val_fraction:g}, test_fraction {self.test_fraction:g})"
        )
        parts = {"train": self.train_indices, "val": self.val_indices, "test": self.test_indices}
        return {
            name: split_entry(f"{rule}: {name}", [f"digits:{int(i)}" for i in idx])
            for name, idx in parts.items()
        }

    def _build_datasets(self, stage: str | None) -> None:
        images = self._images()
        targets = self._raw[1]
        self._split()
        cfg = self.data_config
        max_shift = round(float(self.train_transform_kwargs["translate"]) * min(cfg["input_size"][1:]))
        tr, va, te = (torch.from_numpy(i) for i in (self.train_indices, self.val_indices, self.test_indices))
        self.train_dataset = TensorImageDataset(images[tr], targets[tr], cfg["mean"], cfg["std"], max_shift)
        self.val_dataset = TensorImageDataset(images[va], targets[va], cfg["mean"], cfg["std"])
        self.test_dataset = TensorImageDataset(images[te], targets[te], cfg["mean"], cfg["std"])

    def _on_data_config_changed(self) -> None:
        if self.train_dataset is not None:
            self._build_datasets(None)
