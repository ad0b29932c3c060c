"""Attention blocks that can sit between two ResNet bottlenecks (Re-ID backbones, :mod:`visionzoo.models.reid`).

``LightweightAttentionBlock`` ("lab") is **our own design**: the paper it is named after (Eisenbach et al.,
"A Little Bit Attention Is All You Need for Person Re-Identification", ICRA 2023, arXiv 2302.14574) could not be
read here, so its block is *not* reproduced. Ours follows the paper's stated goal -- attention that barely slows
inference -- with a channel gate and a spatial gate that are both computed from pooled statistics, applied in one
multiplication, and exactly the identity at initialisation (so it can be inserted into an ImageNet-pretrained
ResNet without disturbing it)::

    c = sigmoid(conv1d_k(avgpool_hw(x)))                          # ECA-style channel gate, (B, C, 1, 1), no bias
    s = sigmoid(conv7x7([mean_c(x), max_c(x)]))                   # CBAM-style spatial gate, (B, 1, H, W)
    y = x + gamma * c * s * x                                     # gamma: per-channel, initialised to 0

Cost per block: ``k + 2 * 49 + 1 + C`` weights; three cheap reductions over ``x`` and two full-size elementwise
passes (the gate and a fused multiply-add), no ``C``-wide convolution. A first version gated each channel with its
own 7x7 depthwise convolution: on the CPU that cost as much as a whole bottleneck (layer2 of the 256x128 Re-ID
ResNet-50 at batch 32: 107 ms vs 113 ms for the bottleneck, interleaved), so it was replaced; this one takes 32 ms
there and adds +1.9% to the network at the default positions (``benchmarks/reid.py``, docs/benchmarks.md).
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
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, **dd)
        self.gamma = nn.Parameter(torch.zeros(channels, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.sigmoid(self.channel_conv(x.mean((2, 3)).unsqueeze(1))).squeeze(1)  # (B, C)
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (B, 2, H, W)
        s = torch.sigmoid(self.spatial_conv(stats))  # (B, 1, H, W)
        gate = (c * self.gamma).unsqueeze(-1).unsqueeze(-1) * s  # (B, C, H, W)
        return torch.addcmul(x, x, gate)


#: ``attn_block`` names -> timm ``get_attn`` names (``lab`` is ours).
ATTN_BLOCKS = {"lab": "lab", "se": "se", "cbam": "cbam", "eca": "eca", "nonlocal": "nl"}


def create_reid_attn(name: str, channels: int, device=None, dtype=None) -> nn.Module:
    """An attention block for ``channels`` channels: ``lab`` (ours) or timm's ``se``/``cbam``/``eca``/``nl``."""
    if name not in ATTN_BLOCKS:
        raise ValueError(f"attn_block must be one of {', '.join(ATTN_BLOCKS)}, got {name!r}.")
    if name == "lab":
        return LightweightAttentionBlock(channels, device=device, dtype=dtype)
    return get_attn(ATTN_BLOCKS[name])(channels, device=device, dtype=dtype)
