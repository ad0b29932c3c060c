"""Register zoo models with timm without ever overwriting a name timm already owns.

timm's ``register_model`` silently replaces an existing entry (with only a warning) and
drops its pretrained tags, which would hijack timm's own models for every user in the
process. ``register_zoo_model`` refuses instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import timm
from timm.models import register_model

__all__ = ["register_zoo_model", "zoo_model_names", "NameCollisionError"]

_ZOO_MODELS: dict[str, str] = {}  # model name -> defining module

F = TypeVar("F", bound=Callable)


class NameCollisionError(RuntimeError):
    """A zoo model tried to register a name timm (or another package) already holds."""


def register_zoo_model(fn: F) -> F:
    """Decorator: ``timm.models.register_model`` that fails loudly on an existing name."""
    name = fn.__name__
    owner = _ZOO_MODELS.get(name)
    if timm.is_model(name) and owner != fn.__module__:
        raise NameCollisionError(
            f"cannot register '{name}' from {fn.__module__}: timm already has a model of that name; "
            "pick a name that timm.list_models() does not return."
        )
    _ZOO_MODELS[name] = fn.__module__
    return register_model(fn)


def zoo_model_names() -> list[str]:
    """The names registered by visionzoo itself, sorted."""
    return sorted(_ZOO_MODELS)
