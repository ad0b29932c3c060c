"""Whole-image or sliding-window inference for segmenters (validation, test and ``predict.py``).

Config (``data.inference``, overridable on the command line, e.g. ``data.inference.mode=slide``)::

    inference:
      mode: whole            # whole: one forward pass at the network size | slide: MONAI sliding window
      roi_size: [512, 512]   # window (H, W); slide only
      overlap: 0.5           # fraction of the window shared by neighbours (mmseg's 512/341 stride ~ 0.33)
      blend: gaussian        # gaussian | constant: how overlapping window logits are averaged
      sw_batch_size: 4       # windows per forward pass
      sigma_scale: 0.125     # gaussian blend width, fraction of the window

Sliding windows are MONAI's ``sliding_window_inference`` (inputs smaller than the window are padded and the
padding cropped off again). Blending is a weighted average of window logits, so for a model whose output at a
pixel depends only on that pixel (e.g. 1x1 convs) the result equals whole-image inference exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import sliding_window_inference

from .errors import ConfigError

__all__ = ["SegInferer", "build_inferer"]

_KEYS = {"mode", "roi_size", "overlap", "blend", "sw_batch_size", "sigma_scale"}


class SegInferer:
    """``inferer(model, images) -> logits`` at the size of ``images`` (B×C×H×W -> B×K×H×W)."""

    def __init__(
        self,
        mode: str = "whole",
        roi_size: Sequence[int] | int | None = None,
        overlap: float = 0.5,
        blend: str = "gaussian",
        sw_batch_size: int = 4,
        sigma_scale: float = 0.125,
    ) -> None:
        if mode not in ("whole", "slide"):
            raise ConfigError(f"inference.mode '{mode}' is unknown; expected 'whole' or 'slide'.")
        if blend not in ("gaussian", "constant"):
            raise ConfigError(f"inference.blend '{blend}' is unknown; expected 'gaussian' or 'constant'.")
        if mode == "slide":
            if roi_size is None:
                raise ConfigError("inference.mode=slide needs inference.roi_size, e.g. [512, 512].")
            roi = (
                (int(roi_size), int(roi_size))
                if isinstance(roi_size, int)
                else tuple(int(s) for s in roi_size)
            )
            if len(roi) != 2 or min(roi) < 1:
                raise ConfigError(f"inference.roi_size must be [height, width], got {roi_size!r}.")
            roi_size = roi
        if not 0.0 <= float(overlap) < 1.0:
            raise ConfigError(f"inference.overlap must be in [0, 1), got {overlap!r}.")
        self.mode = mode
        self.roi_size = roi_size
        self.overlap = float(overlap)
        self.blend = blend
        self.sw_batch_size = int(sw_batch_size)
        self.sigma_scale = float(sigma_scale)

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        if self.mode == "whole":
            return model(images)
        return sliding_window_inference(
            images,
            roi_size=self.roi_size,
            sw_batch_size=self.sw_batch_size,
            predictor=model,
            overlap=self.overlap,
            mode=self.blend,
            sigma_scale=self.sigma_scale,
            padding_mode="constant",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "roi_size": list(self.roi_size) if self.roi_size is not None else None,
            "overlap": self.overlap,
            "blend": self.blend,
            "sw_batch_size": self.sw_batch_size,
            "sigma_scale": self.sigma_scale,
        }


def build_inferer(cfg: Mapping[str, Any] | SegInferer | None) -> SegInferer:
    """A :class:`SegInferer` from a config dict (``None``: whole-image); unknown keys end in one sentence."""
    if isinstance(cfg, SegInferer):
        return cfg
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ConfigError(
            f"inference has unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(_KEYS))}."
        )
    return SegInferer(**cfg)
