"""Attention blocks that can sit between two ResNet bottlenecks (Re-ID backbones, :mod:`visionzoo.models.reid`).

``LightweightAttentionBlock`` ("lab") is **our own design**: the paper it is named after (Eisenbach et al.,
"A Little Bit Attention Is All You Need for Person Re-Identification", ICRA 2023, arXiv 2302.14574) could not be
read here, so its block is *not* reproduced. Ours is a cheap channel + spatial gate, exactly the identity at
initialisation so that it can be inserted into an ImageNet-pretrained ResNet without disturbing it::

    c = sigmoid(conv1d_k(avgpool(x)))          # ECA-style channel gate, (B, C, 1, 1), k odd, no bias
    s = sigmoid(dwconv7x7(x))                 # depthwise spatial gate, (B, C, H, W)
    y = x + gamma * (x * c * s)               # gamma: per-channel, initialised to 0

Cost per block: ``k + 50 C`` weights (+ ``C`` for gamma), about ``49 H W C`` MACs.
"""

from __future__ import annotations

import math

import torch
from timm.layers import get_attn
from torch import nn

__all__ = ["ATTN_BLOCKS", "LightweightAttentionBlock", "create_reid_attn"]


def _eca_kernel(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive 1D kernel size (odd, >= 3)."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class LightweightAttentionBlock(nn.Module):
    """Our lightweight attention block (see the module docstring); identity at initialisation."""

    def __init__(
        self,
        channels: int,
        spatial_kernel: int = 7,
        channel_kernel: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        k = channel_kernel or _eca_kernel(channels)
        self.channel_conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False, **dd)
        self.spatial_conv = nn.Conv2d(
            channels, channels, spatial_kernel, padding=spatial_kernel // 2, groups=channels, **dd
        )
        self.gamma = nn.Parameter(torch.zeros(channels, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C)
        c = torch.sigmoid(self.channel_conv(c)).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)
        s = torch.sigmoid(self.spatial_conv(x))
        return x + self.gamma.view(1, -1, 1, 1) * (x * c * s)


#: ``attn_block`` names -> timm ``get_attn`` names (``lab`` is ours).
ATTN_BLOCKS = {"lab": "lab", "se": "se", "cbam": "cbam", "eca": "eca", "nonlocal": "nl"}


def create_reid_attn(name: str, channels: int, device=None, dtype=None) -> nn.Module:
    """An attention block for ``channels`` channels: ``lab`` (ours) or timm's ``se``/``cbam``/``eca``/``nl``."""
    if name not in ATTN_BLOCKS:
        raise ValueError(f"attn_block must be one of {', '.join(ATTN_BLOCKS)}, got {name!r}.")
    if name == "lab":
        return LightweightAttentionBlock(channels, device=device, dtype=dtype)
    return get_attn(ATTN_BLOCKS[name])(channels, device=device, dtype=dtype)
