"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023).

Paper: https://arxiv.org/abs/2303.08810 -- official code (MIT): https://github.com/rayleizhu/BiFormer

A re-implementation of the official ``BiFormer`` class (the legacy bi-level routing attention used by the
released BiFormer-T/S/B ImageNet-1k checkpoints), registered with timm as ``biformer_tiny``,
``biformer_small`` and ``biformer_base``. Architecture, exactly as the official models:

* overlapping conv stem (conv3x3/2 - BN - GELU - conv3x3/2 - BN, conv biases on), conv3x3/2 + BN downsampling;
* blocks: ``x + dwconv3x3(x)`` (implicit position encoding), then pre-norm attention and MLP (ratio 3) with
  LayerNorm eps 1e-6, no layer scale;
* stages 1-3: bi-level routing attention (7x7 regions, top-k 1/4/16, routing shared by the heads and computed
  from detached region means, scale ``C ** -0.5`` of the full width, 5x5 LCE on V);
  stage 4: plain 8-head attention (``head_dim ** -0.5``, qkv without bias) + 5x5 LePE on the LN1 output;
* final BatchNorm2d, global average pool, linear head.

Module and parameter names follow the official ones (``downsample_layers``, ``stages.i.j``, ``pos_embed``,
``norm1/2``, ``attn.lepe``, ``norm``, ``head``) except three renames that :func:`checkpoint_filter_fn` maps:
``attn.qkv.qkv`` -> ``attn.qkv``, ``attn.wo`` -> ``attn.proj`` and ``mlp.0/3`` -> ``mlp.fc1/fc2`` (timm ``Mlp``).

Differences from the official code that do not change the math:

* BRA is the efficient form in :mod:`visionzoo.models.layers.routing_attention` (index-select gather + SDPA).
* Any input size by default: ``n_win`` is a constructor kwarg and ``auto_pad=True`` (the default; the official
  classifier had no padding) pads maps that the region grid does not divide, inside each attention (legacy
  pad-before-projection semantics of the official dense models, see that module), like timm's Swin/DaViT pad
  to their windows. Sizes the grid divides (e.g. 224 with ``n_win=7``) give bit-identical outputs to no padding,
  so the official weights behave as published; ``auto_pad=False`` restores the strict official behaviour, where
  a non-divisible input raises :class:`~visionzoo.errors.InputSizeError` naming the sizes that work.
* Traceable and scriptable as timm expects: ``torch.fx`` (timm's tracer, ``features_only=True,
  feature_cls='fx'``, torchvision's ``create_feature_extractor``) and ``torch.jit.script`` work; shape checks are
  ``torch._assert`` when traced and the eager InputSizeError otherwise.
* ``num_features`` is an int, ``reset_classifier`` works, ``drop_rate`` is a real dropout before the head
  (the official one is ignored; the default 0 is identical), and ``features_only`` / ``forward_intermediates``
  are supported. ``out_norm=True`` adds a LayerNorm2d per returned feature level (``extra_norms.i``), like the
  official dense-prediction wrapper.

Loading official checkpoints: ``timm.create_model('biformer_tiny', pretrained=True,
pretrained_cfg_overlay=dict(file='biformer_tiny_best.pth'))``. Note that timm's file loader prefers a
``'model_ema'`` entry over ``'model'`` when both exist; the official evaluation uses ``'model'``, which
:func:`load_official_state_dict` returns (pass it as ``pretrained_cfg_overlay=dict(state_dict=...)``).
"""

# No ``from __future__ import annotations`` here: torch.fx copies the root ``forward`` annotations into its
# generated code as names, and a string ``'torch.Tensor'`` there breaks ``torch.jit.script`` of the traced model.
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, Mlp, SelectAdaptivePool2d, get_device_dtype, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from ..errors import CheckpointError, InputSizeError
from ._registry import register_zoo_model
from .layers.routing_attention import BiLevelRoutingAttention

__all__ = ["BiFormer", "BiFormerBlock", "AttentionLePE", "checkpoint_filter_fn", "load_official_state_dict"]


class AttentionLePE(nn.Module):
    """Global multi-head self-attention with a depthwise-conv LePE on the block input (BiFormer stage 4).

    Official quirks kept: ``qkv`` has no bias, the LePE conv sees the LN1 output ``x`` (not V) and its result is
    added to the attention output before ``proj``; the scale is the usual ``head_dim ** -0.5``.
    """

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        if side_dwconv > 0:
            self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)
        else:
            self.lepe = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        B, H, W, C = x.shape
        m = self.num_heads
        qkv = self.qkv(x).view(B, H * W, 3, m, C // m).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, m, N, d)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """``x + dwconv3x3(x)`` then pre-norm attention + MLP residuals. NCHW in and out (NHWC inside)."""

    def __init__(
        self,
        dim: int,
        topk: int,
        head_dim: int = 32,
        n_win: int = 7,
        mlp_ratio: float = 3.0,
        drop_path: float = 0.0,
        side_dwconv: int = 5,
        auto_pad: bool = True,
        mhsa_heads: int = 8,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(
                dim,
                num_heads=dim // head_dim,
                n_win=n_win,
                topk=topk,
                side_dwconv=side_dwconv,
                auto_pad=auto_pad,
                **dd,
            )
        elif topk == -2:
            self.attn = AttentionLePE(dim, num_heads=mhsa_heads, side_dwconv=side_dwconv, **dd)
        else:
            raise ValueError(
                f"topk must be > 0 (routing attention) or -2 (global attention + LePE), got {topk}."
            )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class BiFormer(nn.Module):
    """BiFormer backbone + classifier (see the module docstring).

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, forward returns pooled features).
        global_pool: ``'avg'`` (official) or any timm ``SelectAdaptivePool2d`` type, ``''`` for none.
        depths: blocks per stage.
        embed_dims: channels per stage.
        head_dim: channels per head in the routing stages (heads = dim // head_dim).
        mlp_ratios: MLP expansion per stage.
        n_win: regions per side of the routing grid (official: 7; dense tasks used 8 / 16).
        topks: per stage, routed regions (> 0, bi-level routing attention) or -2 (global attention + LePE).
        side_dwconv: kernel of the LCE / LePE depthwise convs.
        auto_pad: pad feature maps the region grid does not divide (default: any input size; divisible sizes are
            bit-identical to ``False``); ``False`` raises InputSizeError for such sizes (the official classifier).
        mhsa_heads: heads of the global-attention stages (official: 8, hard-coded there).
        out_norm: add ``extra_norms.i`` = LayerNorm2d per stage, applied to ``forward_intermediates`` outputs
            (the official detection/segmentation wrapper's extra norms; ``features_only`` uses them with the default
            ``feature_cls='getter'``, while ``feature_cls='fx'`` taps the raw ``stages.i`` outputs).
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: Sequence[int] = (2, 2, 8, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        head_dim: int = 32,
        mlp_ratios: float | Sequence[float] = (3, 3, 3, 3),
        n_win: int = 7,
        topks: Sequence[int] = (1, 4, 16, -2),
        side_dwconv: int = 5,
        auto_pad: bool = True,
        mhsa_heads: int = 8,
        out_norm: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        num_stages = len(depths)
        if isinstance(mlp_ratios, (int, float)):
            mlp_ratios = (mlp_ratios,) * num_stages
        if not len(embed_dims) == len(topks) == len(mlp_ratios) == num_stages:
            raise ValueError("depths, embed_dims, topks and mlp_ratios need one entry per stage.")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.n_win = n_win
        self.auto_pad = auto_pad
        self.topks = tuple(int(t) for t in topks)
        self.num_features = self.head_hidden_size = int(embed_dims[-1])
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        c0 = embed_dims[0]
        stem = nn.Sequential(
            nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(c0 // 2, **dd),
            nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(c0, **dd),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(1, num_stages):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(embed_dims[i - 1], embed_dims[i], 3, stride=2, padding=1, **dd),
                    nn.BatchNorm2d(embed_dims[i], **dd),
                )
            )

        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i in range(num_stages):
            blocks = [
                BiFormerBlock(
                    embed_dims[i],
                    topk=self.topks[i],
                    head_dim=head_dim,
                    n_win=n_win,
                    mlp_ratio=mlp_ratios[i],
                    drop_path=dpr[cur + j],
                    side_dwconv=side_dwconv,
                    auto_pad=auto_pad,
                    mhsa_heads=mhsa_heads,
                    **dd,
                )
                for j in range(depths[i])
            ]
            cur += depths[i]
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(
                dict(num_chs=int(embed_dims[i]), reduction=2 ** (i + 2), module=f"stages.{i}")
            )

        self.extra_norms = nn.ModuleList([LayerNorm2d(c, **dd) for c in embed_dims]) if out_norm else None
        self.norm = nn.BatchNorm2d(self.num_features, **dd)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

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

    # ----------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """No parameter is exempt by name (the official ``{'pos_embed', 'cls_token'}`` names no parameter);
        timm's optimizer factory already skips weight decay on biases and norm weights (1-D params)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^downsample_layers\.0\.",
            blocks=r"^(?:downsample_layers|stages|extra_norms)\.(\d+)"
            if coarse
            else [
                (r"^downsample_layers\.(\d+)", (0,)),
                (r"^stages\.(\d+)\.(\d+)", None),
                (r"^extra_norms\.(\d+)", (99998,)),
                (r"^norm\.", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        # timm's pattern: new modules on the model's device/dtype and in its train/eval mode
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.global_pool.train(self.training)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    # ----------------------------------------------------------------------------------------- sizes
    def stage_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Feature-map size of every stage for an input of ``height x width`` (each conv is 3x3/2, pad 1)."""
        sizes = []
        h, w = height, width
        for i in range(len(self.downsample_layers)):
            for _ in range(2 if i == 0 else 1):
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            sizes.append((h, w))
        return sizes

    def _check_input_size(self, x: torch.Tensor) -> None:
        """Without ``auto_pad``: one InputSizeError naming every offending stage, before any work (eager only;
        under ``torch.fx`` / tracing the sizes are not ints and each attention records a ``torch._assert``)."""
        if self.auto_pad:
            return
        height, width = x.shape[-2], x.shape[-1]
        if not (isinstance(height, int) and isinstance(width, int)):
            return
        sizes = self.stage_sizes(height, width)
        n = self.n_win
        bad = [(i, hw) for i, hw in enumerate(sizes) if self.topks[i] > 0 and (hw[0] % n or hw[1] % n)]
        if bad:
            stages = ", ".join(f"stage {i + 1} (stride {2 ** (i + 2)}): {h}x{w}" for i, (h, w) in bad)
            m = 16 * n
            raise InputSizeError(
                f"BiFormer cannot take a {height}x{width} input with n_win={n} and auto_pad=False, because every "
                f"routing-attention stage needs a feature map divisible by {n} and here {stages} is not; "
                f"use height and width that are multiples of {m} (e.g. {m}x{m}, {2 * m}x{2 * m}), "
                f"or create the model with auto_pad=True to accept any size."
            )

    # ----------------------------------------------------------------------------------------- forward
    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample_layers[i](x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages[i], x)
        return self.stages[i](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # scripted: each attention checks its own map
            self._check_input_size(x)
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = downsample(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

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
        """Stage outputs (NCHW). With ``out_norm`` every output goes through its ``extra_norms`` LayerNorm2d;
        otherwise ``norm=True`` applies the final BatchNorm to the last stage's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"BiFormer intermediates are NCHW only, got output_fmt={output_fmt!r}.")
        if not torch.jit.is_scripting():  # scripted: each attention checks its own map
            self._check_input_size(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        num_run = max_index + 1 if (stop_early and not torch.jit.is_scripting()) else len(self.stages)
        intermediates = []
        feat_idx = 0
        for feat_idx in range(num_run):
            x = self._run_stage(feat_idx, x)
            if feat_idx in take_indices:
                if self.extra_norms is not None:
                    intermediates.append(self.extra_norms[feat_idx](x))
                elif norm and feat_idx == last_idx:
                    intermediates.append(self.norm(x))
                else:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and norm/head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.downsample_layers = self.downsample_layers[: max_index + 1]
        if self.extra_norms is not None:
            self.extra_norms = self.extra_norms[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# --------------------------------------------------------------------------------------------- checkpoints
_OFFICIAL_RENAMES = (
    (re.compile(r"^(stages\.\d+\.\d+\.attn)\.qkv\.qkv\."), r"\1.qkv."),
    (re.compile(r"^(stages\.\d+\.\d+\.attn)\.wo\."), r"\1.proj."),
    (re.compile(r"^(stages\.\d+\.\d+\.mlp)\.0\."), r"\1.fc1."),
    (re.compile(r"^(stages\.\d+\.\d+\.mlp)\.3\."), r"\1.fc2."),
)
_CLASSIFIER_KEYS = ("head.weight", "head.bias")
_FIRST_CONV_KEY = "downsample_layers.0.0.weight"


def _unwrap(checkpoint: Mapping) -> Mapping:
    """An official file is ``{'model': state_dict, 'optimizer': ..., 'epoch': ..., ...}``; accept it or a bare one."""
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return inner
    return checkpoint


def _rename(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    for pattern, repl in _OFFICIAL_RENAMES:
        key = pattern.sub(repl, key)
    return key


def _first(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official BiFormer checkpoint (or one of ours) into this model's state_dict.

    Accepts the official file layout (``{'model': ..., 'optimizer': ..., 'epoch': ...}``) or a bare state_dict,
    strips ``module.`` prefixes, renames the official keys (``attn.qkv.qkv`` / ``attn.wo`` / ``mlp.0`` /
    ``mlp.3``), upcasts float16 values to the model's dtype and fills ``extra_norms`` (``out_norm=True``) from
    the model's initialisation. Raises :class:`CheckpointError` for keys that are neither ours nor official,
    for missing keys and for shape mismatches (the head and the first conv are left to timm's adaptation).
    A head that already fits the model is kept even when ``num_classes`` differs from the pretrained_cfg's
    (see :func:`_keep_matching_head`).
    """
    state_dict = _unwrap(state_dict)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in state_dict.items():
        new_key = _rename(key)
        if new_key not in target and new_key not in _CLASSIFIER_KEYS:
            foreign.append(key)
            continue
        if not torch.is_tensor(value):
            foreign.append(key)
            continue
        if new_key in target and value.is_floating_point():
            value = value.to(dtype=target[new_key].dtype)
        out[new_key] = value
    if foreign:
        raise CheckpointError(
            f"cannot load this checkpoint into {type(model).__name__}: {len(foreign)} of its keys are neither "
            f"official BiFormer nor visionzoo key names, e.g. {_first(foreign)}."
        )
    for key, value in target.items():
        if key.startswith("extra_norms.") and key not in out:
            out[key] = value.clone()
    missing = [k for k in target if k not in out and k not in _CLASSIFIER_KEYS]
    if missing:
        raise CheckpointError(
            f"the BiFormer checkpoint lacks {len(missing)} keys this model needs, e.g. {_first(missing)} "
            f"(is it for another variant, depth or width?)."
        )
    bad_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and k not in _CLASSIFIER_KEYS and k != _FIRST_CONV_KEY and v.shape != target[k].shape
    ]
    if bad_shape:
        raise CheckpointError(
            f"the BiFormer checkpoint does not fit this model's shapes (checkpoint vs model): {_first(bad_shape, 3)}."
        )
    _keep_matching_head(out, model)
    return out


def _keep_matching_head(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Copy a classifier whose shape already matches the model's head into the model.

    timm's ``load_pretrained`` drops the checkpoint's ``head`` whenever the model's ``num_classes`` differs from
    the *pretrained_cfg's* (1000 for the registered variants), even when the file itself holds a head of the
    right size (a fine-tuned 10-class checkpoint loaded with ``num_classes=10``). Setting it here, before timm's
    drop, keeps such a head; a head of another size is left to timm (dropped, fresh init).
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        return
    w, b = state_dict.get("head.weight"), state_dict.get("head.bias")
    if w is not None and b is not None and w.shape == head.weight.shape and b.shape == head.bias.shape:
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)


def load_official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The non-EMA ``'model'`` weights of an official checkpoint file (or a bare state_dict / safetensors file),
    still with official key names; pass the result as ``pretrained_cfg_overlay=dict(state_dict=...)``.

    ``torch.load(weights_only=True)`` is used; a file that pickles non-tensor objects (e.g. an ``args`` config)
    is refused by torch -- re-save its ``'model'`` entry from a trusted environment in that case.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return dict(_unwrap(checkpoint))


# --------------------------------------------------------------------------------------------- registration


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 8, 2))))))
    return build_model_with_cfg(
        BiFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "downsample_layers.0.0",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2303.08810",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        "notes": (
            "Official ImageNet-1k weights (OneDrive API share link from the official README), not pinned yet "
            "(add '#sha256=<hex>' to the URL once a download is verified). The link was reported broken in "
            "rayleizhu/BiFormer#53. All three URLs end in '/content'; visionzoo.hub caches each under its own name "
            "('<arch>.<tag>-<url8>-content', see `visionzoo info`). Offline: place the file there, or set "
            "VISIONZOO_WEIGHTS_URL to a mirror, or pass pretrained_cfg_overlay=dict(file=...)."
        ),
        **kwargs,
    }


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"

default_cfgs = generate_default_cfgs(
    {
        "biformer_tiny.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
        "biformer_small.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
        "biformer_base.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
    }
)


@register_zoo_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T: 13.1M params, 2.2 GMACs at 224, 81.4% ImageNet-1k top-1 (official; trained with drop_path_rate=0.1)."""
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S: 25.5M params, 4.5 GMACs at 224, 83.8% ImageNet-1k top-1 (official; drop_path_rate=0.15)."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B: 56.8M params, 9.8 GMACs at 224, 84.3% ImageNet-1k top-1 (official; drop_path_rate 0.4, unverified)."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer("biformer_base", pretrained=pretrained, **dict(model_args, **kwargs))
