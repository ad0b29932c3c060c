"""UPerNet decode head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018).

The head that Swin, BiFormer, DaViT and most backbone papers report ADE20K numbers with (mmseg's ``UPerHead``
configuration): a pyramid pooling module (PPM, Zhao et al. PSPNet) on the coarsest feature level, an FPN
top-down pathway over the others, every level resampled to the finest one (stride 4), concatenated, fused by a
3x3 conv and classified by a 1x1 conv. All convs are conv + BatchNorm + ReLU; ``channels`` is 512 by default.

:class:`FCNHead` is the auxiliary head trained alongside it (on stage 3, loss weight 0.4 in the usual recipes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import AdaptiveAvgPool, ConvNormReLU, SegClassifier, resize


class PyramidPooling(nn.Module):
    """Average-pool to each ``pool_scales`` grid, 1x1 conv, upsample back and concatenate with the input."""

    def __init__(
        self, in_chs: int, channels: int, pool_scales: Sequence[int], norm: str | None, align_corners: bool
    ):
        super().__init__()
        self.align_corners = align_corners
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(int(s)), ConvNormReLU(in_chs, channels, 1, norm))
            for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.training and x.shape[0] == 1 and any(isinstance(m, nn.BatchNorm2d) for m in self.modules()):
            raise ValueError(
                "UPerNet's pyramid pooling (1x1 pooled map + BatchNorm) cannot train on a batch of one image; "
                "use data.batch_size >= 2 or model.head_kwargs.norm_layer=groupnorm."
            )
        return torch.cat([x, *(resize(stage(x), size, self.align_corners) for stage in self.stages)], dim=1)


class UPerHead(nn.Module):
    """UPerNet head over ``len(in_channels)`` feature levels (finest first), returning logits at the finest level.

    Args:
        in_channels: channels of each input level, finest (stride 4) first.
        num_classes: output classes.
        channels: width of every internal conv (mmseg: 512).
        pool_scales: PPM grid sizes on the last level (PSPNet: 1, 2, 3, 6).
        dropout: Dropout2d before the classifier (mmseg: 0.1).
        norm_layer: ``'batchnorm'``, ``'syncbatchnorm'``, ``'groupnorm'`` or ``None``.
        align_corners: bilinear resampling flag (mmseg: False).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: str | None = "batchnorm",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 2:
            raise ValueError("UPerHead needs at least two feature levels.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.align_corners = align_corners
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm_layer, align_corners)
        self.ppm_bottleneck = ConvNormReLU(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, norm_layer
        )
        self.lateral_convs = nn.ModuleList(ConvNormReLU(c, channels, 1, norm_layer) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvNormReLU(channels, channels, 3, norm_layer) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvNormReLU(len(in_channels) * channels, channels, 3, norm_layer)
        self.classifier = SegClassifier(channels, num_classes, dropout)

    def forward_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused stride-4 map before the classifier."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"UPerHead was built for {len(self.in_channels)} levels, got {len(features)}.")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self.ppm_bottleneck(self.ppm(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse to fine
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[-2:], self.align_corners
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([resize(o, size, self.align_corners) for o in outs], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.forward_features(features))


class FCNHead(nn.Module):
    """Auxiliary FCN head on one feature level: ``num_convs`` 3x3 conv-norm-ReLU, dropout, 1x1 classifier.

    ``in_index`` picks the level from the backbone's feature list (2 = stride 16, as in the UPerNet recipes).
    """

    def __init__(
        self,
        in_channels: Sequence[int] | int,
        num_classes: int,
        in_index: int = 2,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
        norm_layer: str | None = "batchnorm",
    ) -> None:
        super().__init__()
        chs = in_channels if isinstance(in_channels, int) else list(in_channels)[in_index]
        self.in_index = in_index
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers.append(ConvNormReLU(chs if i == 0 else channels, channels, 3, norm_layer))
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        self.classifier = SegClassifier(channels if num_convs else chs, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else features[self.in_index]
        return self.classifier(self.convs(x))
