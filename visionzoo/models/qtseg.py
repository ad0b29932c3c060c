"""QTSeg: query-token segmentation with a Dual-Mix Attention decoder and Multi-Level Feature Distribution.

Paper: Tran et al., "QTSeg: A Query Token-Based Dual-Mix Attention Framework with Multi-Level Feature
Distribution for Medical Image Segmentation", https://arxiv.org/abs/2412.17241 -- official code:
https://github.com/tpnam0901/QTSeg (v2, the current repository, commit e585983; no LICENSE file).

A re-implementation of the official ``QTSeg`` model as configured for every dataset of the paper
(``FPNEncoder`` + ``MLFD`` + ``MaskDecoder``), registered with timm as ``qtseg``. Architecture:

* **encoder**: the YOLOv8-nano backbone and PAN-FPN neck without the detection head (width 16: Conv-BN-SiLU
  3x3/2 stem, C2f CSP blocks, SPPF), returning 64 / 128 / 256 channels at strides 8 / 16 / 32;
* **MLFD bridge**: every output level concatenates one Conv-BN-SiLU (or ConvTranspose-BN-SiLU) branch from each
  encoder level, resampled to it (shapes unchanged);
* **Dual-Mix Attention decoder**: ``num_classes`` learned query tokens (256-d) go through the levels coarse to
  fine (s32 -> s16 -> s8). At each level the map (plus the upsampled previous result) and a random-Fourier
  positional encoding enter ``depth`` DMA blocks (spatial-attention and channel-attention branches, each read by
  the tokens through cross-attention; a token MLP; the tokens written back into the map), then a final
  token-to-image attention; the map is upsampled by a transposed conv (x4 after the last level, to stride 2), and
  a separate 3-layer MLP per token maps the tokens to the next level's width;
* **head**: logits = tokens @ map (``B x num_classes x H/2 x W/2``), bilinearly upsampled to the input size.

Module and parameter names are exactly the official ones (``image_encoder.c2f_15``, ``bridge.neck_0_1``,
``mask_decoder.DMAB_s2.layers.0.dm_attention...``), so official checkpoints load without renaming. The three
positional-encoding matrices ``mask_decoder.PE_s{0,1,2}.positional_encoding_gaussian_matrix`` are random
buffers drawn at construction and saved in every checkpoint; they are loaded, never redrawn.

Differences from the official code that do not change the math:

* attention uses ``F.scaled_dot_product_attention`` (``fused_attn``; set it False on the attention modules for
  the explicit softmax path, e.g. to count FLOPs); LayerNorm2d is timm's (same eps 1e-6);
* the positional encoding is computed on the model's device and broadcast over the batch (the official code
  recomputes it on the CPU and copies it per sample);
* the channel-attention energies (``X Xᵀ``, up to ~1e4 with trained-like weights) are computed in float32 even
  under autocast, where float16 would overflow or round them coarsely;
* ``forward`` returns the logits only; ``forward_all`` returns what the official ``forward`` returns and more
  (``masks``, ``low_res_masks``, ``mask_embeddings``, the three encoder maps).

timm API (see :class:`QTSeg`): ``num_classes=0`` / ``reset_classifier(0)`` drop only the mask classifier
(``mask_decoder.MLP_s0``) and return the pooled ``mask_embeddings`` (the map with ``global_pool=''``); the model is
FX-traceable with timm's tracer (``features_only=True, feature_cls='fx'``, torchvision's
``create_feature_extractor``) and scriptable; ``prune_intermediate_layers`` removes the bridge and decoder.

Loading official checkpoints: ``timm.create_model('qtseg', pretrained=True,
pretrained_cfg_overlay=dict(file='weight_best_dice.pt'))`` -- a bare state_dict (``weight_best_*.pt``) or the
``weight_last.pt`` dict holding it under ``'state_dict_model'`` with optimizer state. The encoder-only
``fpn-nano.pth`` (YOLOv8n COCO weights converted by the authors) loads with the ``qtseg.fpn_nano_coco`` tag: the
encoder comes from the file, the bridge and decoder keep their fresh initialisation (the official code's
``strict=False`` load, but any key that is not an encoder key still raises).
"""

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import (
    LayerNorm2d,
    get_device_dtype,
    register_notrace_module,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, InputSizeError
from ._cfg import SegmentationPretrainedCfg
from ._registry import register_zoo_model
from .layers.yolo_blocks import SPPF, C2f, ConvBnAct, ConvTransposeBnAct

__all__ = [
    "QTSeg",
    "QTSegEncoder",
    "MLFD",
    "DualMixAttentionDecoder",
    "checkpoint_filter_fn",
    "load_official_state_dict",
]

STRIDE = 32  # the largest stride: height and width must be multiples of it
OFFICIAL_NUM_QUERIES = (
    2  # background + foreground: the query tokens of a num_classes=0 model (the released layout)
)
_GLOBAL_POOLS = ("", "avg", "max", "avgmax")
_SIZE_RULE = "QTSeg needs an input height and width that are multiples of 32"


def _check_input_size(x: torch.Tensor) -> None:
    """Height and width must be multiples of :data:`STRIDE`. Eager: one :class:`InputSizeError` sentence naming
    sizes that work. FX-traced or scripted: a ``torch._assert``, a graph node that checks each run (timm's way;
    a Python ``raise`` would need concrete sizes at trace time)."""
    if torch.jit.is_scripting():  # TorchScript cannot read module globals: STRIDE and _SIZE_RULE spelled out
        torch._assert(
            (x.shape[-2] % 32) + (x.shape[-1] % 32) == 0,
            "QTSeg needs an input height and width that are multiples of 32",
        )
    else:
        _check_input_size_python(x)


def _check_input_size_python(x: torch.Tensor) -> None:
    height, width = x.shape[-2], x.shape[-1]
    if isinstance(height, torch.fx.Proxy):
        torch._assert((height % STRIDE) + (width % STRIDE) == 0, _SIZE_RULE)
        return
    if height % STRIDE or width % STRIDE:
        h, w = (max(STRIDE, round(s / STRIDE) * STRIDE) for s in (height, width))
        raise InputSizeError(
            f"QTSeg cannot take a {height}x{width} input, because its encoder and MLFD bridge resample "
            f"between strides 8, 16 and 32, so height and width must be multiples of {STRIDE} "
            f"(e.g. {h}x{w} or 512x512); resize or pad the image."
        )


# --------------------------------------------------------------------------------------------- encoder
class QTSegEncoder(nn.Module):
    """YOLOv8 backbone + PAN-FPN neck (official ``FPNEncoder``); attribute names carry the YOLOv8n layer index.

    Returns the neck outputs ``c2f_15`` (4w ch, stride 8), ``c2f_18`` (8w, 16) and ``c2f_21`` (16w, 32) for width
    ``w`` (16 = nano). ``forward(x, max_level)`` stops after level ``max_level``.
    """

    def __init__(self, in_chans: int = 3, width: int = 16, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        n = width
        # backbone
        self.conv_0 = ConvBnAct(in_chans, n, 3, 2, **dd)
        self.conv_1 = ConvBnAct(n, 2 * n, 3, 2, **dd)
        self.c2f_2 = C2f(2 * n, 2 * n, 1, shortcut=True, **dd)
        self.conv_3 = ConvBnAct(2 * n, 4 * n, 3, 2, **dd)
        self.c2f_4 = C2f(4 * n, 4 * n, 2, shortcut=True, **dd)
        self.conv_5 = ConvBnAct(4 * n, 8 * n, 3, 2, **dd)
        self.c2f_6 = C2f(8 * n, 8 * n, 2, shortcut=True, **dd)
        self.conv_7 = ConvBnAct(8 * n, 16 * n, 3, 2, **dd)
        self.c2f_8 = C2f(16 * n, 16 * n, 1, shortcut=True, **dd)
        self.sppf_9 = SPPF(16 * n, 16 * n, 5, **dd)
        # top-down path (10, 11, 13, 14 are the parameter-free upsample / concat layers)
        self.c2f_12 = C2f(24 * n, 8 * n, 1, **dd)
        self.c2f_15 = C2f(12 * n, 4 * n, 1, **dd)
        # bottom-up path (17, 20: concat)
        self.conv_16 = ConvBnAct(4 * n, 4 * n, 3, 2, **dd)
        self.c2f_18 = C2f(12 * n, 8 * n, 1, **dd)
        self.conv_19 = ConvBnAct(8 * n, 8 * n, 3, 2, **dd)
        self.c2f_21 = C2f(24 * n, 16 * n, 1, **dd)
        self.out_chs = (4 * n, 8 * n, 16 * n)
        self.num_levels = 3  # fewer after prune()
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every C2f / SPPF block in the backward pass."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, (C2f, SPPF)):
                module.grad_checkpointing = enable

    def prune(self, max_level: int) -> None:
        """Drop the layers that only levels above ``max_level`` need."""
        drop = {0: ("conv_16", "c2f_18", "conv_19", "c2f_21"), 1: ("conv_19", "c2f_21")}.get(max_level, ())
        for name in drop:
            setattr(self, name, None)
        self.num_levels = min(self.num_levels, max_level + 1)

    def forward(self, x: torch.Tensor, max_level: int = 2) -> list[torch.Tensor]:
        """Levels ``0 .. max_level`` (at most the levels this encoder still has after :meth:`prune`)."""
        max_level = min(max_level, self.num_levels - 1)
        x = self.conv_0(x)
        x = self.conv_1(x)
        x = self.c2f_2(x)
        x = self.conv_3(x)
        p3 = self.c2f_4(x)
        x = self.conv_5(p3)
        p4 = self.c2f_6(x)
        x = self.conv_7(p4)
        x = self.c2f_8(x)
        p5 = self.sppf_9(x)
        x = F.interpolate(p5, scale_factor=2.0, mode="nearest")
        n4 = self.c2f_12(torch.cat([x, p4], dim=1))
        x = F.interpolate(n4, scale_factor=2.0, mode="nearest")
        out0 = self.c2f_15(torch.cat([x, p3], dim=1))
        outs = [out0]
        if max_level < 1:
            return outs
        x = self.conv_16(out0)
        out1 = self.c2f_18(torch.cat([x, n4], dim=1))
        outs.append(out1)
        if max_level < 2:
            return outs
        x = self.conv_19(out1)
        outs.append(self.c2f_21(torch.cat([x, p5], dim=1)))
        return outs


class MLFD(nn.Module):
    """Multi-Level Feature Distribution bridge (official ``MLFD``, a.k.a. ``MLFF`` in v1).

    Output level ``i`` concatenates branch ``neck_i_j`` of every encoder level ``j``: a 1x1 conv at the same
    stride, a strided 3x3 conv to a coarser one (stride 2, or 4 for s8 -> s32) or a ConvTranspose (k = s = 2 or 4)
    to a finer one. Widths (w = 16): s8 32+16+16, s16 32+64+32, s32 64+64+128 -- the input widths again.
    """

    def __init__(self, width: int = 16, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        n = width
        self.neck_0_0 = ConvBnAct(4 * n, 2 * n, 1, **dd)
        self.neck_0_1 = ConvTransposeBnAct(8 * n, n, 2, 2, **dd)
        self.neck_0_2 = ConvTransposeBnAct(16 * n, n, 4, 4, **dd)
        self.neck_1_0 = ConvBnAct(4 * n, 2 * n, 3, 2, **dd)
        self.neck_1_1 = ConvBnAct(8 * n, 4 * n, 1, **dd)
        self.neck_1_2 = ConvTransposeBnAct(16 * n, 2 * n, 2, 2, **dd)
        self.neck_2_0 = ConvBnAct(4 * n, 4 * n, 3, 4, **dd)
        self.neck_2_1 = ConvBnAct(8 * n, 4 * n, 3, 2, **dd)
        self.neck_2_2 = ConvBnAct(16 * n, 8 * n, 1, **dd)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        f0, f1, f2 = feats
        return [
            torch.cat([self.neck_0_0(f0), self.neck_0_1(f1), self.neck_0_2(f2)], dim=1),
            torch.cat([self.neck_1_0(f0), self.neck_1_1(f1), self.neck_1_2(f2)], dim=1),
            torch.cat([self.neck_2_0(f0), self.neck_2_1(f1), self.neck_2_2(f2)], dim=1),
        ]


# --------------------------------------------------------------------------------------------- decoder
class TokenAttention(nn.Module):
    """SAM-style multi-head attention with q/k/v projected down to ``dim // downsample_rate`` (official
    ``Attention``): ``out_proj(softmax(q kᵀ / sqrt(d)) v)``; queries and keys may be different sequences."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 2, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(
                f"the attention width {inner} (dim {dim} / downsample_rate {downsample_rate}) is not divisible "
                f"by num_heads {num_heads}."
            )
        self.num_heads = num_heads
        self.head_dim = inner // num_heads
        self.fused_attn = use_fused_attn()
        self.q_proj = nn.Linear(dim, inner, **dd)
        self.k_proj = nn.Linear(dim, inner, **dd)
        self.v_proj = nn.Linear(dim, inner, **dd)
        self.out_proj = nn.Linear(inner, dim, **dd)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, _ = q.shape
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            out = attn.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SpatialAttention(nn.Module):
    """CBAM spatial attention with a residual: ``x * sigmoid(conv7x7([mean_c x, max_c x])) + x``."""

    def __init__(self, kernel_size: int = 7, device=None, dtype=None):
        super().__init__()
        self.cv1 = nn.Conv2d(
            2, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.cv1(stats)) + x


@register_notrace_module  # a leaf for FX: its autocast branch reads the input's device type at run time
class ChannelAttention(nn.Module):
    """DANet channel attention: ``gamma * softmax(rowmax(E) - E) X + X`` with ``E = X Xᵀ`` over the flattened map
    (no projections; ``gamma`` starts at 0, so the block starts as the identity and still gets a gradient)."""

    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            out = _channel_attend(x)
        else:
            out = _channel_attend_float32_under_autocast(x)
        return self.gamma * out + x


def _channel_attend_float32_under_autocast(x: torch.Tensor) -> torch.Tensor:
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _channel_attend(x.float()).to(x.dtype)
    return _channel_attend(x)


def _channel_attend(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    energy = energy.amax(dim=-1, keepdim=True) - energy
    return (energy.softmax(dim=-1) @ flat).view_as(x)


class DualMixAttention(nn.Module):
    """Both attention branches on ``F + PE``; the tokens read each branch by cross-attention.

    Returns ``LN(T + CTFA_spatial + CTFA_channel)`` and ``S + Cc`` (flattened, ``B x HW x C``).
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 2, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channel_attention = ChannelAttention(**dd)
        self.channel_token_mix_attention = TokenAttention(dim, num_heads, downsample_rate, **dd)
        self.spatial_attention = SpatialAttention(**dd)
        self.spatial_token_mix_attention = TokenAttention(dim, num_heads, downsample_rate, **dd)
        self.token_layernorm = nn.LayerNorm(dim, **dd)

    def forward(
        self, tokens: torch.Tensor, feat: torch.Tensor, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = feat + pe
        spatial = self.spatial_attention(x).flatten(2).transpose(1, 2)
        channel = self.channel_attention(x).flatten(2).transpose(1, 2)
        mixed = (
            self.spatial_token_mix_attention(tokens, spatial, spatial)
            + self.channel_token_mix_attention(tokens, channel, channel)
            + tokens
        )
        return self.token_layernorm(mixed), spatial + channel


class TokenMlpBlock(nn.Module):
    """``lin2(GELU(lin1(x)))`` (official ``MLPBlock``)."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.lin2 = nn.Linear(hidden, dim, device=device, dtype=dtype)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class DMABlock(nn.Module):
    """One dual-mix attention block: DMA, then ``T' = LN(MLP(A_T)) + T`` (norm after the MLP, residual to the
    block input) and ``F' = F + Attn(q = A_F + PE, k = v = A_T)``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2, device=None, dtype=None
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dm_attention = DualMixAttention(dim, num_heads, downsample_rate, **dd)
        self.token_mlp = TokenMlpBlock(dim, mlp_dim, **dd)
        self.token_layernorm = nn.LayerNorm(dim, **dd)
        self.feature_mix = TokenAttention(dim, num_heads, downsample_rate, **dd)

    def forward(
        self, tokens: torch.Tensor, feat: torch.Tensor, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feat.shape
        att_tokens, att_feat = self.dm_attention(tokens, feat, pe)
        new_tokens = self.token_layernorm(self.token_mlp(att_tokens)) + tokens
        mixed = self.feature_mix(att_feat + pe.flatten(2).transpose(1, 2), att_tokens, att_tokens)
        return new_tokens, mixed.transpose(1, 2).reshape(b, c, h, w) + feat


class DualMixAttentionStage(nn.Module):
    """``depth`` DMA blocks, then ``T = LN(T + Attn(q = T + T_in, k = F + PE, v = F))`` (official
    ``DualMixAttentionBlock``, the "DMAB" of one decoder level)."""

    def __init__(
        self,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int = 2,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            DMABlock(dim, num_heads, mlp_dim, downsample_rate, **dd) for _ in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate, **dd)
        self.norm_final_attn = nn.LayerNorm(dim, **dd)
        self.grad_checkpointing = False

    def forward(
        self, tokens_in: torch.Tensor, feat: torch.Tensor, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens_in
        for layer in self.layers:
            if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                tokens, feat = checkpoint(layer, tokens, feat, pe, use_reentrant=False)
            else:
                tokens, feat = layer(tokens, feat, pe)
        keys = feat.flatten(2).transpose(1, 2)
        attn = self.final_attn_token_to_image(tokens + tokens_in, keys + pe.flatten(2).transpose(1, 2), keys)
        return self.norm_final_attn(tokens + attn), feat


class TokenMLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (official ``MLP``, one per query token)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 3, device=None, dtype=None):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, device=device, dtype=dtype) for a, b in zip(dims[:-1], dims[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class RandomFourierPE(nn.Module):
    """SAM's positional encoding: ``[sin, cos](2π · (2p - 1) G)`` for pixel centres ``p`` in [0, 1]² and a fixed
    Gaussian matrix ``G`` (2 x C/2, N(0, 1), a persistent buffer saved in checkpoints) -> ``1 x C x H x W``."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.register_buffer(
            "positional_encoding_gaussian_matrix",
            scale * torch.randn((2, num_pos_feats), device=device, dtype=dtype),
        )

    def forward(self, h: int, w: int) -> torch.Tensor:
        g = self.positional_encoding_gaussian_matrix.float()
        ys = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        coords = (2 * coords - 1) @ g
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1).unsqueeze(0)


class DualMixAttentionDecoder(nn.Module):
    """The DMA decoder (official ``MaskDecoder``); per level ``i`` (0 = stride 8): ``DMAB_s{i}``, ``MLP_s{i}``
    (one token MLP per query), ``PE_s{i}`` and ``SUB_s{i}`` (the upsampling after the level).

    The decoder reads ``num_queries`` learned query tokens (``mask_tokens``). ``MLP_s2`` / ``MLP_s1`` carry each
    token to the next level's width; ``MLP_s0`` is the **mask classifier**: class ``k``'s MLP turns its final token
    into the 1x1 weights that project ``mask_embeddings`` to logit map ``k``. Officially there is one query per
    class (``num_queries == num_classes``). With ``num_classes=0`` the queries stay (they drive every DMA block,
    so ``mask_embeddings`` are unchanged) and only ``MLP_s0`` and the projection are gone.
    """

    def __init__(
        self,
        dims: Sequence[int] = (64, 128, 256),
        num_classes: int = 2,
        depths: Sequence[int] = (1, 2, 3),
        num_heads: int = 8,
        mlp_dim: int = 2048,
        downsample_rate: int = 2,
        num_queries: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if len(dims) != 3 or len(depths) != 3:
            raise ValueError(
                f"QTSeg's decoder has 3 levels; got dims {tuple(dims)} and depths {tuple(depths)}."
            )
        self.dims = tuple(int(d) for d in dims)
        self.num_classes = int(num_classes)
        self.num_queries = int(num_queries) if num_queries is not None else self.num_classes
        if self.num_queries < 1 or self.num_classes not in (0, self.num_queries):
            raise ValueError(
                f"QTSeg's decoder needs num_queries >= 1 and one query per class, got num_queries "
                f"{self.num_queries} for num_classes {self.num_classes}."
            )
        self.mask_tokens = nn.Embedding(self.num_queries, self.dims[-1], **dd)
        for i in reversed(range(3)):
            dim = self.dims[i]
            setattr(
                self,
                f"DMAB_s{i}",
                DualMixAttentionStage(depths[i], dim, num_heads, mlp_dim, downsample_rate, **dd),
            )
            setattr(
                self, f"MLP_s{i}", self._token_mlps(i, self.num_classes if i == 0 else self.num_queries, **dd)
            )
            setattr(self, f"PE_s{i}", RandomFourierPE(dim // 2, **dd))
            if i > 0:
                up = nn.Sequential(
                    nn.ConvTranspose2d(dim, self.dims[i - 1], kernel_size=2, stride=2, **dd),
                    LayerNorm2d(self.dims[i - 1], eps=1e-6, **dd),
                    nn.GELU(),
                )
            else:
                up = nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2, **dd),
                    LayerNorm2d(dim // 2, eps=1e-6, **dd),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim, kernel_size=2, stride=2, **dd),
                    LayerNorm2d(dim, eps=1e-6, **dd),
                    nn.GELU(),
                )
            setattr(self, f"SUB_s{i}", up)

    def _token_mlps(self, i: int, num_tokens: int, device=None, dtype=None) -> nn.ModuleList:
        out_dim = self.dims[i - 1] if i > 0 else self.dims[0]
        return nn.ModuleList(
            TokenMLP(self.dims[i], self.dims[i], out_dim, 3, device=device, dtype=dtype)
            for _ in range(num_tokens)
        )

    def reset_classes(self, num_classes: int, device=None, dtype=None) -> None:
        """``num_classes > 0``: new query tokens and token MLPs (fresh init), one per class. ``0``: drop the mask
        classifier (``MLP_s0``) and keep the queries and the rest of the decoder as they are."""
        dd = {"device": device, "dtype": dtype}
        self.num_classes = int(num_classes)
        if self.num_classes == 0:
            self.MLP_s0 = nn.ModuleList()
            return
        self.num_queries = self.num_classes
        self.mask_tokens = nn.Embedding(self.num_queries, self.dims[-1], **dd)
        for i in range(3):
            setattr(self, f"MLP_s{i}", self._token_mlps(i, self.num_classes, **dd))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for i in range(3):
            getattr(self, f"DMAB_s{i}").grad_checkpointing = enable

    def forward_features(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats``: the three bridged maps, finest first -> (the query tokens after the last level, ``B x Q x
        dims[0]``; ``mask_embeddings`` ``B x dims[0] x H/2 x W/2``). The levels are written out (s32, s16, s8)
        because their modules carry the official per-level names."""
        tokens = self.mask_tokens.weight.unsqueeze(0).expand(feats[2].shape[0], -1, -1)
        # level 2 (stride 32)
        feat = feats[2]
        pe = self.PE_s2(feat.shape[-2], feat.shape[-1]).to(dtype=feat.dtype)
        att_tokens, feat = self.DMAB_s2(tokens, feat, pe)
        prev = self.SUB_s2(feat)
        carried = []
        for k, mlp in enumerate(self.MLP_s2):
            carried.append(mlp(att_tokens[:, k]))
        tokens = torch.stack(carried, dim=1)
        # level 1 (stride 16)
        feat = feats[1] + prev
        pe = self.PE_s1(feat.shape[-2], feat.shape[-1]).to(dtype=feat.dtype)
        att_tokens, feat = self.DMAB_s1(tokens, feat, pe)
        prev = self.SUB_s1(feat)
        carried = []
        for k, mlp in enumerate(self.MLP_s1):
            carried.append(mlp(att_tokens[:, k]))
        tokens = torch.stack(carried, dim=1)
        # level 0 (stride 8), upsampled x4 to stride 2
        feat = feats[0] + prev
        pe = self.PE_s0(feat.shape[-2], feat.shape[-1]).to(dtype=feat.dtype)
        att_tokens, feat = self.DMAB_s0(tokens, feat, pe)
        return att_tokens, self.SUB_s0(feat)

    def forward_head(self, tokens: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """The mask classifier: class ``k``'s ``MLP_s0`` turns query token ``k`` into 1x1 weights for
        ``mask_embeddings`` -> ``low_res_masks`` ``B x num_classes x H/2 x W/2``."""
        weights = []
        for k, mlp in enumerate(self.MLP_s0):
            weights.append(mlp(tokens[:, k]))
        stacked = torch.stack(weights, dim=1)
        b, c, h, w = feat.shape
        return (stacked @ feat.flatten(2)).view(b, -1, h, w)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats``: the three bridged maps, finest first -> (``low_res_masks`` B x K x H/2 x W/2,
        ``mask_embeddings`` B x dims[0] x H/2 x W/2)."""
        tokens, feat = self.forward_features(feats)
        return self.forward_head(tokens, feat), feat


# --------------------------------------------------------------------------------------------- model
class QTSeg(nn.Module):
    """QTSeg segmenter (see the module docstring): ``forward(x)`` -> logits ``B x num_classes x H x W``.

    Args:
        in_chans: input channels.
        num_classes: query tokens = output channels (official: 2, background + foreground, softmax). ``0``: no
            mask classifier, ``forward`` returns the decoder's features (timm's convention, see below).
        width: YOLOv8 width multiplier in channels (official: 16 = nano); feature widths are 4/8/16 x width.
        mask_depths: DMA blocks per decoder level, finest first (official (1, 2, 3)).
        num_heads: attention heads at every level.
        mlp_dim: hidden width of the DMA blocks' token MLPs.
        attn_downsample_rate: q/k/v width = level width / this.
        global_pool: pooling of the features when there is no mask classifier (``'avg'``, ``'max'``, ``'avgmax'``;
            ``''`` keeps the map).

    **Features and the classifier** (timm's ``num_classes=0`` convention). The features are the decoder's
    ``mask_embeddings`` (``num_features = 4 * width`` channels at H/2 x W/2), what the per-pixel projection to
    classes reads. The classifier is that projection, ``mask_decoder.MLP_s0``: one MLP per class turning its query
    token into 1x1 weights (:meth:`get_classifier`). The query tokens are not part of it: every DMA block reads
    them, so removing them would change the features; with ``num_classes=0`` the decoder keeps its queries (the
    official two, so a released checkpoint's decoder loads whole) and ``forward`` returns ``forward_head(
    forward_features(x), pre_logits=True)``: pooled ``B x num_features``, or the ``B x num_features x H/2 x W/2``
    map with ``global_pool=''``. ``reset_classifier(n > 0)`` makes ``n`` fresh queries with their token MLPs and
    classifier (one query per class, as in the official model); ``reset_classifier(0)`` only drops the classifier,
    so ``forward_features`` is unchanged.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 2,
        width: int = 16,
        mask_depths: Sequence[int] = (1, 2, 3),
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attn_downsample_rate: int = 2,
        global_pool: str = "avg",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_classes < 0:
            raise ValueError(f"QTSeg needs num_classes >= 0 (0: no mask classifier), got {num_classes}.")
        self.in_chans = in_chans
        self.num_classes = int(num_classes)
        self.global_pool = _check_global_pool(global_pool)
        self.width = int(width)
        self.embed_dims = (4 * self.width, 8 * self.width, 16 * self.width)
        self.num_features = self.head_hidden_size = self.embed_dims[0]
        self.grad_checkpointing = False
        self.image_encoder = QTSegEncoder(in_chans, self.width, **dd)
        self.bridge = MLFD(self.width, **dd)
        self.mask_decoder = DualMixAttentionDecoder(
            self.embed_dims,
            self.num_classes,
            mask_depths,
            num_heads,
            mlp_dim,
            attn_downsample_rate,
            num_queries=self.num_classes or OFFICIAL_NUM_QUERIES,
            **dd,
        )
        # The PAN-FPN outputs the decoder reads (strides 8/16/32). The backbone's stride-2/4 maps (conv_0, c2f_2)
        # are not listed: they are not encoder outputs, and prepending them would renumber every feature index
        # (out_indices, forward_intermediates). So smp's `tu-` probe (reductions 4..32 or 2..32) rejects qtseg.
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f"image_encoder.{m}")
            for c, r, m in zip(self.embed_dims, (8, 16, 32), ("c2f_15", "c2f_18", "c2f_21"))
        ]

    # ----------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The learned class queries (like a ViT's ``cls_token``). timm's optimizer factory also skips every 1-D
        parameter (biases, norms, the channel-attention gains); the official recipe decays everything (AdamW,
        wd 3e-5)."""
        return {"mask_decoder.mask_tokens.weight"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Groups in depth order: ``stem`` (first conv), ``encoder`` (backbone + FPN, by YOLOv8 layer index),
        ``bridge`` (MLFD), ``decoder`` (queries, then levels s32 -> s16 -> s8). Freezing the encoder = every
        parameter whose name starts with ``image_encoder.`` (see :meth:`freeze_encoder`)."""
        return dict(
            stem=r"^image_encoder\.conv_0\.",
            encoder=r"^image_encoder\." if coarse else [(r"^image_encoder\.[a-z0-9]+?_(\d+)\.", None)],
            bridge=r"^bridge\.",
            decoder=r"^mask_decoder\."
            if coarse
            else [
                (r"^mask_decoder\.mask_tokens\.", (0,)),
                (r"^mask_decoder\.\w+_s2\.", (1,)),
                (r"^mask_decoder\.\w+_s1\.", (2,)),
                (r"^mask_decoder\.\w+_s0\.", (3,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the C2f / SPPF blocks and the DMA blocks in the backward pass."""
        self.grad_checkpointing = enable
        self.image_encoder.set_grad_checkpointing(enable)
        if self.mask_decoder is not None:
            self.mask_decoder.set_grad_checkpointing(enable)

    def freeze_encoder(self, freeze: bool = True) -> None:
        """``requires_grad = not freeze`` for the encoder (the official recipe freezes it for the first 50 epochs;
        its BatchNorm statistics still update in train mode, as in the official code)."""
        for p in self.image_encoder.parameters():
            p.requires_grad = not freeze

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The mask classifier ``mask_decoder.MLP_s0`` (one token MLP per class; empty when ``num_classes=0``)."""
        if self.mask_decoder is None:
            return nn.Identity()
        return self.mask_decoder.MLP_s0

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """``num_classes > 0``: fresh query tokens, token MLPs and classifier for that many classes; ``0``: drop the
        classifier only (``forward`` then returns the pooled features, the map with ``global_pool=''``)."""
        if num_classes < 0:
            raise ValueError(f"QTSeg needs num_classes >= 0 (0: no mask classifier), got {num_classes}.")
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool)
        if self.mask_decoder is None:
            if num_classes:
                raise RuntimeError(
                    "this QTSeg was pruned to its encoder, so it has no decoder to classify with; "
                    "reset_classifier accepts only num_classes=0."
                )
            self.num_classes = 0
            return
        self.num_classes = int(num_classes)
        # the new classifier lives with the decoder it plugs into: its device / dtype, the model's mode
        self.mask_decoder.reset_classes(self.num_classes, **get_device_dtype(self.mask_decoder))
        self.mask_decoder.train(self.training)

    # ----------------------------------------------------------------------------------------- forward
    def forward_encoder(self, x: torch.Tensor, max_level: int = 2) -> list[torch.Tensor]:
        """The encoder maps (strides 8, 16, 32; before the MLFD bridge), up to level ``max_level``."""
        _check_input_size(x)
        return self.image_encoder(x, max_level)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Everything in one pass: ``masks`` (logits at the input size), ``low_res_masks`` (at H/2), the
        decoder's ``mask_embeddings`` (dims[0] x H/2 x W/2; the official ``forward`` returns ``(masks,
        mask_embeddings)``) and ``encoder_features`` (the three encoder maps)."""
        if self.mask_decoder is None or self.num_classes == 0:
            raise RuntimeError("forward_all needs QTSeg's mask classifier (num_classes > 0, not pruned).")
        feats = self.forward_encoder(x)
        low_res, embeddings = self.mask_decoder(self.bridge(feats))
        masks = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "masks": masks,
            "low_res_masks": low_res,
            "mask_embeddings": embeddings,
            "encoder_features": feats,
        }

    def _features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if self.mask_decoder is None:
            return feats[-1]  # pruned: the encoder ends at the tap
        return self.mask_decoder.forward_features(self.bridge(feats))[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's final feature map (``mask_embeddings``, ``B x num_features x H/2 x W/2``), the one the
        mask classifier projects; after pruning to the encoder, its last kept map."""
        return self._features(self.forward_encoder(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (``global_pool``; ``''`` leaves the map). The logits cannot come from here: the mask
        classifier also reads the decoder's query tokens, so ``forward`` computes them."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        elif self.global_pool == "avgmax":
            x = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        if pre_logits or self.num_classes == 0:
            return x
        raise RuntimeError(
            "QTSeg's mask classifier reads the decoder's query tokens as well as the features, so "
            "forward_head(pre_logits=False) cannot make logits; call the model (or forward_all) instead."
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_encoder(x)
        if self.mask_decoder is None or self.num_classes == 0:
            return self.forward_head(self._features(feats), pre_logits=True)
        tokens, embeddings = self.mask_decoder.forward_features(self.bridge(feats))
        low_res = self.mask_decoder.forward_head(tokens, embeddings)
        return F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder maps (``feature_info``: strides 8/16/32) and, unless ``intermediates_only``, the final
        features (== :meth:`forward_features`; with ``stop_early`` before the last level, the last tap).
        ``norm`` is accepted and ignored (no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"QTSeg intermediates are NCHW only, got output_fmt={output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if intermediates_only or stop_early:
            feats = self.forward_encoder(x, max_index)
        else:
            feats = self.forward_encoder(x)
        intermediates = [feats[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        if len(feats) < len(self.feature_info):
            return feats[-1], intermediates  # stopped early (or pruned): the features end at the last tap
        return self._features(feats), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Keep the encoder up to the deepest requested level. The bridge and decoder need all three levels, so
        they go (with the classifier: ``num_classes = 0``, no pooling) on ``prune_head`` or when a level is pruned;
        ``forward_features`` then ends at that level. ``prune_norm`` is accepted (there is no final norm)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.image_encoder.prune(max_index)
        if prune_head or max_index < len(self.feature_info) - 1:
            self.bridge = None
            self.mask_decoder = None
            self.reset_classifier(0, "")
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        return take_indices


def _check_global_pool(global_pool: str) -> str:
    if global_pool not in _GLOBAL_POOLS:
        raise ValueError(f"QTSeg's global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}.")
    return global_pool


# --------------------------------------------------------------------------------------------- checkpoints
_PARTS = ("image_encoder.", "bridge.", "mask_decoder.")
_WRAPPERS = ("state_dict_model", "model", "state_dict")
# per-query keys (the tokens and the MLPs carrying them between levels) and per-class keys (the mask classifier)
_QUERY_KEY = re.compile(r"^mask_decoder\.(?:mask_tokens\.|MLP_s[12]\.\d+\.)")
_CLASS_KEY = re.compile(r"^mask_decoder\.MLP_s0\.\d+\.")
_TOKENS_KEY = "mask_decoder.mask_tokens.weight"
_FIRST_CONV_KEY = "image_encoder.conv_0.conv.weight"


def _unwrap(checkpoint: Mapping) -> Mapping:
    """``weight_last.pt`` is ``{'state_dict_model': ..., 'state_dict_optim_model': ..., 'epoch': ...}``; accept it,
    ``{'model' / 'state_dict': ...}`` or a bare state_dict."""
    if isinstance(checkpoint, Mapping):
        for key in _WRAPPERS:
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
                return inner
    return checkpoint


def _rename(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    if key.startswith("model.") and key[len("model.") :].startswith(_PARTS):
        key = key[len("model.") :]  # a Lightning task's ``self.model``
    return key


def _first(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _is_encoder_only(keys: Sequence[str], target: Mapping[str, torch.Tensor]) -> bool:
    """An ``fpn-nano.pth``-style file: keys of ``image_encoder`` without that prefix (official ``strict=False``
    load into ``model.image_encoder``)."""
    return (
        bool(keys)
        and not any(k.startswith(_PARTS) for k in keys)
        and all("image_encoder." + k in target for k in keys)
    )


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official QTSeg checkpoint (or one of ours) into this model's state_dict.

    Accepts a bare state_dict (official ``weight_best_*.pt``), the ``weight_last.pt`` layout (weights under
    ``'state_dict_model'`` next to optimizer / scheduler state), ``{'model' / 'state_dict': ...}`` wrappers and
    ``module.`` / ``_orig_mod.`` / Lightning ``model.`` prefixes; the official key names are ours. Float values are
    cast to the model's dtype (the golden fixture is float16).

    * An encoder-only file (``fpn-nano.pth``: ``image_encoder`` keys without the prefix) fills the encoder; the
      bridge and decoder keep the model's current (fresh) values.
    * A checkpoint with another number of classes (query tokens): its query tokens, per-token MLPs and mask
      classifier are replaced by the model's fresh ones (everything else loads); with the same number they are kept
      even when the pretrained cfg's ``num_classes`` differs (timm would drop the classifier otherwise).
    * A model without classifier (``num_classes=0``, two queries) takes the checkpoint's queries and decoder and
      leaves its classifier (``MLP_s0``) out.

    Raises :class:`CheckpointError` (one sentence) for keys that are not QTSeg keys, for missing keys and for
    shape mismatches (the first conv is left to timm's ``in_chans`` adaptation).
    """
    state_dict = _unwrap(state_dict)
    target = model.state_dict()
    items = [(_rename(k), k, v) for k, v in state_dict.items()]
    encoder_only = _is_encoder_only([k for k, _, _ in items], target)
    if encoder_only:
        items = [("image_encoder." + k, orig, v) for k, orig, v in items]

    decoder = getattr(model, "mask_decoder", None)
    num_queries = getattr(decoder, "num_queries", None)
    has_classifier = getattr(model, "num_classes", 0) > 0
    tokens = next((v for k, _, v in items if k == _TOKENS_KEY and torch.is_tensor(v)), None)
    same_queries = tokens is not None and tokens.ndim == 2 and tokens.shape[0] == num_queries

    out: dict[str, torch.Tensor] = {}
    foreign = []
    for key, orig, value in items:
        if _CLASS_KEY.match(key) and not has_classifier:
            continue  # num_classes=0: no mask classifier to load into
        if (_QUERY_KEY.match(key) or _CLASS_KEY.match(key)) and not same_queries:
            continue  # another class count: the model's fresh tokens / MLPs are filled in below
        if key not in target or not torch.is_tensor(value):
            foreign.append(orig)
            continue
        if value.is_floating_point():
            value = value.to(dtype=target[key].dtype)
        out[key] = value
    if foreign:
        raise CheckpointError(
            f"cannot load this checkpoint into {type(model).__name__}: {len(foreign)} of its keys are neither "
            f"official QTSeg nor visionzoo key names, e.g. {_first(foreign)}."
        )
    for key, value in target.items():
        if key in out:
            continue
        if (encoder_only and not key.startswith("image_encoder.")) or (
            (_QUERY_KEY.match(key) or _CLASS_KEY.match(key)) and not same_queries
        ):
            out[key] = value.clone()
    missing = [k for k in target if k not in out]
    if missing:
        what = "encoder-only checkpoint" if encoder_only else "QTSeg checkpoint"
        raise CheckpointError(
            f"the {what} lacks {len(missing)} keys this model needs, e.g. {_first(missing)} "
            f"(is it for another width, depth or decoder configuration?)."
        )
    bad_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items()
        if k != _FIRST_CONV_KEY and v.shape != target[k].shape
    ]
    if bad_shape:
        raise CheckpointError(
            f"the QTSeg checkpoint does not fit this model's shapes (checkpoint vs model): {_first(bad_shape, 3)}."
        )
    if same_queries:
        _keep_class_keys(out, model)
    return out


def _keep_class_keys(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Copy the kept per-class tensors into the model now: timm's loader drops the cfg's ``classifier`` keys
    whenever ``num_classes`` differs from the pretrained cfg's, even when the file has the right number."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state_dict.items():
            if _CLASS_KEY.match(key) and key in params and params[key].shape == value.shape:
                params[key].copy_(value)


def load_official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The weights of an official file (``weight_best_*.pt``, ``weight_last.pt``, ``fpn-nano.pth``) or a
    safetensors file, official key names kept; pass it as ``pretrained_cfg_overlay=dict(state_dict=...)``.

    ``torch.load(weights_only=True)`` is used (the official files hold only tensors and plain values).
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    return dict(_unwrap(torch.load(path, map_location="cpu", weights_only=True)))


# --------------------------------------------------------------------------------------------- registration


def _create_qtseg(variant: str, pretrained: bool = False, **kwargs) -> QTSeg:
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    model = build_model_with_cfg(
        QTSeg,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("task", None)
    return model


_RELEASES = "https://github.com/tpnam0901/QTSeg/releases/download/assets/"
# the checkpoint of the paper's Table I inside the release zip (path from the official notebook's unzip log)
_ISIC_MEMBER = "ISIC2016A/QTSeg/FPNEncoderMaskDecoder/20250123-091937/weight_best_dice.pt"


def _cfg(url: str = "", **kwargs) -> SegmentationPretrainedCfg:
    cfg = {
        "url": url,
        "num_classes": 2,
        "input_size": (3, 512, 512),
        "pool_size": (256, 256),  # mask_embeddings at H/2 x W/2
        # no min_input_size: any multiple of 32 works, and timm's tests would otherwise all run at the minimum
        # (32 px: 1x1 maps at stride 32) instead of their 96 / 128 / 384 px targets
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "image_encoder.conv_0.conv",
        # the mask classifier's last layer per pretrained class (class k's MLP_s0 makes its 1x1 projection weights)
        "classifier": ("mask_decoder.MLP_s0.0.layers.2", "mask_decoder.MLP_s0.1.layers.2"),
        "license": "other",
        "paper_ids": "arXiv:2412.17241",
        "paper_name": (
            "QTSeg: A Query Token-Based Dual-Mix Attention Framework with Multi-Level Feature Distribution "
            "for Medical Image Segmentation"
        ),
        "origin_url": "https://github.com/tpnam0901/QTSeg",
        **kwargs,
    }
    return SegmentationPretrainedCfg(**cfg)


_PREPROCESSING = (
    "Official preprocessing: resize the longest side to 512 (cv2 INTER_AREA), ISIC only: RGB -> YCrCb, zero-pad "
    "bottom/right to a square, then per-image min-max scaling to [-1, 1] (mean/std 0.5 here is the fixed-range "
    "equivalent for an image spanning 0..255)."
)

default_cfgs = generate_default_cfgs(
    {
        "qtseg.isic2016": _cfg(
            # a 273 MB zip (cfg.json, mlruns, weight_best_{loss,dice,iou,acc,mae}.pt, weight_last.pt);
            # visionzoo.hub extracts the '#member=' checkpoint
            url=_RELEASES + "ISIC2016_v1.0.0.zip#member=" + _ISIC_MEMBER,
            notes=(
                "Official ISIC 2016 weights (ISIC2016A run 20250123-091937: 350 epochs with augmentation; the "
                "official notebook measures Dice 92.45 / IoU 86.92 / MAE 2.99 on the 379 test images with "
                "weight_best_dice.pt, = Table I; checkpoint chosen on the test split). The release asset is a zip of "
                "six checkpoints; visionzoo.hub extracts weight_best_dice.pt (or unzip it by hand and pass "
                "pretrained_cfg_overlay=dict(file='.../weight_best_dice.pt')). "
                "License: the repository has no LICENSE file; the encoder was initialised from Ultralytics YOLOv8n "
                "COCO weights (AGPL-3.0). " + _PREPROCESSING
            ),
        ),
        "qtseg.fpn_nano_coco": _cfg(
            url=_RELEASES + "fpn-nano.pth",
            license="agpl-3.0",
            notes=(
                "Encoder only: the YOLOv8n COCO detection weights (backbone + PAN-FPN, no head) converted by the "
                "QTSeg authors (tpnam0901/QTSeg#15), 9.16 MB, also published under the v0.2.0 tag. The bridge and "
                "decoder keep their fresh initialisation. Ultralytics weights are AGPL-3.0. The official recipe "
                "freezes the encoder for the first 50 of 350 epochs (QTSeg.freeze_encoder)."
            ),
        ),
    }
)


@register_zoo_model(task="segmentation")
def qtseg(pretrained: bool = False, **kwargs) -> QTSeg:
    """QTSeg (v2: FPN encoder + MLFD + Dual-Mix Attention decoder): 9,214,850 params for 2 classes,
    2.60 GFLOPs at 512 (fvcore, as the paper reports it); ISIC 2016 Dice 92.45 / IoU 86.92 (official)."""
    model_args = dict(width=16, mask_depths=(1, 2, 3), num_heads=8, mlp_dim=2048, attn_downsample_rate=2)
    return _create_qtseg("qtseg", pretrained=pretrained, **dict(model_args, **kwargs))
