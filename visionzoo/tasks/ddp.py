"""What data-parallel training may skip: buffers that never change."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["ignore_static_buffers"]


def ignore_static_buffers(task: nn.Module) -> list[str]:
    """Exclude the buffers of every submodule marked ``static_buffers = True`` (e.g. the frozen LLM layer of
    ``vit_*_llm``, ~200 M values) from DDP's broadcast, which otherwise copies rank 0's buffers to every rank at
    every forward. Names are relative to ``task``, the module Lightning's DDP strategy wraps. Returns them."""
    names = [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in task.named_modules()
        if getattr(module, "static_buffers", False)
        for name, _ in module.named_buffers()
    ]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(task, names)
    return names
