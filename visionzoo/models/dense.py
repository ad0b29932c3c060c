"""A classifier backbone + a dense head = a segmenter: :class:`DenseSegmenter`.

``DenseSegmenter('biformer_tiny', head='upernet', num_classes=150)`` builds
``timm.create_model('biformer_tiny', features_only=True, out_indices=(0, 1, 2, 3), **backbone_kwargs)`` and a
head from :mod:`visionzoo.heads` on its feature levels, and returns ``(B, num_classes, H, W)`` logits at the
input resolution (bilinear upsampling of the stride-4 head output), like every zoo segmenter.

Segmenters are rebuilt from a plain-dict *spec* (:func:`model_spec` / :func:`build_from_spec`), which the
segmentation task stores in its checkpoints so ``predict.py`` needs nothing but the ``.ckpt`` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from ..errors import ConfigError
from ..heads import FCNHead, build_head
from ..heads._common import resize

__all__ = ["DenseSegmenter", "build_from_spec"]


class DenseSegmenter(nn.Module):
    """Backbone (``features_only``) + UPerNet / FPN head (+ optional auxiliary FCN head for training).

    Args:
        backbone_name: any timm / zoo classifier that supports ``features_only``.
        head: ``'upernet'`` or ``'fpn'``.
        num_classes: output classes (background included).
        backbone_kwargs: extra ``timm.create_model`` kwargs (e.g. BiFormer's ``n_win=8, auto_pad=True,
            out_norm=True``; ``feature_cls='getter'`` for ``forward_intermediates`` features).
        head_kwargs: kwargs of the head class (:class:`~visionzoo.heads.UPerHead`, :class:`~visionzoo.heads.FPNHead`).
        aux_head: kwargs of an auxiliary :class:`~visionzoo.heads.FCNHead` (``in_index``, ``channels``, ...) or
            ``None``. Its logits are returned only by ``forward(x, return_aux=True)``; the task weights its loss.
        pretrained: load the backbone's pretrained classifier weights (classifier dropped).
        out_indices: backbone levels fed to the head (four, finest first).
    """

    def __init__(
        self,
        backbone_name: str,
        head: str = "upernet",
        num_classes: int = 150,
        backbone_kwargs: Mapping[str, Any] | None = None,
        head_kwargs: Mapping[str, Any] | None = None,
        aux_head: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        kwargs = dict(backbone_kwargs or {})
        for key in ("num_classes", "features_only", "global_pool"):
            kwargs.pop(key, None)
        kwargs.setdefault("out_indices", tuple(out_indices))
        try:
            self.backbone = timm.create_model(
                backbone_name, pretrained=pretrained, features_only=True, **kwargs
            )
        except (RuntimeError, AttributeError) as err:
            if "features_only" in str(err) or "feature" in str(err).lower():
                raise ConfigError(
                    f"model '{backbone_name}' cannot serve as a dense backbone: {err}"
                ) from None
            raise
        self.backbone_name = backbone_name
        self.num_classes = int(num_classes)
        self.head_name = str(head).lower()
        channels = list(self.backbone.feature_info.channels())
        self.feature_info = self.backbone.feature_info
        self.decode_head = build_head(self.head_name, channels, self.num_classes, **dict(head_kwargs or {}))
        self.aux_head = FCNHead(channels, self.num_classes, **dict(aux_head)) if aux_head else None
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        cfg.update(num_classes=self.num_classes, task="segmentation")
        cfg.pop("classifier", None)
        self.pretrained_cfg = self.default_cfg = cfg

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature levels."""
        return list(self.backbone(x))

    def forward(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, num_classes, H, W)`` at the input size; with ``return_aux`` also the auxiliary head's."""
        size = x.shape[-2:]
        features = self.forward_features(x)
        logits = resize(self.decode_head(features), size)
        if return_aux:
            if self.aux_head is None:
                raise ValueError("this DenseSegmenter has no auxiliary head.")
            return logits, resize(self.aux_head(features), size)
        return logits

    # ---------------------------------------------------------------- optimizer hooks (timm's create_optimizer_v2)
    def _inner_backbone(self) -> nn.Module | None:
        """The unwrapped classifier when the feature wrapper keeps it whole (``FeatureGetterNet.model``)."""
        inner = getattr(self.backbone, "model", None)
        return inner if isinstance(inner, nn.Module) else None

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = self._inner_backbone()
        if inner is None or not hasattr(inner, "no_weight_decay"):
            return set()  # 1-D params (norms, biases) are exempt anyway in timm's param groups
        return {f"backbone.model.{name}" for name in inner.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The backbone's layer groups (for ``layer_decay``) under ``backbone.model.``; head parameters match no
        group, so timm puts them in the last group (full learning rate)."""
        inner = self._inner_backbone()
        if inner is None or not hasattr(inner, "group_matcher"):
            raise ConfigError(
                f"optimizer.layer_decay needs the backbone's layer groups, which the '{self.backbone_name}' "
                "feature wrapper hides; add model.dense_kwargs.feature_cls=getter or set optimizer.layer_decay=null."
            )
        return _prefix_matcher(inner.group_matcher(coarse=coarse), "backbone.model.")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        target = self._inner_backbone() or self.backbone
        if hasattr(target, "set_grad_checkpointing"):
            target.set_grad_checkpointing(enable)


def _prefix_matcher(matcher: Any, prefix: str) -> Any:
    """Rewrite a timm group matcher's regexes (``'^stages\\.(\\d+)'``) to match ``prefix + name``."""
    escaped = re.escape(prefix)
    if isinstance(matcher, str):
        return "^" + escaped + matcher[1:] if matcher.startswith("^") else escaped + matcher
    if isinstance(matcher, dict):
        return {k: _prefix_matcher(v, prefix) for k, v in matcher.items()}
    if (
        isinstance(matcher, list | tuple)
        and len(matcher) == 2
        and isinstance(matcher[0], str)
        and (matcher[1] is None or isinstance(matcher[1], tuple))
    ):
        return (_prefix_matcher(matcher[0], prefix), matcher[1])
    if isinstance(matcher, list | tuple):
        return type(matcher)(_prefix_matcher(m, prefix) for m in matcher)
    return matcher


# ------------------------------------------------------------------------------------------------- specs
def build_from_spec(spec: Mapping[str, Any], pretrained: bool | None = None) -> nn.Module:
    """Rebuild a segmenter from the dict the runner stores in a checkpoint's hyper-parameters.

    ``{'type': 'dense', 'backbone': name, 'head': ..., 'num_classes': K, 'backbone_kwargs': {...},
    'head_kwargs': {...}, 'aux_head': {...} | None, 'pretrained': bool}`` builds a :class:`DenseSegmenter`;
    ``{'type': 'timm', 'name': name, 'kwargs': {...}}`` calls ``timm.create_model``. ``pretrained`` overrides
    the stored flag (``False`` when the weights come from the checkpoint anyway).
    """
    spec = dict(spec)
    kind = spec.get("type")
    if kind == "dense":
        return DenseSegmenter(
            spec["backbone"],
            head=spec.get("head", "upernet"),
            num_classes=int(spec["num_classes"]),
            backbone_kwargs=spec.get("backbone_kwargs"),
            head_kwargs=spec.get("head_kwargs"),
            aux_head=spec.get("aux_head"),
            pretrained=bool(spec.get("pretrained", False)) if pretrained is None else pretrained,
        )
    if kind == "timm":
        kwargs = dict(spec.get("kwargs") or {})
        if pretrained is not None:
            kwargs["pretrained"] = pretrained
        return timm.create_model(spec["name"], **kwargs)
    raise ConfigError(f"unknown model spec type {kind!r}; expected 'dense' or 'timm'.")
