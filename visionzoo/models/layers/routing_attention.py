"""Bi-level routing attention (BRA) from BiFormer (Zhu et al., CVPR 2023, arXiv:2303.08810), efficient form.

The math is that of the official legacy implementation (the one the released BiFormer-T/S/B checkpoints use):

1. One linear projection ``qkv`` (C -> 3C, with bias) over all tokens of the NHWC map, split q | k | v.
2. The map is cut into an ``n_win x n_win`` grid of regions (row-major over the grid, row-major tokens inside
   a region). Region-level queries/keys are the means of q and k over each region, **detached** (the routing
   receives no gradient, as in the official ``diff_routing=False``).
3. Region affinity ``(q_r * scale) @ k_r^T`` -> ``topk`` regions per query region, shared by all heads. The
   routing weights are not used (hard routing).
4. Each query region attends (per head) to the tokens of its ``topk`` routed regions, with
   ``scale = C ** -0.5`` -- the full channel width, **not** ``head_dim ** -0.5`` (an official quirk that the
   released weights depend on).
5. LCE: a 5x5 depthwise conv over V laid out as the full image map is added to the attention output, then the
   output projection ``proj`` (the official ``wo``).

How this implementation differs from the official one (only in how, never in what):

* The official code broadcasts the region-partitioned K/V to ``(B, S^2, S^2, hw, 2C)`` and ``torch.gather``\\ s
  the routed regions out of that. The gather itself is fine in the forward, but its backward allocates and
  scatters into a zero tensor of the full broadcast shape: ``S^2 = 49`` times the K/V size. Here the routed
  regions are picked with a single ``index_select`` on the ``(B * S^2, hw, 2C)`` tensor with flattened
  indices, so the backward is an ``index_add`` into a tensor of K/V size.
* Token attention runs through ``F.scaled_dot_product_attention`` with an explicit ``scale``, so the
  ``(hw x k*hw)`` attention matrices are not kept for the backward on fused backends. In training the
  ``topk``-fold gathered K/V are not kept either (``recompute_kv``): the gather + attention forward is recomputed
  in the backward, which keeps only K/V-sized tensors alive.
* When the routed regions are a large share of all regions (``n_win**2 <= dense_ratio * topk``, default 4:
  stage 3 of the 224 px models, 16 of 49 regions) the gather costs more than it saves: there every query token
  attends to all tokens with a boolean mask that keeps exactly its routed regions. Same set of keys, same
  softmax, at most ``dense_ratio`` times the (small) attention FLOPs and no gather/scatter traffic.

Padding (``auto_pad``, on by default). A map that the ``n_win x n_win`` grid does not divide is zero-padded
at the bottom/right up to the next multiple of ``n_win`` **before the qkv projection** (the legacy semantics),
BRA runs on the padded map and the output is cropped. The padded tokens therefore carry the projection bias:
they take part in the region means, act as keys/values and feed the LCE conv. We chose this over the refactored
"pad q/k/v after the projection and exclude the padding from the means" because (a) it is what every official
dense-prediction model (COCO ``n_win=16``, ADE20K ``n_win=8``, all ``auto_pad=True`` with the legacy BRA) was
trained with, so those weights behave as published; (b) the number of regions stays exactly ``n_win x n_win``
so ``topk <= n_win ** 2`` holds at every size; and (c) it needs no attention mask, so the fused SDPA path stays
available. The pad amounts are computed arithmetically and ``F.pad`` / the crop always run (as in timm's DaViT),
so the module traces with ``torch.fx`` and exports with dynamic shapes; when the size is divisible the pad and the
crop are empty and the output is bit-identical to the unpadded computation (tested). ``auto_pad=False`` keeps the
strict behaviour: a non-divisible map raises :class:`visionzoo.errors.InputSizeError` (``torch._assert`` when
traced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import InputSizeError

__all__ = [
    "BiLevelRoutingAttention",
    "TopkRouting",
    "region_partition",
    "region_reverse",
    "check_region_grid",
]


def region_partition(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, n_win**2, h*w, C)`` with regions and their tokens in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, n_win, H // n_win, n_win, W // n_win, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, n_win * n_win, -1, C)


def region_reverse(x: torch.Tensor, n_win: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`region_partition`: ``(B, n_win**2, h*w, C)`` -> ``(B, H, W, C)``."""
    B, _, _, C = x.shape
    x = x.view(B, n_win, n_win, H // n_win, W // n_win, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def check_region_grid(H: int, W: int, n_win: int) -> None:
    """Raise :class:`InputSizeError` (eager) or record ``torch._assert`` (``torch.fx`` / tracing, where ``H``/``W``
    are not Python ints) when an ``H x W`` map is not divisible by the ``n_win x n_win`` region grid."""
    msg = f"bi-level routing attention needs a feature map divisible by n_win={n_win} (or auto_pad=True)"
    if isinstance(H, int) and isinstance(W, int):
        if H % n_win or W % n_win:
            raise InputSizeError(
                f"bi-level routing attention got a {H}x{W} feature map, which the {n_win}x{n_win} region grid "
                f"(n_win={n_win}) does not divide; use a map whose sides are multiples of {n_win} or build with "
                f"auto_pad=True."
            )
    else:
        torch._assert(H % n_win == 0, msg)
        torch._assert(W % n_win == 0, msg)


@torch.fx.wrap
@register_notrace_function  # reason: the recompute decision reads requires_grad (a Proxy when traced)
def routed_attention(
    q: torch.Tensor,
    k_r: torch.Tensor,
    v_r: torch.Tensor,
    idx: torch.Tensor,
    scale: float,
    recompute_kv: bool,
) -> torch.Tensor:
    """``q``: ``(B*S2, m, hw, d)``; ``k_r``/``v_r``: ``(B, S2, hw, C)``; ``idx``: ``(B, S2, topk)`` routed regions.
    Gathers the routed K/V and attends: ``(B*S2, m, hw, d)``. With ``recompute_kv`` (training, ``topk > 1``) only
    ``k_r`` / ``v_r`` are kept for the backward, not their ``topk``-fold gathered copies."""
    B, S2, topk = idx.shape
    # flattened (batch, region) rows: one index_select each, whose backward is an index_add into a K/V-sized buffer
    flat_idx = (idx + torch.arange(B, device=idx.device).view(B, 1, 1) * S2).reshape(-1)
    if (
        not torch.jit.is_scripting()
        and recompute_kv
        and topk > 1
        and torch.is_grad_enabled()
        and k_r.requires_grad
    ):
        return checkpoint(
            _gather_attend,
            q,
            k_r,
            v_r,
            flat_idx,
            topk,
            scale,
            use_reentrant=False,
            preserve_rng_state=False,
        )
    return _gather_attend(q, k_r, v_r, flat_idx, topk, scale)


def _gather_attend(
    q: torch.Tensor, k_r: torch.Tensor, v_r: torch.Tensor, flat_idx: torch.Tensor, topk: int, scale: float
) -> torch.Tensor:
    n, m, hw, d = q.shape
    kv_shape = (n, topk * hw, m, d)
    k_sel = k_r.reshape(n, hw, m * d).index_select(0, flat_idx).view(kv_shape).transpose(1, 2)
    v_sel = v_r.reshape(n, hw, m * d).index_select(0, flat_idx).view(kv_shape).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k_sel, v_sel, scale=scale)


class TopkRouting(nn.Module):
    """Region-to-region routing: top-k of ``(q_r * scale) @ k_r^T`` on detached region descriptors.

    Parameter-free; it is a module (``attn.router``, as in the official code) so that forward hooks can capture
    the routing indices, e.g. for :func:`visionzoo.viz.draw_routing`.
    Returns ``(B, S^2, topk)`` int64 region indices, in descending-affinity order.
    """

    def __init__(self, topk: int, scale: float):
        super().__init__()
        self.topk = topk
        self.scale = scale

    def forward(self, q_region: torch.Tensor, k_region: torch.Tensor) -> torch.Tensor:
        q_region, k_region = q_region.detach(), k_region.detach()
        logits = (q_region * self.scale) @ k_region.transpose(-2, -1)
        return torch.topk(logits, k=self.topk, dim=-1).indices

    def extra_repr(self) -> str:
        return f"topk={self.topk}, scale={self.scale:.4g}"


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on NHWC maps (see the module docstring for the exact semantics).

    Args:
        dim: channels C (q/k/v width; the official ``qk_dim`` equals ``dim`` in all released models).
        num_heads: heads; head ``i`` owns channels ``[i*d, (i+1)*d)``.
        n_win: regions per side S.
        topk: routed regions per query region (``<= n_win ** 2``).
        side_dwconv: kernel of the depthwise LCE conv on V (0 disables it).
        auto_pad: pad non-divisible maps (legacy pad-before-projection semantics); ``False`` raises instead.
        qk_scale: override for the attention/routing scale; default ``dim ** -0.5`` as in the official code.
        recompute_kv: in training (``topk > 1``), do not keep the ``topk``-fold gathered K/V for the backward;
            recompute the gather and the attention forward there instead (activation checkpointing of just that
            part: stage-3 K/V memory / 16 for ~one extra attention forward).
        dense_ratio: when the routed regions are a large share of all regions (``n_win**2 <= dense_ratio * topk``,
            e.g. stage 3 at 224: 49 <= 4 * 16), attend over all tokens with a boolean region mask instead of
            gathering: at most ``dense_ratio`` times the attention FLOPs, but no gather/scatter traffic at all
            (the cheaper choice on CPU, measured). Same math; ``0`` always gathers.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        topk: int = 4,
        side_dwconv: int = 5,
        auto_pad: bool = True,
        qk_scale: float | None = None,
        recompute_kv: bool = True,
        dense_ratio: float = 4.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        if not 0 < topk <= n_win * n_win:
            raise ValueError(
                f"topk must be in [1, n_win**2 = {n_win * n_win}] for n_win={n_win}, got {topk}."
            )
        self.dim = dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.auto_pad = auto_pad
        self.recompute_kv = recompute_kv
        self.dense_ratio = dense_ratio
        self.scale = qk_scale if qk_scale is not None else dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        if side_dwconv > 0:
            self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)
        else:
            self.lepe = None
        self.router = TopkRouting(topk, self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, auto_pad={self.auto_pad}"

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom/right to multiples of ``n_win`` (``auto_pad``; an empty pad when divisible) or check."""
        _, H, W, _ = x.shape
        if not self.auto_pad:
            check_region_grid(H, W, self.n_win)
            return x
        pad_b = (self.n_win - H % self.n_win) % self.n_win
        pad_r = (self.n_win - W % self.n_win) % self.n_win
        return F.pad(x, (0, 0, 0, pad_r, 0, pad_b))

    def _masked_attention(
        self, q_r: torch.Tensor, k_r: torch.Tensor, v_r: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """Dense form for large ``topk / n_win**2``: every query token attends to all tokens, masked to its routed
        regions. ``*_r``: ``(B, S2, hw, C)``; ``idx``: ``(B, S2, topk)``. Returns ``(B, m, S2*hw, d)``."""
        B, _, hw, _ = q_r.shape
        S2, m, C = self.n_win * self.n_win, self.num_heads, self.dim
        allowed = idx.new_zeros((B, S2, S2), dtype=torch.bool).scatter_(2, idx, True)
        mask = allowed.repeat_interleave(hw, dim=1).repeat_interleave(hw, dim=2).unsqueeze(1)  # (B, 1, N, N)
        q, k, v = (t.reshape(B, S2 * hw, m, C // m).transpose(1, 2) for t in (q_r, k_r, v_r))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` (the LN1 output). Returns ``(B, H, W, C)``."""
        _, H, W, _ = x.shape
        x = self._pad(x)
        B, Hp, Wp, _ = x.shape
        C = self.dim
        S2 = self.n_win * self.n_win
        m, d = self.num_heads, self.dim // self.num_heads

        qkv = self.qkv(x)  # (B, Hp, Wp, 3C): one GEMM over all tokens
        q, k, v = qkv.split(C, dim=-1)  # views; backward is a single cat
        q_r = region_partition(q, self.n_win)  # (B, S2, hw, C), one copy each
        k_r = region_partition(k, self.n_win)
        v_r = region_partition(v, self.n_win)
        hw = q_r.shape[2]

        # region level: means of q and k (detached inside the router), top-k shared by all heads
        idx = self.router(q_r.mean(dim=2), k_r.mean(dim=2))  # (B, S2, topk)

        if S2 <= self.dense_ratio * self.topk:
            # token level, dense form: all tokens, masked to the routed regions (no gather at all)
            out = self._masked_attention(q_r, k_r, v_r, idx)  # (B, m, S2*hw, d)
        else:
            # token level: the routed regions' K/V by one index_select each on flattened (batch, region)
            # indices; the backward is an index_add into a K/V-sized buffer (no S2 x S2 broadcast anywhere)
            q_h = q_r.view(B * S2, hw, m, d).transpose(1, 2)  # (B*S2, m, hw, d)
            out = routed_attention(q_h, k_r, v_r, idx, self.scale, self.recompute_kv)
        # both forms: (batch [* regions], heads, tokens in region order, d) -> NHWC map
        out = region_reverse(out.transpose(1, 2).reshape(B, S2, hw, C), self.n_win, Hp, Wp)  # (B, Hp, Wp, C)

        if self.lepe is not None:  # LCE on V in image layout; a compact copy so the 3C-wide qkv can be freed
            v_img = v.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            out = out + self.lepe(v_img).permute(0, 2, 3, 1)
        out = self.proj(out)
        # crop the padding (an unconditional slice: a no-op view when nothing was padded)
        return out[:, :H, :W].contiguous()
