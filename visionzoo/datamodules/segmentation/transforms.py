"""Image + mask pipelines for segmentation, built with albumentations from plain YAML lists.

A data config's ``train_transform`` is a list of ``{name: <albumentations class>, **kwargs}`` dicts,
e.g. ``[{name: HorizontalFlip, p: 0.5}, {name: Affine, rotate: [-30, 30], p: 0.5}]``; a composition
(``OneOf``, ``SomeOf``, ``Sequential``) takes its children under ``transforms:``. Each op is built as
``getattr(albumentations, name)(**kwargs)`` (albumentations moves the mask along with geometric ops,
using nearest-neighbour interpolation for masks).

Pipelines (``size`` = the network input ``(h, w)``):

* train: the ``resize`` step, then the ``train_transform`` ops, then (only when the ops left another
  size, e.g. after ``RandomScale``) a stretch to ``size`` so that samples batch;
* eval / predict (``eval_resize``): ``stretch`` (default) -- ``Resize(h, w)`` to the network size; or
  ``shortest`` -- mmseg's ``Resize(img_scale=(4 * s, s), keep_ratio=True)`` with ``s = min(h, w)``: the
  image is scaled by ``min(s / short side, 4 s / long side)``, aspect kept (ADE20K's official test
  pipeline, ``img_scale=(2048, 512)``); images then differ in size, so the network must take any size
  (e.g. BiFormer with ``auto_pad``) and the evaluation batch must be 1. Never a crop or a pad, so a
  prediction resized back to the original ``h_i × w_i`` lines up with the original mask pixel for pixel.

``resize`` modes: ``stretch`` (``Resize(h, w)``, the default) or ``shortest`` (``SmallestMaxSize``:
the short side to ``min(h, w)``, aspect kept; the ops are then expected to crop, as in the ADE20K
recipe ``RandomScale → PadIfNeeded → RandomCrop``).

Normalisation is not an albumentations op here: :class:`Normalizer` turns the augmented array into a
float tensor after the ops, so a new data config (mean/std) never rebuilds the pipelines.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from ...errors import ConfigError

RESIZE_MODES = ("stretch", "shortest")
EVAL_RESIZE_MODES = ("stretch", "shortest")
_COMPOSITIONS = {"OneOf", "SomeOf", "Sequential", "OneOrOther", "SelectiveChannelTransform", "RandomOrder"}


def _build_op(spec: Any, where: str) -> A.BasicTransform | A.BaseCompose:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"{where} must be a mapping with a 'name' key (e.g. {{name: HorizontalFlip, p: 0.5}}), got {spec!r}."
        )
    kwargs = {str(k): _plain(v) for k, v in spec.items() if k != "name"}
    name = str(spec["name"])
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform | A.BaseCompose):
        raise ConfigError(
            f"{where}.name '{name}' is not an albumentations transform (see albumentations' list of transforms)."
        )
    if name in _COMPOSITIONS or issubclass(cls, A.BaseCompose):
        children = kwargs.pop("transforms", None)
        if not isinstance(children, list) or not children:
            raise ConfigError(f"{where} ({name}) needs a non-empty 'transforms:' list of ops.")
        kwargs["transforms"] = [_build_op(c, f"{where}.transforms[{i}]") for i, c in enumerate(children)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            op = cls(**kwargs)
        except (TypeError, ValueError) as err:
            first = " ".join(str(err).split())[:300]
            raise ConfigError(f"{where} ({name}) has invalid arguments: {first}.") from err
    for w in caught:
        if "not valid" in str(w.message):
            raise ConfigError(f"{where} ({name}): {w.message}.")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return op


def _plain(value: Any) -> Any:
    """YAML lists become tuples where albumentations wants ranges; mappings stay mappings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = [_plain(v) for v in value]
        # a list of op specs (children of a composition) stays a list
        return items if items and isinstance(items[0], Mapping) else tuple(items)
    return value


def build_ops(specs: Any, where: str = "data.train_transform") -> list:
    """``[{name: X, **kwargs}, ...]`` → a list of albumentations transforms (ConfigError on mistakes)."""
    if specs is None:
        return []
    if isinstance(specs, Mapping) or not isinstance(specs, Sequence) or isinstance(specs, str | bytes):
        raise ConfigError(
            f"{where} must be a list of albumentations ops such as [{{name: HorizontalFlip, p: 0.5}}], got {specs!r}."
        )
    return [_build_op(s, f"{where}[{i}]") for i, s in enumerate(specs)]


def _resize_step(size: tuple[int, int], mode: str) -> A.BasicTransform:
    h, w = size
    if mode == "stretch":
        return A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
    if mode == "shortest":
        return A.SmallestMaxSize(
            max_size=min(h, w), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
        )
    raise ConfigError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}.")


def train_pipeline(size: tuple[int, int], ops: list, resize: str = "stretch") -> A.Compose:
    return A.Compose([_resize_step(size, resize), *ops])


class KeepRatioResize:
    """mmseg's keep-ratio ``Resize(img_scale=(long_max, short_max))``: one scale factor
    ``min(short_max / short side, long_max / long side)``, linear for images, nearest for masks."""

    def __init__(self, short_max: int, long_max: int) -> None:
        self.short_max, self.long_max = int(short_max), int(long_max)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        h, w = image.shape[:2]
        scale = min(self.short_max / min(h, w), self.long_max / max(h, w))
        new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
        out = {"image": cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)}
        if mask is not None:
            out["mask"] = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return out


def eval_pipeline(size: tuple[int, int], mode: str = "stretch") -> A.Compose | KeepRatioResize:
    if mode == "shortest":
        return KeepRatioResize(min(size), 4 * min(size))
    if mode != "stretch":
        raise ConfigError(f"data.eval_resize must be one of {', '.join(EVAL_RESIZE_MODES)}, got {mode!r}.")
    return A.Compose([_resize_step(size, "stretch")])


def fit_to_size(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Stretch ``image`` (linear) and ``mask`` (nearest) to ``size`` when they are not that size yet."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, mask


class Normalizer:
    """An ``H×W×C`` array (uint8 0..255 or float) → a float ``C×H×W`` tensor.

    ``mode``: ``mean_std`` ((x/255 − mean)/std for 8-bit images; float images are taken as already in
    0..1), ``minmax`` (per-image min-max to [−1, 1], QTSeg's normalisation) or ``none`` (x/255 for 8-bit
    images, float images unchanged).
    """

    def __init__(self, mode: str, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        if mode not in ("mean_std", "minmax", "none"):
            raise ConfigError(f"normalisation mode must be mean_std, minmax or none, got {mode!r}.")
        self.mode = mode
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = image.astype(np.float32)
        if image.ndim == 2:
            x = x[..., None]
        if self.mode == "minmax":
            lo, hi = float(x.min()), float(x.max())
            x = (x - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(x)
        else:
            if image.dtype == np.uint8:
                x /= 255.0
            if self.mode == "mean_std":
                c = x.shape[-1]
                # a channel count other than the config's (e.g. 4 MRI modalities): the average mean/std
                mean = self.mean if self.mean.size == c else np.full(c, self.mean.mean(), np.float32)
                std = self.std if self.std.size == c else np.full(c, self.std.mean(), np.float32)
                x = (x - mean) / std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
