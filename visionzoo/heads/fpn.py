"""Semantic FPN head (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019).

The "S-FPN" of the BiFormer / PVT / PoolFormer ADE20K tables (mmseg's FPN neck + ``FPNHead``):

* FPN neck: a 1x1 lateral conv per level to ``channels`` (256), a top-down pathway (nearest upsampling of the
  coarser level, added), and a 3x3 output conv per level;
* semantic head: from each level at stride ``4 * 2**i``, ``max(1, i)`` blocks of 3x3 conv (``head_channels``,
  128) + norm + ReLU, each followed by a 2x bilinear upsample until stride 4; the levels are summed and a 1x1
  conv classifies (logits at stride 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import ConvNormReLU, SegClassifier, resize


class FPNHead(nn.Module):
    """Semantic FPN over ``len(in_channels)`` feature levels (finest first, each stride twice the previous).

    Args:
        in_channels: channels of each input level, finest (stride 4) first.
        num_classes: output classes.
        channels: FPN neck width (256).
        head_channels: width of the per-level upsampling branches (128).
        dropout: Dropout2d before the classifier (0.1).
        norm_layer: norm of the upsampling branches (``'batchnorm'``; the paper uses ``'groupnorm'``).
        align_corners: bilinear resampling flag of the upsampling branches.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
        norm_layer: str | None = "batchnorm",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for level in range(len(in_channels)):
            n = max(1, level)
            self.scale_heads.append(
                nn.ModuleList(
                    ConvNormReLU(channels if k == 0 else head_channels, head_channels, 3, norm_layer)
                    for k in range(n)
                )
            )
        self.classifier = SegClassifier(head_channels, num_classes, dropout)

    def neck(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The FPN pyramid: one ``channels``-wide map per input level."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPNHead was built for {len(self.in_channels)} levels, got {len(features)}.")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        return [conv(lat) for conv, lat in zip(self.output_convs, laterals, strict=True)]

    def forward_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        pyramid = self.neck(features)
        sizes = [p.shape[-2:] for p in pyramid]
        out = None
        for level, (x, blocks) in enumerate(zip(pyramid, self.scale_heads, strict=True)):
            for k, block in enumerate(blocks):
                x = block(x)
                if level > 0:  # one 2x step per block: stride 4 * 2**level -> 4 after `level` blocks
                    x = resize(x, sizes[level - 1 - k], self.align_corners)
            out = x if out is None else out + x
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.forward_features(features))
