"""Segmentation task and runner: metrics at the original resolution, volumes, pictures, checkpoints, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra_helpers import CONF_DIR, ROOT, compose_cfg, run_train_cli
from PIL import Image
from seg_helpers import TinySegDataModule
from torch import nn

from visionzoo.errors import ConfigError
from visionzoo.models.dense import DenseSegmenter
from visionzoo.tasks import SegmentationTask
from visionzoo.train import check_model_data_pairing, model_spec, run

TINY = [
    "trainer=cpu",
    "data=fake",
    "data._target_=seg_helpers.TinySegDataModule",
    "data.task=segmentation",
    "data.num_classes=3",
    "data.num_samples=8",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "model.head_kwargs.channels=16",
    "model.aux_head.channels=8",
]
TINY_BIFORMER = [
    "model=biformer_digits",
    "model.kwargs.embed_dims=[16,32,64,128]",
    "model.kwargs.depths=[1,1,1,1]",
    "+model.kwargs.head_dim=16",
    "+model.kwargs.mhsa_heads=2",
    "model.dense_kwargs.n_win=2",
]


def pointwise(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))


class FixedLogits(nn.Module):
    """Returns the same logits for every input (resized to nothing: the test picks the input size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1) + self.dummy


# ---------------------------------------------------------------------------------------------- the task alone
def test_metrics_are_computed_at_the_original_resolution() -> None:
    # network-size logits (4x4): left half class 1, right half class 0
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 1, :, :2] = 5.0
    logits[:, 0, :, 2:] = 5.0
    task = SegmentationTask(FixedLogits(logits), num_classes=2, ignore_index=255).eval()
    orig = torch.zeros(8, 12, dtype=torch.long)
    orig[:, :6] = 1
    orig[0, 0] = 255
    batch = {
        "image": torch.zeros(1, 3, 4, 4),
        "mask": torch.zeros(1, 4, 4, dtype=torch.long),  # network mask: wrong
        "orig_mask": [orig],
        "name": ["x"],
    }
    with torch.no_grad():
        out = task.validation_step(batch, 0)
    assert out["preds"].shape == (1, 4, 4)
    cm = task.val_cm.compute()
    assert cm.sum() == 8 * 12 - 1  # every original pixel but the ignored one
    res = task.val_cm.compute_metrics()
    assert res["mIoU"].item() == 1.0 and res["aAcc"].item() == 1.0


def test_training_step_adds_the_weighted_auxiliary_loss() -> None:
    torch.manual_seed(0)
    model = DenseSegmenter(
        "davit_tiny",
        "upernet",
        3,
        backbone_kwargs=dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)),
        head_kwargs={"channels": 8},
        aux_head={"channels": 8, "dropout": 0.0},
    )
    model.decode_head.classifier.dropout = nn.Identity()
    task = SegmentationTask(model, num_classes=3, aux_weight=0.4, loss={"name": "dice_ce"})
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    loss = task.training_step(batch, 0)
    torch.manual_seed(0)  # same dropout draws are not needed: dropout is off
    main, aux = model(batch["image"], return_aux=True)
    want = task.criterion(main, batch["mask"]) + 0.4 * task.criterion(aux, batch["mask"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert model.aux_head.classifier.conv_seg.weight.grad is not None


def test_volumes_log_vdice_and_hd95(tmp_path: Path) -> None:
    dm = TinySegDataModule(num_classes=3, num_samples=8, volumes=True)
    task = SegmentationTask(pointwise(), num_classes=3, metrics=["hd95", "dice"], class_names=dm.class_names)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    res = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert {
        "val/vDice",
        "val/hd95",
        "val/mIoU",
        "val/mDice",
        "val/aAcc",
        "val/IoU/class_1",
        "val/Dice/background",
    } <= set(res)
    assert 0.0 <= res["val/vDice"] <= 1.0 and res["val/hd95"] >= 0.0
    with pytest.raises(ConfigError, match="nsd"):
        SegmentationTask(pointwise(), num_classes=3, metrics=["nsd"])


def test_task_rebuilds_its_model_from_the_checkpoint(tmp_path: Path) -> None:
    spec = {
        "type": "dense",
        "backbone": "davit_tiny",
        "head": "fpn",
        "num_classes": 3,
        "aux_head": None,
        "backbone_kwargs": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)),
        "head_kwargs": {"channels": 8, "head_channels": 8},
    }
    task = SegmentationTask(
        None,
        num_classes=3,
        model_spec=spec,
        ignore_index=255,
        inference={"mode": "slide", "roi_size": [16, 16]},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        max_epochs=1,
        limit_train_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=TinySegDataModule(num_classes=3, num_samples=4, batch_size=2))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = SegmentationTask.load_from_checkpoint(path, map_location="cpu").eval()
    assert loaded.inferer.mode == "slide" and loaded.ignore_index == 255
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task.eval()(x))
        out = loaded.predict_step({"image": x, "name": ["a"], "orig_size": [(40, 50)]}, 0)
    assert out[0]["name"] == "a" and out[0]["mask"].shape == (40, 50)


# ---------------------------------------------------------------------------------------------- the runner
def test_runner_trains_biformer_upernet_and_writes_pictures_and_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_cfg([*TINY, *TINY_BIFORMER, "+data.ignore_index=255", "logger=many"], out)
    assert cfg.optimized_metric == "val/acc1"  # the classification default; the runner picks val/mIoU
    metrics = run(cfg)
    assert cfg.optimized_metric == "val/mIoU"
    assert {
        "val/mIoU",
        "val/mDice",
        "val/aAcc",
        "val/loss",
        "val/IoU/class_1",
        "test/mIoU",
        "test/IoU/background",
        "train/loss",
    } <= set(metrics)
    assert json.loads((out / "metrics.json").read_text())["test/mIoU"] == pytest.approx(metrics["test/mIoU"])
    assert sorted(p.name for p in (out / "val_overlays").glob("*.png")) == ["epoch_000.png"]
    grid = np.asarray(Image.open(out / "val_overlays" / "epoch_000.png"))
    assert grid.shape[0] >= 4 * 128 and grid.shape[1] >= 3 * 128  # 4 rows of image | truth | prediction
    best = list((out / "checkpoints").glob("epoch_*.ckpt"))
    assert best and (out / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(best[0], map_location="cpu", weights_only=False)
    monitors = [v.get("monitor") for k, v in ckpt["callbacks"].items() if "ModelCheckpoint" in k]
    assert "val/mIoU" in monitors
    hp = ckpt["hyper_parameters"]
    assert hp["model_spec"]["type"] == "dense" and hp["model_spec"]["backbone_kwargs"]["out_norm"] is True
    assert hp["ignore_index"] == 255 and hp["class_names"][1] == "class 1"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (out / "tensorboard").glob("events.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert "val/overlays" in tags

    # predict on a folder of images of other sizes, with the checkpoint alone
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(45, 61), (32, 32)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.jpg")
    (images / "notes.txt").write_text("not an image")
    pred_dir = tmp_path / "pred"
    from visionzoo.predict import main  # what predict.py runs (its CLI is exercised in the next test)

    assert (
        main(
            [
                f"ckpt_path={best[0]}",
                f"images={images}",
                f"out={pred_dir}",
                "device=cpu",
                "mode=slide",
                "--roi_size",
                "16,16",
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(pred_dir / "masks" / "img0.png"))
    assert mask.shape == (45, 61) and mask.dtype == np.uint8 and mask.max() < 3
    assert Image.open(pred_dir / "overlays" / "img0.png").size == (61, 45)
    assert (pred_dir / "masks" / "img1.png").is_file()


def test_predict_cli_errors_in_one_sentence(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "predict.py"),
            f"ckpt_path={tmp_path / 'none.ckpt'}",
            f"images={tmp_path}",
            f"out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "none.ckpt" in proc.stderr
    from visionzoo.predict import main

    assert main(["ckpt_path=x", "images=y"]) == 2  # out= missing
    assert main(["ckpt_path=x", "images=y", "out=z", "colour=red"]) == 2


def test_davit_with_fpn_runs_a_step(tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            *TINY,
            "model=davit_digits",
            "model.kwargs.embed_dims=[16,32,64,128]",
            "model.head=fpn",
            "model.head_kwargs.head_channels=8",
            "model.aux_head=null",
            "logger=csv",
            "test=false",
            "+trainer.limit_train_batches=1",
            "trainer.num_sanity_val_steps=0",
            "+data.optimized_metric=val/mDice",
            "+data.loss={name: dice_ce, ce_weight: 0.5}",
        ],
        tmp_path,
    )
    assert cfg.optimized_metric == "val/mDice"
    metrics = run(cfg)
    assert "val/mDice" in metrics and cfg.optimized_metric == "val/mDice"
    spec = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "hyper_parameters"
    ]
    assert spec["model_spec"]["head"] == "fpn" and spec["model_spec"]["aux_head"] is None
    assert spec["loss"] == {"name": "dice_ce", "ce_weight": 0.5}


def test_dense_kwargs_apply_to_segmentation_only(tmp_path: Path) -> None:
    cfg = compose_cfg(["model=biformer"], tmp_path)
    assert model_spec(cfg, 10)["kwargs"].get("n_win") is None
    dense = model_spec(cfg, 150, "segmentation")
    assert (
        dense["backbone_kwargs"] | {"n_win": 8, "auto_pad": True, "out_norm": True}
        == dense["backbone_kwargs"]
    )
    assert dense["head"] == "upernet" and dense["aux_head"] == {"in_index": 2, "channels": 256}
    assert "num_classes" not in dense["backbone_kwargs"] and "pretrained" not in dense["backbone_kwargs"]


def test_head_null_and_unknown_heads_fail_at_start(tmp_path: Path) -> None:
    cfg = compose_cfg([*TINY, "model=davit", "model.head=null"], tmp_path)
    with pytest.raises(ConfigError, match="classifier with no segmentation head"):
        check_model_data_pairing(cfg)
    cfg = compose_cfg([*TINY, "model=davit", "model.head=deeplab"], tmp_path)
    with pytest.raises(ConfigError, match="deeplab"):
        check_model_data_pairing(cfg)
    proc = run_train_cli(
        ["model=davit", "model.head=null", "data=fake", "data.task=segmentation"], cwd=tmp_path
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "no segmentation head" in errors[0]


def test_every_model_config_names_a_known_head() -> None:
    from omegaconf import OmegaConf

    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        head = OmegaConf.load(path).get("head")
        assert head in (None, "upernet", "fpn"), (path.name, head)


# ---------------------------------------------------------------------------------------------- train.py end to end
ADE_SMALL = [
    "trainer=cpu",
    "logger=csv",
    "trainer.max_steps=1",
    "data.image_size=64",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.val_size=2",  # of the 4 tiny training images (the recipe holds out 500)
    "data.train_transform=[{name:HorizontalFlip,p:0.5}]",
    "+model.kwargs.depths=[1,1,1,1]",
    "model.head_kwargs.channels=32",
    "model.aux_head.channels=16",
]


def _check_ade_run(out: Path, metrics: dict) -> None:
    assert {"test/mIoU", "test/aAcc", "test/IoU/wall", "train/loss"} <= set(metrics)
    ckpt = torch.load(next(out.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    spec = ckpt["hyper_parameters"]["model_spec"]
    assert spec["type"] == "dense" and spec["head"] == "upernet" and spec["num_classes"] == 150
    assert ckpt["hyper_parameters"]["ignore_index"] == 255
    assert any(k.startswith("model.aux_head.") for k in ckpt["state_dict"])


def test_train_py_biformer_on_an_ade20k_layout_builds_upernet_and_steps(tmp_path: Path) -> None:
    from seg_layouts import write_ade20k

    root = write_ade20k(tmp_path / "ade", n_train=4, n_val=2)
    proc = run_train_cli(
        [
            "model=biformer",
            "+model.kwargs.embed_dims=[32,64,128,256]",
            "data=ade20k",
            f"data.root={root}",
            *ADE_SMALL,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_ade_run(tmp_path / "logs", json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text()))


def test_davit_on_an_ade20k_layout_builds_upernet_and_steps(tmp_path: Path) -> None:
    from seg_layouts import write_ade20k

    root = write_ade20k(tmp_path / "ade", n_train=4, n_val=2)
    cfg = compose_cfg(
        [
            "model=davit",
            "+model.kwargs.embed_dims=[16,32,64,128]",
            "+model.kwargs.num_heads=[1,2,4,8]",
            "data=ade20k",
            f"data.root={root}",
            *ADE_SMALL,
        ],
        tmp_path / "run",
    )
    _check_ade_run(tmp_path / "run", run(cfg))


@pytest.mark.slow
def test_small_model_learns_shapes(tmp_path: Path) -> None:
    """A small BiFormer + FPN on the built-in shapes set reaches mean Dice >= 0.90 on held-out images."""
    cfg = compose_cfg(
        [
            "trainer=cpu",
            "data=shapes",
            "data.num_samples=256",
            "data.num_val_samples=64",
            "data.batch_size=16",
            *TINY_BIFORMER,
            "model.kwargs.embed_dims=[32,64,128,256]",
            "model.kwargs.head_dim=32",
            "model.head=fpn",
            "model.head_kwargs.channels=64",
            "model.head_kwargs.head_channels=32",
            "model.aux_head=null",
            "model.optimizer.lr=2e-3",
            "model.scheduler.warmup_epochs=1",
            "+data.loss={name: dice_ce}",
            "trainer.max_epochs=8",
            "logger=csv",
        ],
        tmp_path,
    )
    metrics = run(cfg)
    print({k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    assert metrics["test/mDice"] >= 0.90
    assert metrics["test/fgDice"] >= 0.85  # foreground classes only (background excluded)


# every segmentation data module, in its official layout, through the runner (one train + val/test step)
TINY_SEG = [
    "model=biformer_digits",
    "model.head=fpn",
    "model.head_kwargs.channels=16",
    "trainer=cpu",
    "logger=csv",
    "trainer.max_steps=1",
    "data.image_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "callbacks=none",
]


@pytest.mark.parametrize(
    "dataset",
    [
        "seg_folder",
        "isic2016",
        "kvasir_seg",
        "bkai_polyp",
        "busi",
        "dsb2018",
        "fives",
        "drive",
        "msd",
        "shapes",
    ],
)
def test_every_segmentation_datamodule_trains_a_step_through_the_runner(dataset: str, tmp_path: Path) -> None:
    from seg_layouts import WRITERS

    overrides = [f"data={dataset}", *TINY_SEG]
    if dataset != "shapes":
        if dataset == "msd":
            pytest.importorskip("nibabel")
        root = WRITERS[dataset](tmp_path / dataset)
        overrides.append(f"data.root={root}")
        if dataset == "seg_folder":  # the writer draws 3 classes
            overrides.append("data.classes=[background,a,b]")
    else:
        overrides += ["data.num_samples=8", "data.num_val_samples=4"]
    cfg = compose_cfg(overrides, tmp_path / "run")
    metrics = run(cfg)
    assert metrics["train/loss"] > 0 and any(k.startswith("test/") for k in metrics)
    assert 0.0 <= metrics.get("test/mDice", metrics.get("test/mIoU")) <= 1.0


def test_keep_ratio_eval_resize_is_mmsegs(tmp_path: Path) -> None:
    """eval_resize=shortest: one scale min(s / short, 4 s / long), aspect kept (mmseg's test Resize)."""
    import numpy as np
    from seg_layouts import write_ade20k

    from visionzoo.datamodules import ADE20KDataModule
    from visionzoo.datamodules.segmentation.transforms import KeepRatioResize
    from visionzoo.errors import ConfigError

    resize = KeepRatioResize(512, 2048)
    assert resize(np.zeros((512, 683, 3), np.uint8))["image"].shape == (512, 683, 3)  # already fits
    out = resize(np.zeros((300, 1500, 3), np.uint8), np.zeros((300, 1500), np.uint8))
    assert out["image"].shape == (410, 2048, 3) and out["mask"].shape == (410, 2048)  # the long side binds
    assert resize(np.zeros((256, 200, 3), np.uint8))["image"].shape == (655, 512, 3)  # 2.56x, rounded

    root = write_ade20k(tmp_path / "ade", n_train=2, n_val=2, size=(40, 96))
    dm = ADE20KDataModule(
        root=root, image_size=64, val_batch_size=1, eval_resize="shortest", num_workers=0, val_size=1
    )
    dm.setup("validate")
    item = dm.val_dataset[0]
    assert item["image"].shape == (3, 64, 154) and item["mask"].shape == (64, 154)
    assert item["orig_mask"].shape == (40, 96)
    with pytest.raises(ConfigError, match="set data.val_batch_size=1"):
        ADE20KDataModule(root=root, image_size=64, val_batch_size=2, eval_resize="shortest")
    with pytest.raises(ConfigError, match="data.eval_resize must be one of stretch, shortest"):
        ADE20KDataModule(root=root, image_size=64, eval_resize="crop")


@pytest.mark.parametrize("variant", ["small", "base"])
def test_biformer_upernet_ade20k_recipe_steps_on_non_square_images(tmp_path: Path, variant: str) -> None:
    """The official UPerNet recipe composes as stated and runs two iterations + a keep-ratio evaluation."""
    from seg_layouts import write_ade20k

    root = write_ade20k(tmp_path / "ade", n_train=4, n_val=2, size=(40, 96))
    experiment = f"experiment=biformer_{variant}_upernet_ade20k"
    cfg = compose_cfg([experiment, f"data.root={root}"], tmp_path / "full")
    assert cfg.model.name == f"biformer_{variant}" and cfg.model.kwargs.pretrained is True
    assert cfg.model.kwargs.drop_path_rate == {"small": 0.3, "base": 0.4}[variant]
    assert cfg.model.optimizer.lr == 6e-5 and cfg.model.optimizer.weight_decay == 0.01
    assert cfg.model.scheduler.name == "poly" and cfg.model.scheduler.warmup_steps == 1500
    assert cfg.trainer.max_steps == 160_000 and cfg.trainer.val_check_interval == 16_000
    assert cfg.model.dense_kwargs.n_win == 8 and cfg.model.dense_kwargs.auto_pad is True
    assert cfg.data.eval_resize == "shortest" and cfg.data.val_batch_size == 1

    small = [o for o in ADE_SMALL if not o.startswith(("trainer.max_steps", "data.val_batch_size"))]
    cfg = compose_cfg(
        [
            experiment,
            f"data.root={root}",
            *small,
            "model.kwargs.pretrained=false",
            "+model.kwargs.embed_dims=[32,64,128,256]",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "model.scheduler.warmup_steps=1",
        ],
        tmp_path / "run",
    )
    _check_ade_run(tmp_path / "run", run(cfg))
