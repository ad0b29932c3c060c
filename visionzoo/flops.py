"""Parameter and FLOP counts with ``torch.utils.flop_counter`` (no fvcore / thop dependency).

Counts are of the model's *algorithm* at one input size, forward only, batch 1:

* ``scaled_dot_product_attention`` runs under the math backend while counting, so attention shows up as the
  matmuls it is made of (``FlopCounterMode`` has no formula for the fused CPU kernels and would count 0);
* modules with a ``dense_ratio`` attribute (BiFormer's routing attention: a masked dense shortcut that is faster on
  CPU but spends more FLOPs, see ``visionzoo/models/layers/routing_attention.py``) are counted in their routed
  (gather) form, which is what the papers report;
* MACs = FLOPs / 2 (``FlopCounterMode`` counts a multiply-add as 2 FLOPs, fvcore counts 1 "flop" per MAC).

Models are built on the ``meta`` device (no memory, no weights: BiFormer-B counts in well under a second); a
model whose forward needs real data falls back to the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["algorithmic_mode", "count_flops", "count_params", "model_complexity"]


def count_params(model: nn.Module) -> int:
    """Number of weights: parameters plus the frozen weights of modules that hold them as buffers
    (``static_buffers = True``, e.g. the frozen LLM layer of ``vit_*_llm``); shared tensors counted once."""
    seen: set[int] = set()
    total = 0
    frozen = [b for m in model.modules() if getattr(m, "static_buffers", False) for b in m.buffers()]
    for p in [*model.parameters(), *frozen]:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@contextlib.contextmanager
def algorithmic_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Math SDPA and routed (gather) attention while counting; restores the model afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = [(m, m.dense_ratio) for m in model.modules() if hasattr(m, "dense_ratio")]
    for m, _ in saved:
        m.dense_ratio = 0.0
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield model
    finally:
        for m, value in saved:
            m.dense_ratio = value


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 x MACs) of one eval-mode forward of ``model`` on ``x`` (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    # no parameter needs a gradient while counting: FlopCounterMode's module tracker hooks the autograd graph of
    # tensors that require grad and trips over parameter views made under no_grad (seen in SAM-style decoders)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        with algorithmic_mode(model), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def model_complexity(name: str, input_size: Sequence[int] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``{'params', 'flops', 'gmacs', 'input_size', 'device'}`` of ``timm.create_model(name, **kwargs)``.

    ``input_size`` is ``(C, H, W)``; default: the model's pretrained_cfg ``input_size``.
    """
    import timm

    last_error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            model = timm.create_model(name, pretrained=False, device=device, **kwargs)
            size = tuple(input_size or model.pretrained_cfg.get("input_size") or (3, 224, 224))
            flops = count_flops(model, torch.randn(1, *size, device=device))
        except (NotImplementedError, RuntimeError, TypeError) as e:  # meta: data-dependent code
            last_error = e
            continue
        return dict(
            params=count_params(model),
            flops=flops,
            gmacs=flops / 2e9,
            input_size=size,
            device=device,
        )
    assert last_error is not None
    raise last_error
