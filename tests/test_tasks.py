"""Classification task: optimizer groups, schedule, Mixup, EMA and config groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from hydra_helpers import CONF_DIR, compose_cfg

from visionzoo.tasks import ClassificationTask
from visionzoo.tasks.optim import build_optimizer
from visionzoo.tasks.schedules import WarmupCosine
from visionzoo.train import run


def tiny_davit(num_classes: int = 10) -> torch.nn.Module:
    return timm.create_model(
        "davit_tiny",
        depths=(1, 1, 1, 1),
        embed_dims=(16, 32, 64, 128),
        num_heads=(1, 2, 4, 8),
        num_classes=num_classes,
    )


def test_warmup_cosine_shape() -> None:
    fn = WarmupCosine(total_steps=110, warmup_steps=10, warmup_ratio=0.1, min_ratio=0.01)
    assert fn(0) == pytest.approx(0.1)
    assert fn(5) == pytest.approx(0.55)
    assert fn(10) == pytest.approx(1.0)
    assert fn(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert fn(110) == pytest.approx(0.01)
    assert fn(500) == pytest.approx(0.01)
    values = [fn(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_optimizer_honours_no_weight_decay_and_frozen_params() -> None:
    model = tiny_davit()
    for p in model.stem.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    assert isinstance(opt, torch.optim.AdamW)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in model.stem.parameters())
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert decays[id(names["head.fc.weight"])] == 0.05
    assert decays[id(names["head.fc.bias"])] == 0.0  # biases and norms are not decayed
    assert decays[id(names["head.norm.weight"])] == 0.0


def test_layer_decay_scales_learning_rates_by_depth() -> None:
    model = tiny_davit()
    opt = build_optimizer(model, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.5})
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) >= 3 and scales[-1] == pytest.approx(1.0) and scales[0] < 0.2


def test_mixup_switches_to_soft_targets() -> None:
    task = ClassificationTask(
        tiny_davit(), num_classes=10, mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, label_smoothing=0.1
    )
    assert task.mixup_fn is not None
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = task.training_step((images, targets), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert ClassificationTask(tiny_davit(), num_classes=10, mixup={"mixup_alpha": 0.0}).mixup_fn is None


def test_top5_is_not_logged_with_fewer_than_five_classes(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer=cpu", "data=fake", "data.num_classes=3", "logger=csv", "debug=fdr"], tmp_path)
    metrics = run(cfg)
    assert "test/acc1" in metrics and "test/acc5" not in metrics


def test_ema_callback_run(tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["trainer=cpu", "data=fake", "logger=csv", "callbacks=ema", "trainer.max_epochs=1", "test=false"],
        tmp_path,
    )
    metrics = run(cfg)
    assert math.isfinite(metrics["val/loss"])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any("EMAWeightAveraging" in k for k in ckpt["callbacks"])


@pytest.mark.parametrize("group", ["model", "data", "trainer", "callbacks", "logger", "debug", "experiment"])
def test_every_config_in_group_composes(group: str, tmp_path: Path) -> None:
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        cfg = compose_cfg([f"{group}={path.stem}"], tmp_path)
        assert cfg.model.name and cfg.data.task
        if group == "trainer" and path.stem in {"default", "cpu", "ddp_cpu"}:
            instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_linear_lr_scaling_rule() -> None:
    from visionzoo.tasks.optim import scaled_lr

    cfg = scaled_lr({"opt": "adamw", "lr_base": 5e-4, "lr_base_size": 512, "weight_decay": 0.05}, 1024)
    assert cfg["lr"] == pytest.approx(1e-3) and "lr_base" not in cfg
    assert scaled_lr({"lr": 3e-4}, None) == {"lr": 3e-4}


def test_schedule_absolute_lrs_and_cooldown(tmp_path: Path) -> None:
    """warmup_lr/min_lr are absolute; the last cooldown epochs hold min_lr."""
    from types import SimpleNamespace

    from visionzoo.tasks.optim import build_scheduler

    trainer = SimpleNamespace(
        estimated_stepping_batches=20,
        num_training_batches=4,
        accumulate_grad_batches=1,
        max_epochs=5,
        max_steps=-1,
    )  # 4 steps per epoch
    task = ClassificationTask(tiny_davit(), num_classes=10)
    opt = torch.optim.SGD(task.parameters(), lr=1e-3)
    sched = build_scheduler(
        opt, trainer, {"warmup_epochs": 1, "warmup_lr": 1e-6, "min_lr": 1e-5, "cooldown_epochs": 2}
    )["scheduler"]
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[12:] == pytest.approx([1e-5] * 8)  # cosine ends after 3 epochs, cooldown holds min


def test_model_spec_passes_datamodule_channels(tmp_path: Path) -> None:
    """Multi-modal inputs (e.g. 4-channel MSD BrainTumour MRI) reach the model's stem."""
    from visionzoo.train import build_model, model_spec

    cfg = compose_cfg(["model=davit_digits"], tmp_path)
    assert "in_chans" not in model_spec(cfg, 10, "classification", 3)["kwargs"]
    assert model_spec(cfg, 10, "classification", 4)["kwargs"]["in_chans"] == 4
    model = build_model(cfg, 10, "classification", 4)
    assert model(torch.randn(1, 4, 32, 32)).shape == (1, 10)
    dense = model_spec(compose_cfg(["model=biformer_digits"], tmp_path), 3, "segmentation", 2)
    assert dense["type"] == "dense" and dense["backbone_kwargs"]["in_chans"] == 2
