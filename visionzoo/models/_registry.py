"""Register zoo models with timm, with one record per name of what the model is and can do.

timm's ``register_model`` silently replaces an existing entry (with only a warning) and drops its pretrained
tags, which would hijack timm's own models for every user in the process; ``register_zoo_model`` refuses instead.
Each registration also stores a :class:`ZooModelInfo` (task, TorchScript support, weights the paper trains only
through an auxiliary loss), read by the runner, the CLI, export and the tests instead of per-module tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, overload

import timm
from timm.models import register_model

__all__ = ["NameCollisionError", "ZooModelInfo", "model_info", "register_zoo_model", "zoo_model_names"]

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class ZooModelInfo:
    """What a registered zoo model is.

    Attributes:
        name: the timm model name.
        module: the defining module.
        task: ``classification``, ``segmentation`` or ``reid``; segmenters return ``(B, num_classes, H, W)``.
        not_scriptable: why ``torch.jit.script`` does not support the model (None: it does).
        auxiliary_only: parameter-name prefixes that the paper trains only through an auxiliary loss, so the task
            output carries no gradient to them (e.g. Sparsifiner's mask predictor).
    """

    name: str
    module: str
    task: str = "classification"
    not_scriptable: str | None = None
    auxiliary_only: tuple[str, ...] = ()

    @property
    def scriptable(self) -> bool:
        return self.not_scriptable is None


_ZOO_MODELS: dict[str, ZooModelInfo] = {}


class NameCollisionError(RuntimeError):
    """A zoo model tried to register a name timm (or another package) already holds."""


@overload
def register_zoo_model(fn: F) -> F: ...
@overload
def register_zoo_model(
    *, task: str = ..., not_scriptable: str | None = ..., auxiliary_only: tuple[str, ...] = ...
) -> Callable[[F], F]: ...
def register_zoo_model(fn=None, **info):
    """Decorator: ``timm.models.register_model`` that fails loudly on an existing name and records the model's
    :class:`ZooModelInfo` (``@register_zoo_model`` or ``@register_zoo_model(task="segmentation", ...)``)."""
    if fn is None:
        return lambda f: _register(f, info)
    return _register(fn, info)


def _register(fn: F, info: dict) -> F:
    name = fn.__name__
    owner = _ZOO_MODELS.get(name)
    if timm.is_model(name) and (owner is None or owner.module != fn.__module__):
        raise NameCollisionError(
            f"cannot register '{name}' from {fn.__module__}: timm already has a model of that name; "
            "pick a name that timm.list_models() does not return."
        )
    _ZOO_MODELS[name] = ZooModelInfo(name=name, module=fn.__module__, **info)
    return register_model(fn)


def zoo_model_names() -> list[str]:
    """The names registered by visionzoo itself, sorted."""
    return sorted(_ZOO_MODELS)


def model_info(name: str) -> ZooModelInfo:
    """The record of zoo model ``name`` (a pretrained tag such as ``biformer_tiny.in1k`` is accepted)."""
    arch = name.split(".")[0]
    try:
        return _ZOO_MODELS[arch]
    except KeyError:
        raise KeyError(f"'{arch}' is not a visionzoo model; visionzoo.list_models() names them.") from None
