"""Reference bi-level routing attention, computed the way the official legacy BiFormer code does it.

Straightforward and slow on purpose; it is the yardstick for
:class:`visionzoo.models.layers.BiLevelRoutingAttention` (tests check outputs and gradients agree, the
benchmark times both). Same parameters (``qkv``, ``proj``, ``lepe``), same semantics, official order of work:

* partition into regions first, project the region-laid-out tokens;
* region means with ``mean`` over (h, w), routing on detached means, ``torch.topk``, routing softmax computed
  and unused (as in the official code);
* **broadcast** K/V to ``(B, S^2, S^2, hw, 2C)`` with ``expand`` and ``torch.gather`` the routed regions
  (k redundant copies; the backward scatters into the full broadcast shape);
* plain ``softmax(q k^T * scale) v`` with explicit matmuls (the attention matrix is kept for the backward).

Swap it into a model with :func:`use_reference` (and back with :func:`use_efficient`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.errors import InputSizeError
from visionzoo.models.layers.routing_attention import BiLevelRoutingAttention

__all__ = ["ReferenceBiLevelRoutingAttention", "use_reference", "use_efficient"]


class ReferenceBiLevelRoutingAttention(BiLevelRoutingAttention):
    """Same module, official-style forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H_in, W_in, C = x.shape
        S = self.n_win
        pad_b, pad_r = (-H_in) % S, (-W_in) % S
        if pad_b or pad_r:
            if not self.auto_pad:
                raise InputSizeError(f"{H_in}x{W_in} is not divisible by n_win={S}.")
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # legacy: zero-pad before the projection
        _, H, W, _ = x.shape
        h, w = H // S, W // S
        m, d, k = self.num_heads, C // self.num_heads, self.topk

        # 'n (j h) (i w) c -> n (j i) h w c'
        x = x.view(N, S, h, S, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, S * S, h, w, C)
        qkv = self.qkv(x)  # (N, S2, h, w, 3C)
        q, kv = qkv[..., :C], qkv[..., C:]
        q_pix = q.reshape(N, S * S, h * w, C)
        kv_pix = kv.reshape(N, S * S, h * w, 2 * C)

        # region-level query / key, routing on detached descriptors
        q_win, k_win = q.mean(dim=(2, 3)), kv[..., :C].mean(dim=(2, 3))
        logits = (q_win.detach() * self.scale) @ k_win.detach().transpose(-2, -1)  # (N, S2, S2)
        topk_logits, r_idx = torch.topk(logits, k=k, dim=-1)
        _r_weight = torch.softmax(topk_logits, dim=-1)  # computed, never used (mul_weight='none')

        # LCE on V laid out as the full map: 'n (j i) h w c -> n c (j h) (i w)'
        v_img = kv[..., C:].reshape(N, S, S, h, w, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)
        lepe = self.lepe(v_img).permute(0, 2, 3, 1) if self.lepe is not None else 0.0

        # gather from the broadcast K/V: (N, S2, S2, hw, 2C) -> (N, S2, k, hw, 2C)
        hw = h * w
        kv_sel = torch.gather(
            kv_pix.view(N, 1, S * S, hw, 2 * C).expand(-1, S * S, -1, -1, -1),
            dim=2,
            index=r_idx.view(N, S * S, k, 1, 1).expand(-1, -1, -1, hw, 2 * C),
        )
        k_sel = (
            kv_sel[..., :C]
            .reshape(N, S * S, k, hw, m, d)
            .permute(0, 1, 4, 5, 2, 3)
            .reshape(N * S * S, m, d, k * hw)
        )
        v_sel = (
            kv_sel[..., C:]
            .reshape(N, S * S, k, hw, m, d)
            .permute(0, 1, 4, 2, 3, 5)
            .reshape(N * S * S, m, k * hw, d)
        )
        q_pix = q_pix.reshape(N, S * S, hw, m, d).permute(0, 1, 3, 2, 4).reshape(N * S * S, m, hw, d)

        attn = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1)  # (N*S2, m, hw, k*hw)
        out = attn @ v_sel  # (N*S2, m, hw, d)
        # '(n j i) m (h w) c -> n (j h) (i w) (m c)'
        out = out.view(N, S, S, m, h, w, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(N, H, W, C)

        out = self.proj(out + lepe)
        if pad_b or pad_r:
            out = out[:, :H_in, :W_in].contiguous()
        return out


def _swap(model: nn.Module, cls: type) -> nn.Module:
    for module in model.modules():
        if isinstance(module, BiLevelRoutingAttention):
            module.__class__ = cls
    return model


def use_reference(model: nn.Module) -> nn.Module:
    """Make every bi-level routing attention in ``model`` run the reference forward (in place)."""
    return _swap(model, ReferenceBiLevelRoutingAttention)


def use_efficient(model: nn.Module) -> nn.Module:
    """Undo :func:`use_reference` (in place)."""
    return _swap(model, BiLevelRoutingAttention)
