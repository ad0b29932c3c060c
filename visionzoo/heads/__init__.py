"""Dense heads that sit on any ``features_only`` backbone (four levels, strides 4/8/16/32).

``build_head('upernet' | 'fpn', in_channels, num_classes, **kwargs)``; the heads return logits at the finest
input level (stride 4); :class:`visionzoo.models.dense.DenseSegmenter` upsamples them to the input size.

Written here (a few dozen lines each) rather than taken from segmentation_models_pytorch or mmsegmentation:
neither is a dependency, and smp's heads come bundled with its own encoder wrappers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .fpn import FPNHead
from .upernet import FCNHead, PyramidPooling, UPerHead

HEADS: dict[str, type[nn.Module]] = {"upernet": UPerHead, "fpn": FPNHead, "fcn": FCNHead}


def build_head(name: str, in_channels: list[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """A head by name; ``None`` kwargs take the head's default; unknown names and kwargs end in one sentence."""
    key = str(name).lower()
    if key not in HEADS:
        raise ConfigError(f"model.head '{name}' is unknown; expected one of {sorted(HEADS)} (or null).")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # null in a config: the head's default
    try:
        return HEADS[key](in_channels, num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.head_kwargs do not fit the '{key}' head: {err}.") from None


__all__ = ["FCNHead", "FPNHead", "HEADS", "PyramidPooling", "UPerHead", "build_head"]
