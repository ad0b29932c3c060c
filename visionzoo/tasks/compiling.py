"""``compile: true``: one place that decides how a task compiles its model."""

from __future__ import annotations

from torch import nn

__all__ = ["maybe_compile"]


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """Compile ``model`` in place with the default (inductor) backend when ``enabled``.

    ``nn.Module.compile()`` keeps the module itself, so checkpoints hold the plain parameter names (no
    ``_orig_mod.`` prefix that ``torch.compile(model)``'s wrapper adds), resume into an uncompiled task and load
    into ``timm.create_model`` as they are.
    """
    if enabled:
        model.compile()
    return model
