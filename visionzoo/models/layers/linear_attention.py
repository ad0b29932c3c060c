"""Linear attention with an ELU+1 kernel, 2-D RoPE, a gated value bottleneck and LePE (HER-Seg's DLA core).

:class:`LinearAttention` is the attention of one HER-Seg CE-encoder block (the official ``LinearAttention`` of
``SAM/LGViT.py``); the block around it adds the post-filter gate. For tokens ``x`` ``(B, N, C)`` on an
``H x W`` grid, with ``phi(t) = ELU(t) + 1`` and per head ``h`` (``d = C / heads`` channels):

* ``Q, K = split(qk(x))``; the value is a *pre-filter gate* on the input itself,
  ``V = down_proj(SiLU(up_proj(x)))`` (``C -> C/4 -> C``; the official names are swapped: ``up_proj`` is the
  narrowing layer, kept so official checkpoints load unchanged);
* ``Z = 1 / (phi(Q) . mean_n phi(K) + 1e-6)`` -- the normaliser uses the *un-rotated* kernels;
* ``KV = RoPE(phi(K))^T V / N`` (``d x d``), ``out = (RoPE(phi(Q)) KV) * Z``; RoPE acts on all ``C`` channels
  before the head split (:mod:`visionzoo.models.layers.rope`);
* plus LePE: a depthwise 3x3 conv (with bias) of ``V`` laid out on the grid.

The cost is linear in ``N``: ``O(N C d)`` for the products, nothing of size ``N x N`` is formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .rope import apply_rope_2d

__all__ = ["LinearAttention"]

# FX: the rotation reads the tensor's dtype and unpacks its shape in Python, so symbolic tracing keeps it as one
# call: timm's tracer (autowrap) and torch.fx's default one (fx.wrap patches this module's name).
register_notrace_function(apply_rope_2d)
torch.fx.wrap("apply_rope_2d")


class LinearAttention(nn.Module):
    """See the module docstring. ``forward(x, hw, rope)``: ``x`` ``(B, H*W, C)``, ``hw = (H, W)``, ``rope`` the
    complex rotations of the grid (:func:`~visionzoo.models.layers.rope.rope_2d_rotations`) -> ``(B, H*W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        value_ratio: float = 0.25,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.dim = dim
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        hidden = int(dim * value_ratio)
        self.up_proj = nn.Linear(dim, hidden, **dd)  # C -> C/4 (official name)
        self.down_proj = nn.Linear(hidden, dim, **dd)  # C/4 -> C (official name)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], rope: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, W = hw
        m = self.num_heads
        d = C // m
        v = self.down_proj(F.silu(self.up_proj(x)))
        qk = (F.elu(self.qk(x)) + 1.0).view(B, N, 2, C)  # phi(Q), phi(K)
        qk_rope = apply_rope_2d(qk, rope[:, None])  # both in one pass (the table broadcasts over q / k)
        q, k = qk.view(B, N, 2, m, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, m, N, d)
        q_rope, k_rope = qk_rope.view(B, N, 2, m, d).permute(2, 0, 3, 1, 4).unbind(0)
        vh = v.view(B, N, m, d).transpose(1, 2)

        z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, m, N, 1)
        scale = N**-0.5
        kv = (k_rope.transpose(-2, -1) * scale) @ (vh * scale)  # (B, m, d, d)
        out = (q_rope @ kv) * z
        out = out.transpose(1, 2).reshape(B, N, C)
        lepe = self.lepe(v.transpose(1, 2).reshape(B, C, H, W))
        return out + lepe.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
