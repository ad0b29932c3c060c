"""visionzoo: recent attention backbones and medical segmenters as first-class timm models.

``import visionzoo`` registers every zoo model with timm, so ``timm.create_model('biformer_tiny')``
works afterwards.
"""

from __future__ import annotations

from . import (
    _compat,  # noqa: F401  (side effect: fixes for pinned third-party versions)
    hub,
    models,  # noqa: F401  (side effect: registration)
)
from .hub import save_pretrained
from .models import zoo_model_names

hub.install()  # timm's load_pretrained -> visionzoo.hub for zoo models only (download, verify, clear errors)

__version__ = "0.1.0"


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """The zoo's own registered model names (not timm's), optionally filtered like timm.list_models."""
    import fnmatch

    import timm

    names = [n for n in zoo_model_names() if fnmatch.fnmatch(n, pattern)]
    if pretrained:
        with_weights = {n.split(".")[0] for n in timm.list_pretrained()}
        names = [n for n in names if n in with_weights]
    return names


__all__ = ["list_models", "save_pretrained", "__version__"]
