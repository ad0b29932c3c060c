"""Shared machinery of every classification DataModule: data config, timm transforms, loaders.

The train runner relies on this contract:

* ``task = "classification"``, ``in_chans = 3``, ``num_classes`` and ``class_names``;
* ``check()`` validates the data cheaply and raises :class:`~visionzoo.errors.DatasetError` with one
  sentence; it runs before the model is built and again in ``setup()``;
* ``set_data_config(timm.data.resolve_model_data_config(model))`` decides the input size,
  interpolation, mean/std and crop; ``image_size`` (when set) overrides the model's input size;
* loaders yield ``(images float B×3×H×W, targets long B)``;
* ``split_info()`` says what each split is (source, size, hash of its file list or indices) for metrics.json:
  a paper's ``test/*`` must come from images that chose neither the checkpoint nor a hyper-parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from timm.data import create_transform
from timm.data.constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .loaders import SplitLoadersMixin

#: What the transforms use when ``set_data_config`` is never called (timm's ImageNet defaults).
DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": tuple(IMAGENET_DEFAULT_MEAN),
    "std": tuple(IMAGENET_DEFAULT_STD),
    "crop_pct": DEFAULT_CROP_PCT,
    "crop_mode": "center",
}

#: Train augmentation defaults: no auto-augment, no random erasing, horizontal flip 0.5
#: (the rest are timm's own defaults, written out so they are visible in one place).
DEFAULT_TRAIN_TRANSFORM: dict[str, Any] = {
    "auto_augment": None,
    "re_prob": 0.0,
    "hflip": 0.5,
    "color_jitter": 0.4,
}

# ``create_transform`` keyword arguments a ``train_transform`` dict may set; the others (input size,
# mean/std, crop, prefetcher plumbing) come from the data config or are not ours to change.
_TRAIN_TRANSFORM_KEYS = frozenset(
    {
        "scale",
        "ratio",
        "hflip",
        "vflip",
        "color_jitter",
        "color_jitter_prob",
        "grayscale_prob",
        "gaussian_blur_prob",
        "auto_augment",
        "interpolation",
        "re_prob",
        "re_mode",
        "re_count",
        "train_crop_mode",
        "no_aug",
    }
) & frozenset(inspect.signature(create_transform).parameters)


def to_plain(value: Any) -> Any:
    """A Hydra/OmegaConf value as plain Python: mappings → dict, sequences → tuple."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return tuple(to_plain(v) for v in value)
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


class ClassificationDataModule(SplitLoadersMixin, L.LightningDataModule):
    """Base class: subclasses provide ``class_names``, ``check()`` and ``_build_datasets(stage)``."""

    task = "classification"
    in_chans = 3

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int | None = None,
        train_transform: dict | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = _positive_int(batch_size, "data.batch_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.image_size = None if image_size is None else _positive_int(image_size, "data.image_size")
        self.train_transform_kwargs = self._validate_train_transform(to_plain(train_transform) or {})
        self._model_data_config: dict[str, Any] = {}
        # seed of the per-epoch training order; the runner sets it from the run's seed
        self.shuffle_seed = 0
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    # ------------------------------------------------------------------ contract: metadata
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        """Validate the data cheaply; raise ``DatasetError`` with one sentence when it is unusable."""

    def split_info(self) -> dict[str, dict[str, Any]]:
        """``{split: {"source", "size", "sha256", ...}}`` of train/val/test (see :mod:`visionzoo.provenance`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ contract: data config
    def set_data_config(self, data_config: Mapping[str, Any]) -> None:
        """Take the model's ``timm.data.resolve_model_data_config`` (transforms follow it)."""
        self._model_data_config = dict(to_plain(dict(data_config)))
        self._on_data_config_changed()

    @property
    def data_config(self) -> dict[str, Any]:
        """The resolved config: timm defaults < the model's config < ``image_size``."""
        cfg = dict(DEFAULT_DATA_CONFIG)
        cfg.update({k: v for k, v in self._model_data_config.items() if v is not None})
        size = cfg["input_size"]
        if isinstance(size, int):
            size = (size, size)
        height, width = (int(s) for s in tuple(size)[-2:])
        if self.image_size is not None:
            height = width = self.image_size
        cfg["input_size"] = (self.in_chans, height, width)
        cfg["mean"] = tuple(float(m) for m in cfg["mean"])
        cfg["std"] = tuple(float(s) for s in cfg["std"])
        return cfg

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.data_config["input_size"]

    def build_train_transform(self):
        """timm train transform: random-resized crop + the ``train_transform`` augmentations."""
        cfg = self.data_config
        kwargs = {**DEFAULT_TRAIN_TRANSFORM, "interpolation": cfg["interpolation"]}
        kwargs.update(self.train_transform_kwargs)
        return create_transform(
            cfg["input_size"], is_training=True, mean=cfg["mean"], std=cfg["std"], **kwargs
        )

    def build_eval_transform(self):
        """timm eval transform: resize + center crop at ``crop_pct``."""
        cfg = self.data_config
        return create_transform(
            cfg["input_size"],
            is_training=False,
            interpolation=cfg["interpolation"],
            mean=cfg["mean"],
            std=cfg["std"],
            crop_pct=cfg["crop_pct"],
            crop_mode=cfg["crop_mode"],
        )

    def _validate_train_transform(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - _TRAIN_TRANSFORM_KEYS)
        if unknown:
            raise ConfigError(
                f"data.train_transform has unknown key(s) {', '.join(unknown)}: "
                f"expected some of {', '.join(sorted(_TRAIN_TRANSFORM_KEYS))}."
            )
        return dict(kwargs)

    def _on_data_config_changed(self) -> None:
        """Re-point already built datasets at transforms made from the new data config."""

    # ------------------------------------------------------------------ contract: loaders
    def setup(self, stage: str | None = None) -> None:
        self.check()
        self._build_datasets(stage)

    def _build_datasets(self, stage: str | None) -> None:
        raise NotImplementedError

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
