"""Sparsifiner (Wei et al., CVPR 2023): DeiT with instance-dependent sparse attention from a connectivity predictor.

Re-implemented from the paper's description and the facts in the project's research notes (the official
lim142857/Sparsifiner demo code, MIT, publishes no weights). The backbone is timm's :class:`VisionTransformer`
(state_dict keys equal timm's ``deit_*_patch16_224``, so DeiT weights load as they are); each block's ``attn`` is a
:class:`~visionzoo.models.layers.sparse_attention.SparsifinerAttention` that adds ``attn.mask_predictor``
(``proj_c_q``, ``proj_c_k``, ``proj_n``, ``proj_back_n``, official names).

Defaults follow the official default config: keep rate 0.25 (50 of 197 keys per query), coefficient top-8, basis
threshold 0.02, token reduction 6, channel reduction 2; the cls-token row stays dense. ``attn_impl``: ``dense_mask``
(official simulation), ``sparse`` (only the kept connections are computed), ``dense`` (plain DeiT attention), or
``None`` (default: ``dense_mask`` in train mode, ``sparse`` in eval mode). Token pruning (off in the official default
config) is not implemented.

The predictor gets no gradient from the logits (its top-k mask is discrete and detached), so its parameters are
created frozen (``requires_grad=False``); :class:`visionzoo.tasks.DistillationTask` trains them with the
attention-reconstruction loss (phase 1), then the backbone (phase 2).

Scriptable and FX-traceable like timm's DeiT (the scripted ``sparse`` path uses the gather form); attention masks are
refused at run time (the predictor has none).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import CheckpointError
from ._registry import register_zoo_model
from .layers.sparse_attention import ATTN_IMPLS, SparsifinerAttention, attention_flops

__all__ = ["Sparsifiner", "checkpoint_filter_fn", "dense_teacher", "sparsifiner_flops"]


class Sparsifiner(VisionTransformer):
    """timm DeiT (``VisionTransformer`` with a cls token) plus one connectivity predictor per block."""

    def __init__(
        self,
        *,
        keep_rate: float = 0.25,
        coef_topk: int = 8,
        basis_threshold: float = 0.02,
        reduce_n: int = 6,
        reduce_c: int = 2,
        attn_impl: str | None = None,
        **kwargs,
    ) -> None:
        if kwargs.get("class_token") is False or kwargs.get("reg_tokens") or kwargs.get("no_embed_class"):
            raise ValueError(
                "Sparsifiner needs a DeiT layout: one cls token, no register tokens, embedded cls"
            )
        if kwargs.get("dynamic_img_size"):
            raise ValueError(
                "Sparsifiner's predictor is tied to the token count: dynamic_img_size is not supported"
            )
        super().__init__(**kwargs)
        self.vit_kwargs = dict(kwargs)  # the dense teacher is VisionTransformer(**vit_kwargs)
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.num_tokens = num_tokens
        for blk in self.blocks:
            old = blk.attn
            new = SparsifinerAttention(
                self.embed_dim,
                old.num_heads,
                num_tokens,
                qkv_bias=old.qkv.bias is not None,
                keep_rate=keep_rate,
                reduce_c=reduce_c,
                reduce_n=reduce_n,
                coef_topk=coef_topk,
                basis_threshold=basis_threshold,
                attn_impl=attn_impl,
                attn_drop=old.attn_drop.p,
                proj_drop=old.proj_drop.p,
            )
            new.qkv, new.proj = old.qkv, old.proj  # keep timm's initialisation
            blk.attn = new
        if kwargs.get("device") is not None:
            self.to(kwargs["device"])  # the replaced attention modules were built on the default device
        for p in self.predictor_parameters():
            p.requires_grad_(False)

    # -- sparsity controls -------------------------------------------------------------------------------------
    def attentions(self) -> list[SparsifinerAttention]:
        return [blk.attn for blk in self.blocks]

    def predictor_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".mask_predictor." in n]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".mask_predictor." not in n]

    def set_attn_impl(self, attn_impl: str | None) -> None:
        """``dense`` | ``dense_mask`` | ``sparse`` | ``None`` (train: dense_mask, eval: sparse) for every block."""
        if attn_impl is not None and attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS} or None, got {attn_impl!r}")
        for attn in self.attentions():
            attn.attn_impl = attn_impl

    def set_keep_rate(self, keep_rate: float) -> None:
        for attn in self.attentions():
            attn.keep_rate = keep_rate

    def set_recon(self, recon: bool) -> None:
        """Reconstruction phase: dense attention; each block keeps its predictor's estimate in ``approx_attn``."""
        for attn in self.attentions():
            attn.recon = recon
            attn.approx_attn = None

    def approx_attentions(self) -> list[torch.Tensor]:
        """The predictors' estimates ``(B, H, N-1, N)`` from the last forward in reconstruction mode."""
        out = [a.approx_attn for a in self.attentions()]
        if any(a is None for a in out):
            raise RuntimeError("no approx_attn: call set_recon(True) before the forward")
        return out  # type: ignore[return-value]

    def attention_flops(self) -> dict[str, int]:
        a = self.attentions()[0]
        p = a.mask_predictor
        return attention_flops(
            self.num_tokens,
            self.embed_dim,
            a.num_heads,
            a.keep_rate,
            reduce_c=a.head_dim // p.proj_c_q.out_features,
            reduce_n=self.num_tokens // p.num_basis,
            coef_topk=p.coef_topk,
        )


def dense_teacher(model: Sparsifiner) -> VisionTransformer:
    """timm's dense DeiT with the same architecture and (backbone) weights as ``model``, frozen, in eval mode."""
    kwargs = {
        k: v for k, v in model.vit_kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay")
    }
    teacher = VisionTransformer(**kwargs)
    state = {k: v for k, v in model.state_dict().items() if ".mask_predictor." not in k}
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval()


def sparsifiner_flops(model: Sparsifiner) -> dict[str, float]:
    """Per-image attention FLOPs summed over the blocks: dense vs the sparse path, and the reduction."""
    per = model.attention_flops()
    depth = len(model.blocks)
    out = {k: float(v * depth) for k, v in per.items() if k != "keep"}
    out["keep"] = per["keep"]
    out["attn_reduction"] = 1.0 - per["attn_sparse"] / per["attn_dense"]
    out["attn_with_predictor_reduction"] = 1.0 - (per["attn_sparse"] + per["predictor"]) / per["attn_dense"]
    out["mhsa_reduction"] = 1.0 - per["mhsa_sparse"] / per["mhsa_dense"]
    return out


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept a DeiT / timm ViT checkpoint (``{'model': ...}`` or bare, ``module.`` prefixes) or one of ours.

    Predictor keys that the file lacks (a plain DeiT file) are filled from the model's initialisation. DeiT's
    distillation-token keys (``dist_token``, ``head_dist``) are refused: use the non-distilled DeiT.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state_dict.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if k not in own:
            unknown.append(k)
            continue
        out[k] = v.to(own[k].dtype) if v.is_floating_point() else v
    if unknown:
        raise CheckpointError(f"Sparsifiner checkpoint has keys that are not DeiT's or ours: {unknown[:8]}")
    for k, v in own.items():
        if k not in out and ".mask_predictor." in k:
            out[k] = v
    return out


def _create_sparsifiner(variant: str, pretrained: bool = False, **kwargs) -> Sparsifiner:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        Sparsifiner,
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
        "fixed_input_size": True,
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2303.13755",
        "paper_name": "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
        "origin_url": "https://github.com/lim142857/Sparsifiner",
        "notes": (
            "No Sparsifiner weights are published. Start from DeiT weights (Apache-2.0): "
            "pretrained_cfg_overlay=dict(file='deit_small_patch16_224-cd65a155.pth') loads them (predictors stay "
            "at their initialisation), then train with experiment=sparsifiner_deit_small_in1k."
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "sparsifiner_deit_tiny.untrained": _cfg(),
        "sparsifiner_deit_small.untrained": _cfg(),
        "sparsifiner_deit_base.untrained": _cfg(),
    }
)


# auxiliary_only: the predictor's top-k mask is discrete and detached from the task loss (as in the official code), so
# ``logits`` give it no gradient; it learns only from the attention-reconstruction loss (DistillationTask phase 1).
_AUX = ("mask_predictor.",)


@register_zoo_model(auxiliary_only=_AUX)
def sparsifiner_deit_tiny(pretrained: bool = False, **kwargs) -> Sparsifiner:
    """Sparsifiner on DeiT-Ti/16 (dim 192, 3 heads, depth 12), keep rate 0.25."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_sparsifiner("sparsifiner_deit_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model(auxiliary_only=_AUX)
def sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> Sparsifiner:
    """Sparsifiner on DeiT-S/16 (dim 384, 6 heads, depth 12), keep rate 0.25: the official default."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_sparsifiner("sparsifiner_deit_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model(auxiliary_only=_AUX)
def sparsifiner_deit_base(pretrained: bool = False, **kwargs) -> Sparsifiner:
    """Sparsifiner on DeiT-B/16 (dim 768, 12 heads, depth 12), keep rate 0.25."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_sparsifiner("sparsifiner_deit_base", pretrained=pretrained, **dict(model_args, **kwargs))
