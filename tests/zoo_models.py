"""Small constructions of every zoo model, and the perturbation that makes their zero-initialised branches count.

Tests that compare two ways of running a model (eager vs compiled, exported, scripted, batched vs single) use
:func:`create_small` + :func:`perturb_zero_init`: a freshly initialised QTSeg ``ChannelAttention.gamma``, the Re-ID
block's ``gamma`` or HER-Seg's zero-init BatchNorm weights switch their branch off, so a check on a fresh model
would pass whatever the branch computes.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

import visionzoo

_TINY_LLM = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
}


@dataclass(frozen=True)
class SmallModel:
    """Constructor kwargs that keep every code path of a family (one block per stage, narrow widths)."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 64, 64)


SMALL: dict[str, SmallModel] = {
    "biformer_*": SmallModel({"depths": (1, 1, 1, 1), "embed_dims": (32, 64, 128, 256)}, (3, 112, 112)),
    "herseg": SmallModel({"img_size": 128}, (3, 128, 128)),
    "qtseg": SmallModel({"width": 8, "mlp_dim": 64}, (3, 64, 64)),
    "reid_resnet50_*": SmallModel(
        {"layers": (1, 1, 1, 1), "attn_positions": [(0, 0), (2, 0), (3, 0)]}, (3, 64, 32)
    ),
    "sparsifiner_*": SmallModel(
        {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2}, (3, 32, 32)
    ),
    "vit_*_llm": SmallModel(
        {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 3,
            "num_heads": 2,
            "llm_config": _TINY_LLM,
        },
        (3, 32, 32),
    ),
}

# one model per family: what per-family checks (compile, export) run on
FAMILY_REPRESENTATIVES = [
    "biformer_tiny",
    "herseg",
    "qtseg",
    "reid_resnet50_lab",
    "sparsifiner_deit_tiny",
    "vit_tiny_llm",
]


def small(name: str) -> SmallModel:
    matches = [v for k, v in SMALL.items() if fnmatch.fnmatchcase(name.split(".")[0], k)]
    if len(matches) != 1:
        raise KeyError(
            f"tests/zoo_models.py: {name} matches {len(matches)} SMALL entries, expected exactly one"
        )
    return matches[0]


def create_small(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name)`` at the family's small size (explicit ``kwargs`` win), seeded."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **{**small(name).kwargs, **kwargs})


@torch.no_grad()
def perturb_zero_init(model: nn.Module, seed: int = 0, scale: float = 0.5) -> list[str]:
    """Give every all-zero floating-point parameter random values; returns their names.

    This switches on the branches a model starts with switched off (zero-init residual scales and norm weights)
    and also perturbs zero biases, which is harmless for equivalence checks.
    """
    generator = torch.Generator().manual_seed(seed)
    changed = []
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.numel() and not p.detach().any():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
            changed.append(name)
    return changed


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def zoo_families() -> list[str]:
    """The representatives, checked against the registry so a new family cannot be forgotten here."""
    families = {visionzoo.models.model_info(n).module for n in visionzoo.list_models()}
    covered = {visionzoo.models.model_info(n).module for n in FAMILY_REPRESENTATIVES}
    missing = families - covered
    if missing:
        raise AssertionError(
            f"tests/zoo_models.py: FAMILY_REPRESENTATIVES lacks a model of {sorted(missing)}"
        )
    return FAMILY_REPRESENTATIVES
