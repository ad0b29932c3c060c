"""ViT + one frozen LLM layer (Pang et al., "Frozen Transformers in Language Models Are Effective Visual Encoder
Layers", ICLR 2024 spotlight, arXiv:2310.12973; official code ziqipang/LM4VisualEncoding).

Registered as ``vit_tiny_llm``, ``vit_small_llm`` and ``vit_base_llm`` (DeiT-Ti/S/B shapes, patch 16, 224 px).
Forward, as the official ``ViTLLaMA``:

    patch embed -> class token + learned pos embed -> ViT blocks
    -> llm_proj_in: Linear(embed_dim -> llm_dim, no bias)
    -> llm: one frozen decoder layer of a causal LM (default: LLaMA-7B's last layer), bidirectional, no rotary,
       then a parameter-free RMS normalisation (the official final RMSNorm, weight never loaded = ones)
    -> llm_proj_out: Linear(llm_dim -> embed_dim, no bias)
    -> the ViT's final LayerNorm -> class-token pooling -> head

The backbone is timm's :class:`~timm.models.vision_transformer.VisionTransformer` with timm's key names, so
``deit_*_patch16_224`` / ``vit_*`` weights load into it (:func:`checkpoint_filter_fn` keeps the model's own
init for the two projections and the LLM layer when the file lacks them).

The LLM layer (see :mod:`visionzoo.models.layers.llm_block`):

* ``llm_path``: a folder written by ``save_pretrained`` (any causal LM whose layer takes
  ``(hidden_states, attention_mask, position_embeddings)`` -- LLaMA, Mistral, Qwen2 ... -- or OPT-style layers
  without rotary). Only layer ``llm_layer`` (default: the last) is read from the (sharded) safetensors files, in
  ``llm_dtype`` (default float32; ``'bfloat16'`` halves the memory of a 7B layer: 202M params = 405 MB).
* Without ``llm_path`` the layer gets random weights from ``llm_config`` (updates LLaMA-7B's shape) and a
  warning says so: for tests and FLOP counting only.
* The layer is frozen: its weights are non-persistent buffers (as timm keeps fixed tensors), so they are not
  parameters (no optimizer, no "missing gradient", nothing can make them trainable) and not in ``state_dict``: a
  checkpoint holds only the ViT and the two projections (``llm_path`` supplies the layer again). Files of the
  earlier format (with ``llm.layer.*`` entries) still load. The layer is always in eval mode.
* Causal mask off: every attention module's ``is_causal`` is set to False and no mask is passed.
* Rotary off: the layer's ``position_embeddings`` argument gets ``cos = 1, sin = 0`` (the identity rotation),
  which is the paper's "RoPE removed" without touching the layer's code.

``llm_dtype='bfloat16'`` runs the layer in bf16 (inputs are cast, outputs cast back to the ViT's dtype).
Input size: fixed at the cfg's (``fixed_input_size``, as timm's ViT/DeiT cfgs: the learned position embedding is
built for it); ``dynamic_img_size=True`` or ``img_size=`` serve other sizes, as in timm's ViT.
FX: :class:`FrozenLLMBlock` is a timm notrace (leaf) module. TorchScript is not supported (see ``_NOT_SCRIPTABLE``);
``torch.compile`` is.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_filter
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._registry import register_zoo_model
from .layers.llm_block import FrozenLLMBlock, load_llm_layer, random_llm_layer

__all__ = ["VisionTransformerLLM", "checkpoint_filter_fn"]

_LLM_PREFIXES = ("llm_proj_in.", "llm_proj_out.", "llm.")


class VisionTransformerLLM(VisionTransformer):
    """timm ``VisionTransformer`` with a frozen LLM decoder layer between the blocks and the final norm.

    Args (besides timm's ``VisionTransformer`` ones):
        llm_path: folder of a ``save_pretrained`` causal LM; ``None``: random layer (warns).
        llm_layer: which decoder layer (negative counts from the end); ``None``: the last.
        llm_dtype: dtype of the LLM layer (``'float32'``, ``'bfloat16'``, ``'float16'``); ``None``: float32.
        llm_config: without ``llm_path``, updates to the random layer's config (LLaMA-7B by default;
            ``model_type`` picks another family).
        llm_out_norm: parameter-free RMS normalisation after the layer (official: on).
    """

    def __init__(
        self,
        *args: Any,
        llm_path: str | None = None,
        llm_layer: int | None = None,
        llm_dtype: str | torch.dtype | None = None,
        llm_config: Mapping[str, Any] | None = None,
        llm_out_norm: bool = True,
        device=None,
        dtype=None,
        **kwargs: Any,
    ):
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        dd = {"device": device, "dtype": dtype}
        if llm_path:
            layer, config = load_llm_layer(llm_path, llm_layer, llm_dtype, device=device)
        else:
            if torch.device(device or "cpu").type != "meta":
                warnings.warn(
                    f"{type(self).__name__}: no llm_path given, so the LLM layer has RANDOM weights (tests only); "
                    "pass llm_path=<folder of a save_pretrained causal LM, e.g. LLaMA-7B>.",
                    stacklevel=2,
                )
            layer, config = random_llm_layer(llm_config, llm_layer, llm_dtype, device=device)
        self.llm_dim = int(config.hidden_size)
        self.llm_path = str(llm_path) if llm_path else None
        head_dim = getattr(config, "head_dim", None) or self.llm_dim // int(config.num_attention_heads)
        eps = float(getattr(config, "rms_norm_eps", 1e-6) or 1e-6)
        self.llm_proj_in = nn.Linear(self.embed_dim, self.llm_dim, bias=False, **dd)
        self.llm = FrozenLLMBlock(layer, head_dim=int(head_dim), out_norm=llm_out_norm, norm_eps=eps)
        self.llm_proj_out = nn.Linear(self.llm_dim, self.embed_dim, bias=False, **dd)
        if torch.device(device or "cpu").type != "meta":
            trunc_normal_(self.llm_proj_in.weight, std=0.02)
            trunc_normal_(self.llm_proj_out.weight, std=0.02)

    # ------------------------------------------------------------------------------------------- the LLM stage
    def forward_llm(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, embed_dim)`` after the ViT blocks -> projections + frozen LLM layer -> same shape."""
        if self.llm is None:  # pruned by prune_intermediate_layers(prune_norm=True)
            return x
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            h = checkpoint(self._llm_stage, x, use_reentrant=False)
        else:
            h = self._llm_stage(x)
        return h

    def _llm_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.llm_proj_out(self.llm(self.llm_proj_in(x)))

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ):
        x = self._embed_tokens(x)
        x = self._run_blocks(x, attn_mask, is_causal)
        return self.norm(self.forward_llm(x))

    def _embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def _run_blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        for blk in self.blocks:
            if attn_mask is not None or is_causal:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
            elif self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ):
        """timm's ViT contract: intermediates are block outputs (``norm=True``: through the final norm, without
        the LLM stage); the final output is :meth:`forward_features` (blocks -> LLM stage -> norm)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x = self._embed_tokens(x)
        n_run = max_index + 1 if (stop_early and intermediates_only) else len(self.blocks)
        inters: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks[:n_run]):
            if attn_mask is not None or is_causal:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
            elif self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                inters.append(self.norm(x) if norm else x)
        npt = self.num_prefix_tokens
        prefix = [y[:, :npt] for y in inters] if npt else None
        inters = [y[:, npt:] for y in inters] if npt else inters
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            inters = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in inters]
        final = None if intermediates_only else self.norm(self.forward_llm(x))
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": inters}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if final is not None:
                out["image_features"] = final
            return out
        if prefix is not None and return_prefix_tokens:
            inters = list(zip(inters, prefix))
        return inters if intermediates_only else (final, inters)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As timm's; ``prune_norm=True`` also drops the LLM stage (features then come straight from the blocks)."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_norm:
            self.llm_proj_in = self.llm_proj_out = self.llm = None
        return take_indices


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: VisionTransformerLLM) -> dict:
    """timm's ViT filter (DeiT/ViT/official files), then fill the projections from the model when the file lacks
    them (plain ``deit_*`` / ``vit_*`` weights). The frozen LLM layer always comes from ``llm_path``: ``llm.*``
    entries of older zoo files (which stored the layer) are dropped."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    llm_entries = {k: v for k, v in state_dict.items() if k.startswith(_LLM_PREFIXES)}
    vit_part = {k: v for k, v in state_dict.items() if not k.startswith(_LLM_PREFIXES)}
    out = dict(_vit_filter(vit_part, model))
    for key, value in model.state_dict().items():
        if key.startswith(_LLM_PREFIXES):
            out[key] = llm_entries.get(key, value)
    return out


# --------------------------------------------------------------------------------------------- registration


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformerLLM:
    out_indices = kwargs.pop("out_indices", 3)
    with warnings.catch_warnings():
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "meta":
            warnings.simplefilter("ignore")
        return build_model_with_cfg(
            VisionTransformerLLM,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": True,  # as timm's ViT cfgs: the learned position embedding is built for input_size
        "license": "other",
        "paper_ids": "arXiv:2310.12973",
        "paper_name": "Frozen Transformers in Language Models Are Effective Visual Encoder Layers",
        "origin_url": "https://github.com/ziqipang/LM4VisualEncoding",
        "notes": (
            "No zoo weights. The ViT part loads timm's DeiT weights (pretrained_cfg_overlay=dict(file=...) with a "
            "deit_*_patch16_224 file); the LLM layer comes from llm_path (LLaMA-7B: Meta's LLaMA licence)."
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_tiny_llm": _cfg(),
        "vit_small_llm": _cfg(),
        "vit_base_llm": _cfg(),
    }
)


_NOT_SCRIPTABLE = (
    "the frozen LLM layer is a transformers decoder layer, whose forward takes **kwargs "
    "(Unpack[TransformersKwargs]) and a KV-cache argument, which torch.jit.script cannot compile"
)


@register_zoo_model(not_scriptable=_NOT_SCRIPTABLE)
def vit_tiny_llm(pretrained: bool = False, **kwargs) -> VisionTransformerLLM:
    """DeiT-Ti (192 wide, 12 blocks, 3 heads) + frozen LLaMA-7B last layer (paper: ImageNet top-1 72.2 -> 73.7, unverified)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("vit_tiny_llm", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model(not_scriptable=_NOT_SCRIPTABLE)
def vit_small_llm(pretrained: bool = False, **kwargs) -> VisionTransformerLLM:
    """DeiT-S (384 wide, 12 blocks, 6 heads) + frozen LLaMA-7B last layer (official: ImageNet top-1 80.1 -> 80.7)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("vit_small_llm", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model(not_scriptable=_NOT_SCRIPTABLE)
def vit_base_llm(pretrained: bool = False, **kwargs) -> VisionTransformerLLM:
    """DeiT-B / ViT-B/16 (768 wide, 12 blocks, 12 heads) + frozen LLaMA-7B last layer."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("vit_base_llm", pretrained=pretrained, **dict(model_args, **kwargs))
