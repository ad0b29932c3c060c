"""Zoo model families. Importing this package registers every family with timm."""

from . import (
    biformer,  # noqa: F401
    herseg,  # noqa: F401
    qtseg,  # noqa: F401
    reid,  # noqa: F401
    sparsifiner,  # noqa: F401
    vit_llm,  # noqa: F401
)
from ._registry import NameCollisionError, ZooModelInfo, model_info, register_zoo_model, zoo_model_names

__all__ = ["NameCollisionError", "ZooModelInfo", "model_info", "register_zoo_model", "zoo_model_names"]
