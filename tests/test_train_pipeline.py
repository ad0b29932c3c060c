"""train.py end to end: outputs, errors in one sentence, resume, multirun, DDP on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra_helpers import compose_cfg, run_train_cli
from PIL import Image

from visionzoo.train import run

FAST = [
    "trainer=cpu",
    "data=fake",
    "data.image_size=32",
    "logger=csv",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
]


def write_imagenet_layout(
    root: Path, classes=("n01440764", "n01443537", "n01484850"), per_class: int = 3
) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for j in range(per_class):
                pixels = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
                pixels[..., i] = 255  # a class-dependent colour
                Image.fromarray(pixels).save(folder / f"{wnid}_{j}.JPEG")
    return root


def test_fast_dev_run_writes_metrics_and_curves(tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            "trainer=cpu",
            "logger=csv",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
        ],
        tmp_path,
    )
    metrics = run(cfg)
    assert {"val/acc1", "val/acc5", "test/acc1", "test/loss"} <= set(metrics)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc1"] == pytest.approx(metrics["test/acc1"])
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "train/lr", "val/acc1", "val/acc5"} <= set(header)


def _final_weights(cfg) -> dict[str, torch.Tensor]:
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=False)["state_dict"]


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path: Path) -> None:
    common = [
        *FAST,
        "trainer.max_epochs=2",
        "test=false",
        "trainer.deterministic=true",
        "data.num_samples=48",
        "data.batch_size=16",
    ]  # 3 steps per epoch
    straight = compose_cfg(common, tmp_path / "straight")
    run(straight)
    stopped = compose_cfg([*common, "trainer.max_steps=3"], tmp_path / "stopped")
    run(stopped)
    last = Path(stopped.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    resumed = compose_cfg([*common, f"ckpt_path={last}"], tmp_path / "resumed")
    run(resumed)
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs after resume")
    # and the interrupted run really had different weights from the finished one
    c = _final_weights(stopped)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_imagenet_layout_runs_two_steps(tmp_path: Path) -> None:
    root = write_imagenet_layout(tmp_path / "imagenet")
    proc = run_train_cli(
        [
            "model=davit",
            "data=imagenet",
            f"data.root={root}",
            "trainer.max_steps=2",
            "data.batch_size=4",
            "data.num_workers=0",
            "logger=csv",
            "callbacks=none",
            "trainer=cpu",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics_files = list((tmp_path / "logs").rglob("metrics.json"))
    assert len(metrics_files) == 1
    metrics = json.loads(metrics_files[0].read_text())
    assert 0.0 <= metrics["test/acc1"] <= 1.0


def _assert_one_sentence_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_imagenet_without_root_says_what_to_set(tmp_path: Path) -> None:
    proc = run_train_cli(["model=davit", "data=imagenet"], cwd=tmp_path)
    _assert_one_sentence_error(proc, "data.root", "train/", "val/")


def test_imagenet_root_without_train_folder(tmp_path: Path) -> None:
    root = write_imagenet_layout(tmp_path / "imagenet")
    for f in (root / "train").rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted((root / "train").glob("*"), reverse=True):
        d.rmdir()
    (root / "train").rmdir()
    proc = run_train_cli(["model=davit", "data=imagenet", f"data.root={root}"], cwd=tmp_path)
    _assert_one_sentence_error(proc, str(root / "train"))


def test_imagenet_empty_class_folder(tmp_path: Path) -> None:
    root = write_imagenet_layout(tmp_path / "imagenet")
    for f in (root / "val" / "n01443537").iterdir():
        f.unlink()
    proc = run_train_cli(["model=davit", "data=imagenet", f"data.root={root}"], cwd=tmp_path)
    _assert_one_sentence_error(proc, "n01443537")


def test_segmentation_data_with_classifier_fails_at_start(tmp_path: Path) -> None:
    proc = run_train_cli(["model=davit", "data=fake", "data.task=segmentation"], cwd=tmp_path)
    _assert_one_sentence_error(proc, "davit_tiny", "segmentation")


def test_unknown_model_name(tmp_path: Path) -> None:
    proc = run_train_cli(["model.name=not_a_model"], cwd=tmp_path)
    _assert_one_sentence_error(proc, "not_a_model")


def test_missing_resume_checkpoint(tmp_path: Path) -> None:
    proc = run_train_cli([f"ckpt_path={tmp_path / 'nope.ckpt'}"], cwd=tmp_path)
    _assert_one_sentence_error(proc, "nope.ckpt")


@pytest.mark.slow
def test_multirun_over_two_learning_rates(tmp_path: Path) -> None:
    proc = run_train_cli(["-m", "model.optimizer.lr=1e-3,5e-4", "debug=fdr", "logger=csv"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    runs = sorted((tmp_path / "logs").rglob("multiruns/*/[0-9]*/.hydra/config.yaml"))
    assert len(runs) == 2
    assert {OmegaConf.load(r).model.optimizer.lr for r in runs} == {1e-3, 5e-4}
    assert all((r.parent.parent / "metrics.json").is_file() for r in runs)


@pytest.mark.slow
def test_ddp_cpu_two_processes(tmp_path: Path) -> None:
    proc = run_train_cli(
        [
            "trainer=ddp_cpu",
            "data=fake",
            "trainer.max_epochs=1",
            "logger=csv",
            "data.num_samples=64",
            "data.batch_size=8",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert "test/acc1" in metrics


@pytest.mark.slow
def test_default_run_learns_digits(tmp_path: Path) -> None:
    """`python train.py` with no overrides: the embedded default reaches >= 0.90 top-1."""
    proc = run_train_cli(["logger=csv"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert metrics["val/acc1"] >= 0.90
    assert metrics["test/acc1"] >= 0.90


def test_randaugment_top_posterize_level_does_not_crash() -> None:
    """timm's PosterizeIncreasing at magnitude 10 asks Pillow for 0 bits (Pillow >= 12 raises)."""
    from timm.data.auto_augment import AugmentOp

    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = np.asarray(op(img))
    assert out.max() == 0
