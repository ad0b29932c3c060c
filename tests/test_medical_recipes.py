"""QTSeg / HER-Seg recipes: experiment configs run through train.py; schedules and the encoder freeze."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra_helpers import CONF_DIR, compose_cfg, run_train_cli

from visionzoo.callbacks import FreezeSubmodule
from visionzoo.tasks.schedules import ExponentialDecay, PolyDecay, StepDecay

SMALL = [
    "model.kwargs.pretrained=false",
    "trainer=cpu",
    "logger=csv",
    "data.image_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
]


@pytest.mark.parametrize("experiment", ["qtseg_isic2016", "herseg_isic2016"])
def test_recipe_runs_two_steps_on_an_official_layout(experiment: str, tmp_path: Path) -> None:
    from seg_layouts import write_isic2016

    root = write_isic2016(tmp_path / "isic")
    overrides = [f"experiment={experiment}", f"data.root={root}", "trainer.max_steps=2", *SMALL]
    if experiment.startswith("qtseg"):
        overrides.append("model.name=qtseg")  # the COCO encoder tag needs a download
    proc = run_train_cli(overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert 0.0 <= metrics["test/mDice"] <= 1.0


@pytest.mark.parametrize("path", sorted((CONF_DIR / "experiment").glob("*seg_*.yaml")), ids=lambda p: p.stem)
def test_recipe_configs_compose_with_the_paper_settings(path: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([f"experiment={path.stem}"], tmp_path)
    if path.stem.startswith("qtseg"):
        assert cfg.model.loss.name == "dice_ce" and cfg.trainer.max_epochs == 350
        assert cfg.callbacks.freeze_encoder.epochs == 49 and cfg.data.normalize == "minmax"
        if path.stem != "qtseg_fives":
            assert cfg.model.optimizer.opt == "adamw" and cfg.model.scheduler.name == "step"
    else:
        assert cfg.model.loss.dice_weight == 0.8 and cfg.model.loss.focal_weight == 0.2
        assert (
            cfg.model.scheduler.gamma == 0.98
            and cfg.data.image_size == 1024
            and cfg.trainer.max_epochs == 200
        )
    # the protocol: checkpoints chosen on a validation split that is never the test split
    assert cfg.test_ckpt == "best" and cfg.optimized_metric == "val/mDice"
    if path.stem.endswith(("isic2016", "fives")):
        assert (
            cfg.data.val_size == 0.1 and "fold" not in cfg.data
        )  # val held out of the official training set
    else:
        assert cfg.data.fold == 0 and cfg.data.val_size == 0.1  # test fold 0, val held out of the others


def test_epoch_schedules() -> None:
    step = StepDecay(steps_per_epoch=10, step_epochs=50, gamma=0.5, min_ratio=0.01)
    assert [step(s) for s in (0, 499, 500, 1000)] == [1.0, 1.0, 0.5, 0.25]
    assert step(10**6) == 0.01
    exp = ExponentialDecay(steps_per_epoch=10, gamma=0.98)
    assert exp(9) == 1.0 and exp(10) == pytest.approx(0.98) and exp(25) == pytest.approx(0.98**2)
    poly = PolyDecay(total_steps=100, power=0.9)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.5**0.9) and poly(100) == 0.0


def test_freeze_submodule_switches_gradients_by_epoch() -> None:
    from types import SimpleNamespace

    model = torch.nn.Sequential()
    model.add_module("image_encoder", torch.nn.Linear(2, 2))
    model.add_module("head", torch.nn.Linear(2, 2))
    module = SimpleNamespace(model=model)
    callback = FreezeSubmodule("image_encoder", epochs=2)
    for epoch, frozen in ((0, True), (1, True), (2, False)):
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        assert all(p.requires_grad is not frozen for p in model.image_encoder.parameters())
        assert all(p.requires_grad for p in model.head.parameters())


def test_poly_with_warmup_is_mmseg_poly():
    """mmcv's PolyLrUpdaterHook + linear warm-up: lr = base * (1 - i/T)^p * (1 - (1 - i/W)(1 - r)) during warm-up,
    base * (1 - i/T)^p after; min_lr enters as min + (base - min) * (1 - i/T)^p (values from the formula)."""
    poly = PolyDecay(total_steps=160_000, power=1.0, warmup_steps=1500, warmup_ratio=1e-6)
    assert poly(0) == pytest.approx(1e-6)
    assert poly(750) == pytest.approx((1 - 750 / 160_000) * (1 - (1 - 0.5) * (1 - 1e-6)))
    assert poly(1500) == pytest.approx(1 - 1500 / 160_000)
    assert poly(80_000) == pytest.approx(0.5) and poly(160_000) == 0.0
    floored = PolyDecay(total_steps=100, power=0.9, min_ratio=0.1)
    assert floored(50) == pytest.approx(0.1 + 0.9 * 0.5**0.9) and floored(100) == pytest.approx(0.1)
