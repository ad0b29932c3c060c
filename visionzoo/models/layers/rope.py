"""Axial 2-D rotary position embedding (RoPE) over a token grid, as used by HER-Seg's linear attention.

The channels of a ``(..., H*W, C)`` token tensor are read as ``C / 2`` pairs ``(x[2i], x[2i + 1])`` (a complex
number each). The first ``C / 4`` pairs are rotated by ``row * theta_i``, the last ``C / 4`` by
``col * theta_i``, with ``theta_i = 1 / base ** (i / (C / 4))`` for ``i < C / 4``. This is the layout of the
official HER-Seg / MLLA ``RoPE(shape=(H, W, C))`` module, which stores the same angles as a table
``(H, W, C / 2, 2)`` in every block; here the table is built from the grid size at call time (cheap: ``H*W*C / 2``
values, once per forward for all blocks), so one model serves every input size and nothing is stored in
checkpoints.

The rotation is one complex multiply (forward and backward are a single elementwise op each; a real-arithmetic
form with slices and a stack is several times slower in training). ONNX has no complex type, so while
``torch.onnx.export`` traces, the rotations are a real ``(..., 2)`` cos/sin table and the same rotation is written
in real arithmetic. Inputs that are not float32/float64 (bf16 or fp16 under autocast) are rotated in float32 and
cast back.
"""

from __future__ import annotations

import torch

__all__ = ["rope_2d_tables", "rope_2d_rotations", "apply_rope_2d"]


def rope_2d_tables(
    height: int, width: int, dim: int, base: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(height * width, dim // 2)`` float32, rows in row-major grid order.

    ``dim`` is the full channel width the rotation acts on; it must be divisible by 4 (two axes x pairs).
    The angles are computed exactly as the official module computes them (float32 throughout), so the tables are
    bit-identical to the official ``rotations`` buffer.
    """
    if dim % 4:
        raise ValueError(f"2-D RoPE needs a channel width divisible by 4, got {dim}.")
    k = dim // 4
    theta = 1.0 / (base ** (torch.arange(k, device=device) / k))
    rows = torch.arange(height, device=device)[:, None, None] * theta  # (H, 1, k)
    cols = torch.arange(width, device=device)[None, :, None] * theta  # (1, W, k)
    angles = torch.cat([rows.expand(height, width, k), cols.expand(height, width, k)], dim=-1)
    angles = angles.reshape(height * width, 2 * k)
    return torch.cos(angles), torch.sin(angles)


def rope_2d_rotations(
    height: int, width: int, dim: int, base: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """The unit complex rotations ``cos + i sin``, ``(height * width, dim // 2)`` complex64 (during ONNX export:
    the real ``(height * width, dim // 2, 2)`` table of ``(cos, sin)``)."""
    cos, sin = rope_2d_tables(height, width, dim, base, device)
    if not torch.jit.is_scripting():  # (TorchScript cannot compile the ONNX check; it never exports here)
        if torch.onnx.is_in_onnx_export():
            return torch.stack([cos, sin], dim=-1)
    return torch.complex(cos, sin)


def apply_rope_2d(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of ``x`` ``(..., C)`` by ``rotations`` (complex, broadcastable to
    ``(..., C // 2)``, e.g. ``(N, C // 2)`` for ``x`` ``(B, N, C)``)."""
    dtype = x.dtype
    xf = x if dtype in (torch.float32, torch.float64) else x.float()
    if not rotations.is_complex():  # the real (cos, sin) table of an ONNX export
        a, b = xf.reshape(*x.shape[:-1], x.shape[-1] // 2, 2).unbind(-1)
        cos, sin = rotations.unbind(-1)
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(dtype)
    z = torch.view_as_complex(xf.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)) * rotations
    return torch.view_as_real(z).flatten(-2).to(dtype)
