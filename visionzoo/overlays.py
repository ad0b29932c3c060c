"""Colour masks and blend them over images (validation pictures and ``predict.py``)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["colorize", "denormalize", "overlay", "palette", "to_rgb"]


def palette(num_classes: int) -> np.ndarray:
    """``num_classes × 3`` uint8 colours, well separated (golden-ratio hue steps, alternating brightness)."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat = 0.85 if i % 3 else 0.6
        val = 0.95 if i % 2 == 0 else 0.7
        colors.append([round(c * 255) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return np.asarray(colors, dtype=np.uint8).reshape(num_classes, 3)


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mode: str = "mean_std",
) -> np.ndarray:
    """A normalised ``C×H×W`` tensor back to an ``H×W×3`` uint8 picture.

    ``mode``: ``mean_std`` (undo ``(x - mean) / std``; min-max scaled when mean/std are unknown), ``minmax``
    (values in [-1, 1]) or ``none`` (values in [0, 1]).
    """
    x = image.detach().float().cpu()
    if mode == "minmax":
        x = (x + 1) / 2
    elif mode == "none":
        pass
    elif mean is not None and std is not None:
        c = x.shape[0]
        m, s = torch.tensor(list(mean)), torch.tensor(list(std))
        if m.numel() != c:  # e.g. 4 MRI channels normalised with the average statistics
            m, s = m.mean().expand(c), s.mean().expand(c)
        x = x * s.view(-1, 1, 1) + m.view(-1, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    return (x[:3].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(
    mask: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Class indices ``H×W`` -> ``H×W×3`` uint8 colours (ignored / out-of-range labels black)."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    colors = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
    idx = np.where(
        (mask >= 0) & (mask < num_classes) & (mask != (ignore_index if ignore_index is not None else -1)),
        mask,
        num_classes,
    )
    return colors[idx]


def overlay(
    image: np.ndarray,
    mask: np.ndarray | torch.Tensor,
    num_classes: int,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    transparent_background: bool | None = None,
) -> np.ndarray:
    """``image`` (H×W×3 uint8) with the coloured ``mask`` blended in at ``alpha``.

    Ignored pixels stay uncoloured; so does class 0 when ``transparent_background`` (default: for binary
    foreground/background sets, ``num_classes <= 2``).
    """
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if transparent_background is None:
        transparent_background = num_classes <= 2
    color = colorize(mask, num_classes, ignore_index).astype(np.float32)
    paint = (mask >= 0) & (mask < num_classes)
    if ignore_index is not None:
        paint &= mask != ignore_index
    if transparent_background:
        paint &= mask != 0
    out = image.astype(np.float32)
    out[paint] = (1 - alpha) * out[paint] + alpha * color[paint]
    return out.round().clip(0, 255).astype(np.uint8)


def to_rgb(picture: np.ndarray, color_space: str = "RGB") -> np.ndarray:
    """An ``H×W×3`` uint8 picture in ``color_space`` (an OpenCV name such as ``YCrCb``) back to RGB."""
    if str(color_space).upper() == "RGB":
        return picture
    import cv2

    wanted = f"COLOR_{color_space}2RGB".upper()  # OpenCV spells them COLOR_YCrCb2RGB, COLOR_HSV2RGB, ...
    code = next((getattr(cv2, n) for n in dir(cv2) if n.upper() == wanted), None)
    return cv2.cvtColor(np.ascontiguousarray(picture), code) if code is not None else picture
