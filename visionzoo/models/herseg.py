"""HER-Seg: Holistically Efficient Segmentation for High-Resolution Medical Images (Xu et al., 2025).

Paper: https://arxiv.org/abs/2504.06205 (v1 titled "HRMedSeg") -- official code (Apache-2.0):
https://github.com/xq141839/HER-Seg, read at commit 7672f18.

A re-implementation of the model the official ``train.py`` builds, ``MHRMedSeg(dim=96, img_size=1024)``,
registered with timm as ``herseg``. The public code is the arXiv-v1 model: it was not updated for v2 (whose
"meta-pooling" ME-decoder exists only as commented-out lines), so this is what "as released" means here.

* **CE-encoder** (official class ``LGViT``): a 16x16/16 patch embedding to 96 channels, then one resolution
  throughout (stride 16): stage 0 = 2 MBConv blocks (1x1 conv-BN-GELU, depthwise 3x3 conv-BN-GELU, 1x1 conv-BN,
  residual, GELU; expansion 2), stages 1-3 = 2 + 6 + 2 dual-gated linear-attention blocks. A block is
  ``x + out_proj(DLA(LN(x)) * SiLU(act_proj(LN(x))))`` (the post-filter gate) then ``x + MLP(LN(x))`` (ratio 2,
  GELU); DLA is :class:`~visionzoo.models.layers.linear_attention.LinearAttention` (ELU+1 kernels, 2-D RoPE,
  depthwise LePE, the pre-filter gate ``V = down(SiLU(up(x)))``). Heads 6 / 12 / 24, stochastic depth 0 -> 0.1.
* **Neck** (SAM's): conv1x1 96->256 (no bias), LayerNorm2d, conv3x3 256->256 (no bias), LayerNorm2d.
* **Decoder** (SAM's mask decoder with SAM's prompt encoder called without prompts): the image embedding plus the
  learned no-mask embedding, SAM's random-Fourier dense positional encoding, tokens = [iou token, 3 mask tokens],
  a two-way transformer (depth 2, width 256, 8 heads, MLP 256, attention downsample 2), 2 transposed convs to
  stride 4 (32 channels), then ``mask_c = hypernet_c(token_out[0]) . upscaled`` -- every hypernetwork MLP reads
  the **iou-token** output, as in the official code -- and a bilinear upsampling to the input size.

Module and parameter names are the official ones (``image_encoder.layers.i.blocks.j...``, ``neck.*``,
``prompt_encoder.*``, ``mask_decoder.*``, including the swapped ``attn.up_proj`` / ``attn.down_proj`` names), so an
official checkpoint loads with the ``module.`` prefix stripped and the RoPE tables and never-used weights dropped;
see :func:`checkpoint_filter_fn`.

Differences from the official code (outputs agree to float32 precision on the same weights):

* **Any input size.** The official model fixes ``img_size`` at construction (RoPE buffers of the 64x64 grid, a
  reshape to ``img_size // 16`` and an upsampling to ``img_size``); here the RoPE tables and SAM's dense
  positional encoding are built from the input's token grid at each call, so one model takes any height and width
  that are multiples of 16 (square or not) and returns logits at the input size. ``img_size`` only sets the
  nominal size in ``pretrained_cfg``. At the built size the computation is the official one. The RoPE tables are
  therefore not module buffers: the official ``attn.rope.rotations`` checkpoint entries (deterministic functions of
  the grid) are dropped on load, and our checkpoints are ~15 MB smaller.
* **Batched decoder.** The official forward runs the decoder in a Python loop over the batch; samples are
  independent, so here it runs once on the whole batch (same result).
* **Classes.** ``num_classes`` output channels (official: 1, sigmoid). Channel ``c`` comes from hypernetwork MLP
  ``c``, all reading the iou-token output like the released code; exactly ``num_classes`` MLPs are built.
  ``num_classes=2`` gives softmax-style two-channel logits. The classifier in timm's sense (``get_classifier``,
  ``reset_classifier``, the cfg's ``classifier``) is these per-class MLPs only: the rest of the decoder is shared
  by all classes, so fine-tuning with another ``num_classes`` keeps it and re-initialises only the MLPs.
  ``num_classes=0`` builds no decoder and returns the (pooled) image embedding, timm's features-out convention.
* **Weights the released forward never uses are not built.** The prompt encoder's point / not-a-point embeddings
  and mask-downscaling convs (5,964 parameters; no prompts are ever given) and hypernetwork MLPs 1 and 2 (279,616;
  ``multimask_output=False`` decodes mask 0 only) exist in the official model and checkpoints but never receive a
  gradient; here the model has 3,240,784 parameters (official count 3,526,364) and the checkpoint filter drops
  those entries. Every parameter is reached by the output, so DDP without ``find_unused_parameters`` works.
* **Normalisation.** ``pretrained_cfg`` mean/std are ImageNet's, what the official ``train.py`` feeds; the official
  ``eval.py`` (which produced the reported scores) and the PFD pre-training feed ``(pixels - mean) / mean`` instead
  (``pixel_std`` set to ``pixel_mean`` by a bug). We use ImageNet normalisation for training and evaluation alike;
  see ``docs/models/herseg.md``.
* Efficient forms that do not change the math: the decoder attention uses ``scaled_dot_product_attention``; one
  RoPE table per forward serves all blocks and rotates Q and K in one complex multiply.
* **Graph capture.** ``torch.compile`` and FX tracing work (timm's tracer and torchvision's default one: shape
  checks become ``torch._assert`` nodes, the grid-sized RoPE table and rotation are leaf calls); TorchScript does
  not (see ``_NOT_SCRIPTABLE``).

Loading official checkpoints: ``timm.create_model('herseg', pretrained=True,
pretrained_cfg_overlay=dict(file='outputs/modelvab_isic_epoch_123.pth'))`` (a file saved by the official
``train.py``: a bare state_dict, with ``module.`` prefixes when it was trained on several GPUs). The default tag
``herseg.sam_pfd_10k`` is the official SAM-distilled encoder (``pretrain_weights/SAM_PFD_10K.pth``): it holds only
``image_encoder.*`` and ``neck.*``, which load; the prompt encoder and mask decoder keep their initialisation (fine-tune
everything afterwards, as the authors advise).
"""

import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerNorm2d,
    Mlp,
    SelectAdaptivePool2d,
    get_device_dtype,
    register_notrace_function,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, InputSizeError
from ._cfg import SegmentationPretrainedCfg
from ._registry import register_zoo_model
from .layers.linear_attention import LinearAttention
from .layers.rope import rope_2d_rotations

__all__ = [
    "HERSeg",
    "CEEncoder",
    "DLABlock",
    "MBConv",
    "MaskDecoder",
    "PromptEncoder",
    "TwoWayTransformer",
    "checkpoint_filter_fn",
    "load_official_state_dict",
]

_logger = logging.getLogger(__name__)

# FX: the RoPE table is built from the token grid (Python ints from the input's shape), so symbolic tracing keeps
# it as one call: timm's tracer (autowrap) and torch.fx's default one (fx.wrap patches this module's name).
register_notrace_function(rope_2d_rotations)
torch.fx.wrap("rope_2d_rotations")


# --------------------------------------------------------------------------------------------- CE-encoder
class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d, official names ``c`` / ``bn``."""

    def __init__(self, cin, cout, ks=1, pad=0, groups=1, bn_weight_init=1.0, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.add_module("c", nn.Conv2d(cin, cout, ks, 1, pad, groups=groups, bias=False, **dd))
        bn = nn.BatchNorm2d(cout, **dd)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)


class MBConv(nn.Module):
    """Inverted residual: 1x1 conv-BN-GELU, dw 3x3 conv-BN-GELU, 1x1 conv-BN (BN weight 0), + x, GELU. NCHW."""

    def __init__(self, dim: int, expand_ratio: float = 2.0, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, **dd)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, ks=3, pad=1, groups=hidden, **dd)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0, **dd)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class DLABlock(nn.Module):
    """Dual-gated linear-attention block on tokens ``(B, H*W, C)`` (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.act_proj = nn.Linear(dim, dim, **dd)  # post-filter gate
        self.attn = LinearAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, **dd)
        self.out_proj = nn.Linear(dim, dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop, **dd)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], rope: torch.Tensor) -> torch.Tensor:
        xn = self.norm1(x)
        gate = F.silu(self.act_proj(xn))
        x = x + self.drop_path(self.out_proj(self.attn(xn, hw, rope) * gate))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _run(block: nn.Module, grad_checkpointing: bool, *args):
    if grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class MBConvStage(nn.Module):
    """Stage 0: MBConv blocks, NCHW in and out."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, device=None, dtype=None):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            [MBConv(dim, expand_ratio, device=device, dtype=dtype) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = _run(blk, self.grad_checkpointing, x)
        return x


class DLAStage(nn.Module):
    """A DLA stage, NCHW in and out (the blocks run on the row-major tokens ``(B, H*W, C)`` of the grid), so the
    stage output is the feature map that ``feature_info`` names (also for FX feature extraction)."""

    def __init__(self, blocks: Sequence[DLABlock]):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = _run(blk, self.grad_checkpointing, x, (H, W), rope)
        return x.transpose(1, 2).reshape(B, C, H, W)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class CEEncoder(nn.Module):
    """The HER-Seg CE-encoder (official ``LGViT``): single-scale, stride ``patch_size``, ``embed_dim`` channels.

    ``layers[0]`` is the MBConv stage, ``layers[1:]`` the DLA stages (every stage maps NCHW to NCHW).
    :meth:`forward` returns the output tokens ``(B, H*W, C)`` (row-major grid), the grid ``(H, W)`` and the
    requested stage outputs (NCHW).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        patch_size: int = 16,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        rope_base: float = 10000.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(
                "depths and num_heads need one entry per stage (stage 0 = MBConv, then >= 1 DLA stage)."
            )
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.rope_base = rope_base
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, **dd)
        self.pos_drop = nn.Dropout(drop_rate)
        # official: linspace over all blocks, the MBConv slots get none of it
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList([MBConvStage(embed_dim, depths[0], mlp_ratio, **dd)])
        for i in range(1, len(depths)):
            start = sum(depths[:i])
            self.layers.append(
                DLAStage(
                    [
                        DLABlock(
                            embed_dim,
                            num_heads=num_heads[i],
                            mlp_ratio=mlp_ratio,
                            qkv_bias=qkv_bias,
                            drop=drop_rate,
                            drop_path=dpr[start + j],
                            **dd,
                        )
                        for j in range(depths[i])
                    ]
                )
            )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward(
        self, x: torch.Tensor, take_indices: Sequence[int] = (), num_stages: int | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], list[torch.Tensor]]:
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        x = self.pos_drop(x)
        rope = rope_2d_rotations(H, W, C, self.rope_base, device=x.device)  # one table for every block
        feats: list[torch.Tensor] = []
        n = len(self.layers) if num_stages is None else num_stages
        for i in range(n):
            stage = self.layers[i]
            x = stage(x, rope) if isinstance(stage, DLAStage) else stage(x)
            if i in take_indices:
                feats.append(x)
        return x.flatten(2).transpose(1, 2), (H, W), feats


# --------------------------------------------------------------------------------------------- SAM decoder
class PositionEmbeddingRandom(nn.Module):
    """SAM's random-Fourier positional encoding; the Gaussian matrix is a saved buffer (load it, never redraw)."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.register_buffer(
            "positional_encoding_gaussian_matrix",
            scale * torch.randn((2, num_pos_feats), device=device, dtype=dtype),
        )

    def forward(self, h: int, w: int) -> torch.Tensor:
        """``(C, h, w)`` encoding of the cell centres of an ``h x w`` grid (coordinates normalised to [0, 1])."""
        g = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        coords = (2 * coords - 1) @ g.to(torch.float32)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder as HER-Seg uses it: never given prompts.

    Only the no-prompt path is built: ``pe_layer`` (dense positional encoding) and ``no_mask_embed``. SAM's point,
    not-a-point and mask-prompt weights, which the released forward never reads, are not built; the checkpoint
    filter drops them from official files (:func:`checkpoint_filter_fn`).
    """

    def __init__(self, embed_dim: int = 256, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, **dd)
        self.no_mask_embed = nn.Embedding(1, embed_dim, **dd)

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """No prompts: ``(image_embeddings + no-mask embedding, dense positional encoding (1, C, h, w))``."""
        h, w = image_embeddings.shape[-2:]
        src = image_embeddings + self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return src, self.pe_layer(h, w).unsqueeze(0).to(image_embeddings.dtype)


class Attention(nn.Module):
    """SAM attention with q/k/v projected to ``dim // downsample_rate``; softmax attention via SDPA."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.internal_dim = dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the attention width {self.internal_dim}.")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, self.internal_dim, **dd)
        self.k_proj = nn.Linear(dim, self.internal_dim, **dd)
        self.v_proj = nn.Linear(dim, self.internal_dim, **dd)
        self.out_proj = nn.Linear(self.internal_dim, dim, **dd)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        B, _, N, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, N, self.internal_dim))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, act_layer=nn.ReLU, device=None, dtype=None):
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim, device=device, dtype=dtype)
        self.lin2 = nn.Linear(mlp_dim, dim, device=device, dtype=dtype)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention (post-norm)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2, skip_first_layer_pe: bool = False,
        device=None, dtype=None,
    ):  # fmt: skip
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.self_attn = Attention(dim, num_heads, **dd)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = MLPBlock(dim, mlp_dim, **dd)
        self.norm3 = nn.LayerNorm(dim, **dd)
        self.norm4 = nn.LayerNorm(dim, **dd)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate, **dd)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)  # no residual (SAM)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 256, downsample_rate: int = 2,
        device=None, dtype=None,
    ):  # fmt: skip
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            [
                TwoWayAttentionBlock(
                    dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=(i == 0), **dd
                )
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate, **dd)
        self.norm_final_attn = nn.LayerNorm(dim, **dd)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(B, C, h, w)``, ``image_pe`` ``(1 or B, C, h, w)``, ``tokens`` ``(B, T, C)``."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class HyperMLP(nn.Module):
    """``num_layers`` linears with ReLU between (SAM's ``MLP``; official names ``layers.i``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 3, device=None, dtype=None):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, device=device, dtype=dtype) for a, b in zip(dims, dims[1:] + [out_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """SAM's mask decoder as released in HER-Seg (no iou head; every hypernetwork reads the iou-token output).

    ``output_hypernetworks_mlps`` holds one MLP per output class -- the class-specific part, HER-Seg's classifier.
    The ``num_mask_tokens`` mask tokens stay (they take part in the attention) though none of their outputs is
    decoded, as in the released code.
    """

    def __init__(
        self,
        dim: int = 256,
        num_classes: int = 1,
        num_mask_tokens: int = 3,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 256,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim, **dd)
        self.iou_token = nn.Embedding(1, dim, **dd)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim, **dd)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2, **dd),
            LayerNorm2d(dim // 4, eps=1e-6, **dd),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2, **dd),
            nn.GELU(),
        )
        if num_classes < 1:
            raise ValueError(f"the mask decoder needs num_classes >= 1, got {num_classes}.")
        self.output_hypernetworks_mlps = self.make_hypernetworks(num_classes, **dd)

    def make_hypernetworks(self, num_classes: int, device=None, dtype=None) -> nn.ModuleList:
        """``num_classes`` freshly initialised hypernetwork MLPs (width ``dim`` -> ``dim // 8``)."""
        return nn.ModuleList(
            [
                HyperMLP(self.dim, self.dim, self.dim // 8, 3, device=device, dtype=dtype)
                for _ in range(num_classes)
            ]
        )

    @property
    def num_classes(self) -> int:
        return len(self.output_hypernetworks_mlps)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """``image`` ``(B, C, h, w)`` (the image embedding plus the dense prompt embedding) -> low-resolution mask
        logits ``(B, num_classes, 4h, 4w)``."""
        B, C, h, w = image.shape
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(B, -1, -1)
        hs, src = self.transformer(image, image_pe, tokens)
        up = self.output_upscaling(src.transpose(1, 2).reshape(B, C, h, w))
        token = hs[:, 0]  # the iou-token output feeds every hypernetwork (official behaviour)
        hyper = torch.stack([mlp(token) for mlp in self.output_hypernetworks_mlps], dim=1)
        b, c, uh, uw = up.shape
        return (hyper @ up.reshape(b, c, uh * uw)).reshape(b, hyper.shape[1], uh, uw)


# --------------------------------------------------------------------------------------------- model
def _input_size_message(h: int, w: int, p: int, img_size: tuple[int, int]) -> str:
    return (
        f"HER-Seg cannot take a {h}x{w} input: its {p}x{p} patch embedding needs a height and width that "
        f"are multiples of {p} (e.g. {max(p, h // p * p)}x{max(p, w // p * p)} or the official "
        f"{img_size[0]}x{img_size[1]}); resize or pad the image."
    )


class HERSeg(nn.Module):
    """HER-Seg as released (see the module docstring). ``forward(x)`` -> logits ``(B, num_classes, H, W)``.

    timm's split: :meth:`forward_features` is the image embedding ``(B, out_chans, H/16, W/16)`` (encoder + neck,
    the SAM-style embedding the PFD checkpoint distils); :meth:`forward_head` is the SAM decoder (prompt encoder
    without prompts + mask decoder) and returns the logits at the input size. The classifier -- what
    ``num_classes`` sizes, ``get_classifier()`` returns and ``reset_classifier`` re-creates -- is the per-class
    part only: ``mask_decoder.output_hypernetworks_mlps`` (one MLP per class); the class-agnostic decoder trunk
    is kept, so fine-tuning with another ``num_classes`` keeps the trained decoder. ``num_classes=0`` means no mask
    head: nothing would read the decoder, so none is built and ``forward`` returns the image embedding, pooled by
    ``global_pool`` (``(B, out_chans)``; ``global_pool=''``: ``(B, out_chans, H/16, W/16)``), which is what
    ``forward_head(x, pre_logits=True)`` returns for any ``num_classes``.

    Args:
        img_size: nominal input size, an int or ``(H, W)`` (the official constructor argument); inputs of any
            height and width that are multiples of ``patch_size`` work.
        in_chans: input channels.
        num_classes: output channels (official: 1, sigmoid logits); 0: no decoder, ``forward`` returns features.
        global_pool: pooling of the image embedding for ``pre_logits`` / ``num_classes=0`` (``'avg'``, ``'max'``,
            ``'avgmax'`` or ``''`` for none).
        embed_dim: CE-encoder width (official ``--dim``, 96).
        patch_size: patch-embedding kernel and stride.
        depths: blocks per encoder stage (stage 0: MBConv, then DLA stages).
        num_heads: heads per stage (stage 0's entry is unused, as in the official code).
        mlp_ratio: MLP ratio of the DLA blocks and expansion of the MBConv blocks.
        qkv_bias: bias of the DLA ``qk`` projection.
        drop_rate: dropout after the patch embedding and in the DLA MLPs.
        drop_path_rate: stochastic depth, linear from 0 over all encoder slots (official default 0.1).
        out_chans: neck / decoder width (256, SAM's).
        decoder_depth / decoder_heads / decoder_mlp_dim: two-way transformer settings (2 / 8 / 256).
        num_mask_tokens: SAM mask tokens (3); they take part in the attention even though only the iou token's
            output is decoded.
        rope_base: RoPE frequency base.
    """

    task = "segmentation"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 1024,
        in_chans: int = 3,
        num_classes: int = 1,
        global_pool: str = "avg",
        embed_dim: int = 96,
        patch_size: int = 16,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        out_chans: int = 256,
        decoder_depth: int = 2,
        decoder_heads: int = 8,
        decoder_mlp_dim: int = 256,
        num_mask_tokens: int = 3,
        rope_base: float = 10000.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no mask head), got {num_classes}.")
        img_size = tuple(int(s) for s in to_2tuple(img_size))
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise InputSizeError(f"img_size {img_size} is not a multiple of the patch size {patch_size}.")
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_chans = out_chans
        self.num_features = self.head_hidden_size = out_chans
        self._decoder_args = dict(
            num_mask_tokens=num_mask_tokens,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_dim=decoder_mlp_dim,
        )
        self.image_encoder = CEEncoder(
            in_chans, embed_dim, patch_size, depths, num_heads, mlp_ratio, qkv_bias, drop_rate, drop_path_rate,
            rope_base, **dd,
        )  # fmt: skip
        self.prompt_encoder: PromptEncoder | None = None
        self.mask_decoder: MaskDecoder | None = None
        if num_classes > 0:
            self.prompt_encoder, self.mask_decoder = self._make_decoder(num_classes, **dd)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False, **dd),
            LayerNorm2d(out_chans, eps=1e-6, **dd),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False, **dd),
            LayerNorm2d(out_chans, eps=1e-6, **dd),
        )
        self.global_pool = global_pool
        self.head_pool = self._make_pool(global_pool)
        self.feature_info = [
            dict(
                num_chs=embed_dim,
                num_chs_norm=out_chans,
                reduction=patch_size,
                module=f"image_encoder.layers.{i}",
            )
            for i in range(len(depths))
        ]

    def _make_decoder(self, num_classes: int, device=None, dtype=None) -> tuple[PromptEncoder, MaskDecoder]:
        dd = {"device": device, "dtype": dtype}
        return (
            PromptEncoder(self.out_chans, **dd),
            MaskDecoder(self.out_chans, num_classes, **self._decoder_args, **dd),
        )

    @staticmethod
    def _make_pool(global_pool: str) -> nn.Module:
        if global_pool not in ("", "avg", "max", "avgmax"):
            raise ValueError(
                f"HER-Seg pools its image embedding with global_pool 'avg', 'max', 'avgmax' or '' (none), "
                f"got {global_pool!r}."
            )
        return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))

    # ----------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The learned token embeddings (like a ViT's cls token); timm already skips biases and norm weights."""
        if self.mask_decoder is None:
            return set()
        return {
            "mask_decoder.iou_token.weight",
            "mask_decoder.mask_tokens.weight",
            "prompt_encoder.no_mask_embed.weight",
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Encoder (patch embedding, then stage by stage / block by block) vs the rest (neck, prompt encoder and
        decoder: one last group, e.g. for layer-wise lr decay)."""
        return dict(  # neck, prompt_encoder and mask_decoder match nothing: timm puts them in one last group
            stem=r"^image_encoder\.patch_embed\.",
            blocks=r"^image_encoder\.layers\.(\d+)"
            if coarse
            else r"^image_encoder\.layers\.(\d+)\.blocks\.(\d+)",
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image_encoder.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The class-specific part: one hypernetwork MLP per class (``nn.Identity()`` when ``num_classes=0``)."""
        return nn.Identity() if self.mask_decoder is None else self.mask_decoder.output_hypernetworks_mlps

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New per-class hypernetwork MLPs for ``num_classes`` classes (freshly initialised, like timm's new
        ``nn.Linear``); the decoder trunk is kept. ``0`` removes the decoder (``forward`` then returns the pooled
        image embedding); a later ``num_classes > 0`` builds a fresh one. New modules follow the model's device,
        dtype and train/eval mode."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no mask head), got {num_classes}.")
        if global_pool is not None:
            self.head_pool = self._make_pool(global_pool).train(self.training)
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        if num_classes == 0:
            self.prompt_encoder = self.mask_decoder = None
        elif self.mask_decoder is None:
            prompt_encoder, mask_decoder = self._make_decoder(num_classes, **dd)
            self.prompt_encoder = prompt_encoder.train(self.training)
            self.mask_decoder = mask_decoder.train(self.training)
        else:
            mlps = self.mask_decoder.make_hypernetworks(num_classes, **dd)
            self.mask_decoder.output_hypernetworks_mlps = mlps.train(self.training)
        self.num_classes = num_classes

    # ----------------------------------------------------------------------------------------- forward
    def _check_input_size(self, x: torch.Tensor) -> None:
        p = self.patch_size
        if isinstance(x, torch.fx.Proxy):
            # traced: a graph-time check (kept by dead-code elimination), the message without the sizes
            H, W = x.shape[-2:]
            torch._assert(
                (H % p == 0) & (W % p == 0) & (H >= p) & (W >= p),
                f"HER-Seg needs an input height and width that are multiples of {p}.",
            )
            return
        H, W = int(x.shape[-2]), int(x.shape[-1])
        if H % p or W % p or H < p or W < p:
            raise InputSizeError(_input_size_message(H, W, p, self.img_size))

    def _embed(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, _, C = tokens.shape
        return self.neck(tokens.transpose(1, 2).reshape(B, C, hw[0], hw[1]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding ``(B, out_chans, H/16, W/16)`` (encoder + neck)."""
        self._check_input_size(x)
        tokens, hw, _ = self.image_encoder(x)
        return self._embed(tokens, hw)

    def forward_decoder(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Image embedding -> low-resolution logits ``(B, num_classes, H/4, W/4)``."""
        if self.mask_decoder is None:
            raise ValueError("this HER-Seg has num_classes=0 (features only): it has no mask decoder to run.")
        src, dense_pe = self.prompt_encoder(image_embeddings)
        return self.mask_decoder(src, dense_pe)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Image embedding ``(B, C, h, w)`` -> logits ``(B, num_classes, h * patch, w * patch)`` (the input size);
        ``pre_logits`` (or ``num_classes=0``): the embedding pooled by ``global_pool``."""
        if pre_logits or self.mask_decoder is None:
            return self.head_pool(x)
        low = self.forward_decoder(x)
        p = self.patch_size
        return F.interpolate(
            low, size=(x.shape[-2] * p, x.shape[-1] * p), mode="bilinear", align_corners=False
        )

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of one pass: ``masks`` (``forward``), ``low_res_masks`` (decoder logits at H/4),
        ``enc0`` (encoder tokens ``(B, H/16 * W/16, embed_dim)``, before the neck) and ``image_embeddings``."""
        if self.mask_decoder is None:
            raise ValueError("this HER-Seg has num_classes=0 (features only): it has no mask decoder to run.")
        self._check_input_size(x)
        tokens, hw, _ = self.image_encoder(x)
        emb = self._embed(tokens, hw)
        low = self.forward_decoder(emb)
        masks = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"masks": masks, "low_res_masks": low, "enc0": tokens, "image_embeddings": emb}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder stage outputs (NCHW, ``embed_dim`` channels, stride 16); ``norm=True`` passes each through the
        neck (``out_chans`` channels, like timm's SAM ViT). The final output is ``forward_features``."""
        if output_fmt != "NCHW":
            raise ValueError(f"HER-Seg intermediates are NCHW only, got output_fmt={output_fmt!r}.")
        self._check_input_size(x)
        n = len(self.image_encoder.layers)
        take_indices, max_index = feature_take_indices(n, indices)
        run = max_index + 1 if (stop_early or intermediates_only) and not torch.jit.is_scripting() else n
        tokens, hw, feats = self.image_encoder(x, take_indices, run)
        if norm:
            feats = [self.neck(f) for f in feats]
        if intermediates_only:
            return feats
        return self._embed(tokens, hw), feats

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop encoder stages after the last requested one, the neck (``prune_norm``) and the decoder
        (``prune_head``: ``reset_classifier(0, '')``, so ``forward`` returns the unpooled features)."""
        take_indices, max_index = feature_take_indices(len(self.image_encoder.layers), indices)
        self.image_encoder.layers = self.image_encoder.layers[: max_index + 1]
        if prune_norm:
            self.neck = nn.Identity()
            self.num_features = self.head_hidden_size = self.embed_dim
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --------------------------------------------------------------------------------------------- checkpoints
_PREFIXES = ("module.", "_orig_mod.")
_ROPE_TABLE = re.compile(r"^image_encoder\.layers\.\d+\.blocks\.\d+\.attn\.rope\.rotations$")
_HYPER_MLP = re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.")
#: official weights the released (prompt-free) forward never reads; not built here
_UNUSED_OFFICIAL = re.compile(r"^prompt_encoder\.(point_embeddings|not_a_point_embed|mask_downscaling)\.")
_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
#: the released forward decodes mask 0 only (multimask_output=False): official hypernetwork MLPs 1-2 are unused
_OFFICIAL_NUM_CLASSES = 1
_ENCODER_PREFIXES = ("image_encoder.", "neck.")
_FIRST_CONV_KEY = "image_encoder.patch_embed.proj.weight"
#: tags whose weights are an encoder + neck only (the decoder and prompt encoder keep their initialisation)
ENCODER_ONLY_TAGS = ("sam_pfd_10k",)


def _unwrap(checkpoint: Mapping) -> Mapping:
    """The official scripts save a bare state_dict; also accept ``{'model' | 'state_dict': state_dict, ...}``."""
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return inner
    return checkpoint


def _rename(key: str, target: Mapping) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    if key.startswith("model.") and key not in target and key[6:] in target:  # a Lightning task's "model."
        key = key[6:]
    return key


def _first(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _tag(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("tag")


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official HER-Seg checkpoint (or one of ours) into this model's state_dict.

    Accepts what the official scripts save -- a bare ``model.state_dict()``, with or without DataParallel's
    ``module.`` prefix (``train.py`` / ``pfd_pretrain.py`` wrap the model when several GPUs are visible) -- and also
    ``{'model' | 'state_dict': ...}`` wrappers, ``_orig_mod.`` (torch.compile) and ``model.`` (Lightning) prefixes.
    Drops the official RoPE tables (``attn.rope.rotations``, recomputed from the grid), upcasts float16 values to the
    model's dtype, drops hypernetwork MLPs beyond the model's and fills missing ones (classes the checkpoint lacks)
    from the model's initialisation (a ``num_classes=0`` model, which has no decoder, drops the decoder's keys).
    Official weights the released forward never uses are not built and dropped: ``prompt_encoder.point_embeddings``
    / ``not_a_point_embed`` / ``mask_downscaling``, and hypernetwork MLPs 1-2 of official files (ones with RoPE
    tables). An encoder-only checkpoint (``image_encoder.*`` + ``neck.*``, e.g. the official
    ``SAM_PFD_10K.pth``) loads under the ``herseg.sam_pfd_10k`` tag; the prompt encoder and decoder then keep their
    initialisation. Raises :class:`CheckpointError` for foreign keys, missing keys and wrong shapes (the patch
    embedding is left to timm's ``in_chans`` adaptation).
    """
    state_dict = _unwrap(state_dict)
    target = model.state_dict()
    decoder = getattr(model, "mask_decoder", None)
    n_mlps = len(decoder.output_hypernetworks_mlps) if decoder is not None else 0
    renamed = [(key, _rename(key, target), value) for key, value in state_dict.items()]
    official = any(_ROPE_TABLE.match(new_key) for _, new_key, _ in renamed)
    out: dict[str, torch.Tensor] = {}
    foreign = []
    for key, new_key, value in renamed:
        if _ROPE_TABLE.match(new_key) or _UNUSED_OFFICIAL.match(new_key):
            continue
        m = _HYPER_MLP.match(new_key)
        if m and official and int(m.group(1)) >= _OFFICIAL_NUM_CLASSES:
            continue  # never read by the released forward: the class gets this model's initialisation
        if new_key not in target:
            if m and int(m.group(1)) >= n_mlps and torch.is_tensor(value):
                continue  # a class this model does not predict
            if decoder is None and new_key.startswith(_DECODER_PREFIXES):
                continue  # a features-only (num_classes=0) model has no decoder
            foreign.append(key)
            continue
        if not torch.is_tensor(value):
            foreign.append(key)
            continue
        if value.is_floating_point():
            value = value.to(dtype=target[new_key].dtype)
        out[new_key] = value
    if foreign:
        raise CheckpointError(
            f"cannot load this checkpoint into {type(model).__name__}: {len(foreign)} of its keys are neither "
            f"official HER-Seg nor visionzoo key names, e.g. {_first(foreign)}."
        )
    missing = [k for k in target if k not in out]
    encoder_only = bool(out) and all(k.startswith(_ENCODER_PREFIXES) for k in out)
    if missing and encoder_only and _tag(model) in ENCODER_ONLY_TAGS:
        rest = [k for k in missing if not k.startswith(_ENCODER_PREFIXES)]
        for k in rest:
            out[k] = target[k].clone()
        missing = [k for k in missing if k.startswith(_ENCODER_PREFIXES)]
        if not missing:
            _logger.info(
                "loaded an encoder-only HER-Seg checkpoint: image_encoder and neck are pretrained, the prompt "
                "encoder and mask decoder keep their initialisation (%d tensors).",
                len(rest),
            )
    for k in list(missing):  # hypernetwork MLPs for classes beyond the checkpoint's: fresh init
        m = _HYPER_MLP.match(k)
        if m and (official or any(_HYPER_MLP.match(o) for o in out)):
            out[k] = target[k].clone()
            missing.remove(k)
    if missing:
        hint = (
            " -- it holds only the encoder and neck (a pre-training checkpoint such as SAM_PFD_10K.pth); load it "
            "with timm.create_model('herseg.sam_pfd_10k', ...)"
            if encoder_only
            else " (is it for another width or depth?)"
        )
        raise CheckpointError(
            f"the HER-Seg checkpoint lacks {len(missing)} keys this model needs, e.g. {_first(missing)}{hint}."
        )
    bad_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items()
        if k != _FIRST_CONV_KEY and v.shape != target[k].shape
    ]
    if bad_shape:
        raise CheckpointError(
            f"the HER-Seg checkpoint does not fit this model's shapes (checkpoint vs model): {_first(bad_shape, 3)}."
        )
    return out


def load_official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A bare state_dict from an official ``.pth`` (or a ``.safetensors``) file, official key names kept; pass it
    as ``pretrained_cfg_overlay=dict(state_dict=...)``. Uses ``torch.load(weights_only=True)``."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    return dict(_unwrap(torch.load(path, map_location="cpu", weights_only=True)))


# --------------------------------------------------------------------------------------------- registration


def _create_herseg(variant: str, pretrained: bool = False, **kwargs) -> HERSeg:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    model = build_model_with_cfg(
        HERSeg,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k != "task"}  # timm re-validates this dict on reload
        img_size = kwargs.get("img_size")
        if img_size is not None and cfg.get("input_size"):
            cfg["input_size"] = (cfg["input_size"][0], *to_2tuple(img_size))  # the nominal size follows
            patch = kwargs.get("patch_size", 16)
            cfg["pool_size"] = tuple(s // patch for s in to_2tuple(img_size))
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def _cfg(url: str = "", **kwargs) -> SegmentationPretrainedCfg:
    cfg = {
        "url": url,
        "num_classes": 1,
        "input_size": (3, 1024, 1024),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "pool_size": (64, 64),  # forward_features: the image embedding at stride 16
        "first_conv": "image_encoder.patch_embed.proj",
        # the class-specific weights (hypernetwork MLP of class 0); timm re-initialises them for another num_classes
        "classifier": tuple(f"mask_decoder.output_hypernetworks_mlps.0.layers.{i}" for i in range(3)),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2504.06205",
        "paper_name": "HER-Seg: Holistically Efficient Segmentation for High-Resolution Medical Images",
        "origin_url": "https://github.com/xq141839/HER-Seg",
        **kwargs,
    }
    return SegmentationPretrainedCfg(**cfg)


_OFFICIAL_COMMIT = "7672f18828e887f2c19b8bd60e236e160ca8a6a9"

default_cfgs = generate_default_cfgs(
    {
        "herseg.sam_pfd_10k": _cfg(
            url=f"https://github.com/xq141839/HER-Seg/raw/{_OFFICIAL_COMMIT}/pretrain_weights/SAM_PFD_10K.pth",
            notes=(
                "Encoder + neck only: LGViT(96) + neck distilled from SAM ViT-H image embeddings on ~11k SA-1B "
                "images (PFD, official pfd_pretrain.py). The prompt encoder and mask decoder keep their "
                "initialisation; fine-tune all modules. The distillation fed (pixels - mean) / mean (the official "
                "loader's pixel_std bug), fine-tuning in the official train.py uses ImageNet mean/std (as here). "
                "Official fine-tuned checkpoints (train.py) load with pretrained_cfg_overlay=dict(file=...)."
            ),
        ),
    }
)


# torch.compile and FX tracing are the supported graph paths; TorchScript fails in the encoder (checked with
# torch.jit.script on the model and on its FX graph).
_NOT_SCRIPTABLE = (
    "TorchScript cannot compile the RoPE rotation every DLA block calls (layers/rope.py apply_rope_2d reshapes "
    "to the starred shape *x.shape[:-1], a list of unknown length) nor the CE-encoder's variadic "
    "gradient-checkpointing helper"
)


@register_zoo_model(task="segmentation", not_scriptable=_NOT_SCRIPTABLE)
def herseg(pretrained: bool = False, **kwargs) -> HERSeg:
    """HER-Seg as released (official MHRMedSeg(dim=96, img_size=1024)): 3.53M params, 1 output channel."""
    return _create_herseg("herseg", pretrained=pretrained, **kwargs)
