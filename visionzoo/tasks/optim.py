"""Optimizer and schedule construction shared by every task."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from timm.optim import create_optimizer_v2

from ..errors import ConfigError
from .schedules import Constant, ExponentialDecay, PolyDecay, StepDecay, WarmupCosine

DEFAULT_OPTIMIZER: dict[str, Any] = {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05}
DEFAULT_SCHEDULER: dict[str, Any] = {
    "name": "cosine",
    "warmup_epochs": 0,
    "warmup_ratio": 0.0,
    "min_ratio": 0.0,
    "cooldown_epochs": 0,
}


def scaled_lr(cfg: dict[str, Any], global_batch_size: int | None) -> dict[str, Any]:
    """Resolve ``lr_base`` (per ``lr_base_size`` images) into ``lr`` by the linear scaling rule.

    Paper recipes state "5e-4 per 512 images"; the effective batch (per-device batch x devices x
    nodes x accumulation) is only known once the trainer exists.
    """
    cfg = dict(cfg)
    lr_base = cfg.pop("lr_base", None)
    lr_base_size = cfg.pop("lr_base_size", 512)
    if lr_base is not None:
        if not global_batch_size:
            raise ConfigError("optimizer.lr_base needs the batch size; set optimizer.lr instead.")
        cfg["lr"] = float(lr_base) * global_batch_size / float(lr_base_size)
    return cfg


def global_batch_size(trainer: L.Trainer | None) -> int | None:
    """Images per optimizer step over all processes (data.batch_size x world size x accumulation), for ``lr_base``."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    batch = getattr(datamodule, "batch_size", None)
    if batch is None:
        return None
    return int(batch) * trainer.world_size * trainer.accumulate_grad_batches


def build_optimizer(model: torch.nn.Module, cfg: dict[str, Any] | None) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2``: honours ``no_weight_decay`` and, with ``layer_decay``, ``group_matcher``.

    timm's param-group builders skip parameters with ``requires_grad=False``, so frozen layers
    never reach the optimizer.
    """
    kwargs = {**DEFAULT_OPTIMIZER, **(cfg or {})}
    kwargs.pop("lr_base", None), kwargs.pop("lr_base_size", None)
    # null in a config means "the optimizer's default" (e.g. an SGD override of an AdamW model config)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])
    return create_optimizer_v2(model, **kwargs)


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimizer steps in one epoch on this process (after limit_train_batches and accumulation)."""
    _ = trainer.estimated_stepping_batches  # sets up the train dataloader and num_training_batches
    batches = trainer.num_training_batches
    # iteration-based runs (max_epochs=-1): estimated_stepping_batches returned max_steps without the set-up
    if not math.isfinite(batches) and trainer.max_epochs == -1:
        trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ConfigError(
            "the training dataloader has no length; set trainer.max_steps and scheduler.name=constant."
        )
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def build_scheduler(
    optimizer: torch.optim.Optimizer, trainer: L.Trainer, cfg: dict[str, Any] | None
) -> dict[str, Any]:
    """A per-step LambdaLR config for Lightning.

    The schedule length is ``trainer.max_epochs`` epochs, not ``max_steps``: ``max_steps`` is a
    stop (e.g. a pre-empted job), so a run stopped early and resumed follows the same curve as
    one that never stopped. With ``max_epochs=-1`` the length is ``max_steps``.
    ``warmup_lr`` / ``min_lr`` (absolute) override ``warmup_ratio`` / ``min_ratio``; the last
    ``cooldown_epochs`` hold the minimum LR, as in timm's training script.
    """
    cfg = {**DEFAULT_SCHEDULER, **(cfg or {})}
    base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    if cfg.get("warmup_lr") is not None:
        cfg["warmup_ratio"] = float(cfg["warmup_lr"]) / base_lr
    if cfg.get("min_lr") is not None:
        cfg["min_ratio"] = float(cfg["min_lr"]) / base_lr
    per_epoch = steps_per_epoch(trainer)
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        epochs = max(1, trainer.max_epochs - int(cfg["cooldown_epochs"]))
        total = per_epoch * epochs
    elif trainer.max_steps and trainer.max_steps > 0:
        total = trainer.max_steps
    else:
        raise ConfigError("set trainer.max_epochs or trainer.max_steps so the LR schedule has a length.")
    warmup = int(round(float(cfg["warmup_epochs"]) * per_epoch)) + int(cfg.get("warmup_steps", 0))
    warmup = min(warmup, max(0, total - 1))
    name = cfg["name"]
    if name == "cosine":
        fn = WarmupCosine(total, warmup, float(cfg["warmup_ratio"]), float(cfg["min_ratio"]))
    elif name == "constant":
        fn = Constant(warmup, float(cfg["warmup_ratio"]))
    elif name == "step":  # StepLR per epoch: lr x gamma every step_epochs
        fn = StepDecay(
            per_epoch, int(cfg.get("step_epochs", 30)), float(cfg.get("gamma", 0.1)), float(cfg["min_ratio"])
        )
    elif name == "exponential":  # ExponentialLR per epoch
        fn = ExponentialDecay(per_epoch, float(cfg.get("gamma", 0.98)), float(cfg["min_ratio"]))
    elif name == "poly":
        fn = PolyDecay(
            total, float(cfg.get("power", 0.9)), warmup, float(cfg["warmup_ratio"]), float(cfg["min_ratio"])
        )
    else:
        raise ConfigError(
            f"unknown scheduler.name '{name}'; expected one of cosine, constant, step, exponential, poly."
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def configure_optimizers(
    model: torch.nn.Module, trainer: L.Trainer, optimizer_cfg: dict[str, Any], scheduler_cfg: dict[str, Any]
) -> dict[str, Any]:
    """What a task's ``configure_optimizers`` returns for the shared recipe: timm optimizer (``lr_base`` scaled by
    the global batch) + the per-step schedule."""
    optimizer = build_optimizer(model, scaled_lr(optimizer_cfg, global_batch_size(trainer)))
    return {"optimizer": optimizer, "lr_scheduler": build_scheduler(optimizer, trainer, scheduler_cfg)}
