"""YOLOv8-style convolution blocks (Conv-BN-SiLU, CSP ``C2f``, ``SPPF``), as used by QTSeg's FPN encoder.

``C2f`` and ``SPPF`` recompute themselves in the backward pass when their ``grad_checkpointing`` is set (eager
only; TorchScript compiles the plain path).

Written for :mod:`visionzoo.models.qtseg`; the submodule names (``conv`` / ``bn``, ``conv_transpose``, ``cv1`` /
``cv2`` / ``m``) are the ones YOLOv8-derived checkpoints use, so such weights load without renaming.
Every BatchNorm uses PyTorch's defaults (eps 1e-5, momentum 0.1), as the QTSeg code does (Ultralytics itself
trains with eps 1e-3, momentum 0.03).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ConvBnAct", "ConvTransposeBnAct", "Bottleneck", "C2f", "SPPF"]


class ConvBnAct(nn.Module):
    """``Conv2d`` (no bias, 'same' padding ``k // 2``) -> ``BatchNorm2d`` -> SiLU (or no activation)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False, **dd
        )
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvTransposeBnAct(nn.Module):
    """``ConvTranspose2d`` (no bias, padding 0: upsamples by ``stride`` when ``kernel_size == stride``) -> BN -> SiLU."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int = 2, stride: int = 2, device=None, dtype=None
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv_transpose = nn.ConvTranspose2d(in_chs, out_chs, kernel_size, stride, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_transpose(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvBnAct at constant width; residual when ``shortcut`` is set and the widths agree."""

    def __init__(self, in_chs: int, out_chs: int, shortcut: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.cv1 = ConvBnAct(in_chs, out_chs, 3, **dd)
        self.cv2 = ConvBnAct(out_chs, out_chs, 3, **dd)
        self.add = bool(shortcut) and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two 1x1 convs: split the ``cv1`` output in halves, chain ``n`` bottlenecks on the second
    half, concatenate the halves and every bottleneck output, fuse with ``cv2``."""

    def __init__(
        self, in_chs: int, out_chs: int, n: int = 1, shortcut: bool = False, device=None, dtype=None
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.hidden = out_chs // 2
        self.cv1 = ConvBnAct(in_chs, 2 * self.hidden, 1, **dd)
        self.cv2 = ConvBnAct((2 + n) * self.hidden, out_chs, 1, **dd)
        self.m = nn.ModuleList(Bottleneck(self.hidden, self.hidden, shortcut, **dd) for _ in range(n))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.cv1(x).chunk(2, dim=1)  # unpacked, not list(): FX can trace a fixed-size unpack
        parts = [first, second]
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: 1x1 conv to half width, three chained stride-1 max-pools of size ``k``,
    concatenation of the four maps, 1x1 conv (equivalent to pooling with k, 2k-1, 3k-2 in parallel)."""

    def __init__(self, in_chs: int, out_chs: int, k: int = 5, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden = in_chs // 2
        self.cv1 = ConvBnAct(in_chs, hidden, 1, **dd)
        self.cv2 = ConvBnAct(hidden * 4, out_chs, 1, **dd)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))
