"""Building blocks shared by the dense heads."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "syncbatchnorm": nn.SyncBatchNorm,
    "groupnorm": lambda c: nn.GroupNorm(32 if c % 32 == 0 else 1, c),
}


def norm_layer(name: str | None) -> Callable[[int], nn.Module] | type[nn.Identity]:
    """``'batchnorm'`` (default, as mmseg's heads), ``'syncbatchnorm'``, ``'groupnorm'`` (32 groups) or ``None``."""
    if name is None or name == "none":
        return nn.Identity
    try:
        return _NORMS[str(name).lower()]
    except KeyError:
        raise ConfigError(
            f"head norm_layer '{name}' is unknown; expected one of {sorted(_NORMS)} or null."
        ) from None


class ConvNormReLU(nn.Sequential):
    """conv (bias only without a norm) + norm + ReLU, mmseg's ``ConvModule`` default.

    Written out rather than timm's ``ConvNormAct`` because that one fuses norm and activation through
    ``get_norm_act_layer``, which does not take a GroupNorm with a computed group count or no norm at all.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int = 1, norm: str | None = "batchnorm"
    ) -> None:
        layer = norm_layer(norm)
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=layer is nn.Identity),
            layer(out_chs),
            nn.ReLU(inplace=True),
        )


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class SegClassifier(nn.Module):
    """Dropout2d + 1x1 conv to class logits (mmseg's ``cls_seg``)."""

    def __init__(self, in_chs: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(in_chs, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` that also exports to ONNX when the input's height and width are only
    known at run time (ONNX's exporter needs static sizes for adaptive pooling; a padded or traced backbone
    gives dynamic ones). While ``torch.onnx.export`` traces, the pooling is written as two averaging matrices built
    from the input size, with PyTorch's bins (``floor(i * n / s)`` to ``ceil((i + 1) * n / s)``); eager runs the
    usual kernel."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = int(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.adaptive_avg_pool2d(x, self.output_size)
        rows = _bin_matrix(x.shape[-2], self.output_size, x)
        cols = _bin_matrix(x.shape[-1], self.output_size, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _bin_matrix(n: torch.Tensor | int, s: int, like: torch.Tensor) -> torch.Tensor:
    """``(s, n)`` matrix whose row ``i`` averages input positions ``[floor(i n / s), ceil((i + 1) n / s))``."""
    i = torch.arange(s, device=like.device)
    start = torch.div(i * n, s, rounding_mode="floor")
    end = torch.div((i + 1) * n + s - 1, s, rounding_mode="floor")
    j = torch.arange(n, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)
