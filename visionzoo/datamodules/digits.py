"""scikit-learn's bundled handwritten digits: the embedded default dataset (real data, no download).

1,797 grayscale 8×8 images of the digits 0-9 (values 0..16). A fixed stratified split (seed 0 by
default) keeps ``val_fraction`` of every class for validation (also used as the test split). In
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
        val_fraction: float = 0.2,
        seed: int = 0,
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
        if not isinstance(val_fraction, int | float) or not 0.0 < float(val_fraction) < 1.0:
            raise ConfigError(
                f"data.val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}."
            )
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
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

    def _build_datasets(self, stage: str | None) -> None:
        images = self._images()
        targets = self._raw[1]
        if self.train_indices is None:
            self.train_indices, self.val_indices = stratified_split(
                targets.numpy(), self.val_fraction, self.seed
            )
        cfg = self.data_config
        max_shift = round(float(self.train_transform_kwargs["translate"]) * min(cfg["input_size"][1:]))
        tr, va = torch.from_numpy(self.train_indices), torch.from_numpy(self.val_indices)
        self.train_dataset = TensorImageDataset(images[tr], targets[tr], cfg["mean"], cfg["std"], max_shift)
        self.val_dataset = TensorImageDataset(images[va], targets[va], cfg["mean"], cfg["std"])
        self.test_dataset = self.val_dataset

    def _on_data_config_changed(self) -> None:
        if self.train_dataset is not None:
            self._build_datasets(None)
