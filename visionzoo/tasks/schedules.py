"""Per-step learning-rate schedules as picklable callables (for ``LambdaLR``).

A plain lambda would not survive ``LambdaLR.state_dict()`` round trips in Lightning
checkpoints; a small class does, which keeps resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    """Multiplier on the base LR: linear warm-up, then cosine decay to ``min_ratio``.

    ``warmup_steps`` steps go from ``warmup_ratio`` to 1; the remaining steps up to
    ``total_steps`` follow half a cosine down to ``min_ratio`` (held there afterwards).
    """

    total_steps: int
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Constant:
    """Multiplier 1 after an optional linear warm-up."""

    warmup_steps: int = 0
    warmup_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        return 1.0


@dataclass
class StepDecay:
    """``gamma ** (epoch // step_epochs)`` (PyTorch ``StepLR`` stepped per epoch), floored at ``min_ratio``."""

    steps_per_epoch: int
    step_epochs: int
    gamma: float
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        epoch = step // max(1, self.steps_per_epoch)
        return max(self.min_ratio, self.gamma ** (epoch // max(1, self.step_epochs)))


@dataclass
class ExponentialDecay:
    """``gamma ** epoch`` (PyTorch ``ExponentialLR`` stepped per epoch), floored at ``min_ratio``."""

    steps_per_epoch: int
    gamma: float
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return max(self.min_ratio, self.gamma ** (step // max(1, self.steps_per_epoch)))


@dataclass
class PolyDecay:
    """mmseg's ``poly`` policy: ``min + (1 - min) * (1 - step / total) ** power`` over the whole run; a linear
    warm-up multiplies it by ``warmup_ratio + (1 - warmup_ratio) * step / warmup_steps`` while it lasts (so the
    curve is continuous where the warm-up ends). Without warm-up and ``min_ratio`` this is nnU-Net's schedule."""

    total_steps: int
    power: float = 0.9
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total_steps))
        value = self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power
        if self.warmup_steps > 0 and step < self.warmup_steps:
            value *= self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        return value
