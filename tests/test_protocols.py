"""Issue 14, numbers a researcher can publish: per dataset, val and test are disjoint and sized as documented, the
test checkpoint follows the config, corrupt evaluation images are never counted twice, metrics.json says where
every number comes from."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.hydra_helpers import compose_cfg
from tests.test_datamodules_classification import MODEL_CFG, assert_one_sentence, make_folder
from tests.test_reid_data import TRAIN_PIDS, write_market
from tests.test_reid_folder import TRAIN_IDS, write_reid_folder
from tests.test_reid_task import _tiny_overrides
from visionzoo.datamodules import (
    DigitsDataModule,
    FakeDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    Market1501DataModule,
    ReIDFolderDataModule,
    UnreadableImageWarning,
)
from visionzoo.errors import ConfigError, DatasetError
from visionzoo.train import _check_test_protocol, run

FAST = ["trainer=cpu", "logger=csv", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"]


def _corrupt(path: Path) -> None:
    path.write_bytes(b"not an image at all" * 8)


# ----------------------------------------------------------------------------- the default run
def test_default_run_val_and_test_are_disjoint_and_metrics_json_says_so(tmp_path: Path) -> None:
    cfg = compose_cfg([*FAST, "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"], tmp_path)
    assert cfg.test_ckpt == "best" and cfg.optimized_metric == "val/acc1"
    metrics = run(cfg)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    splits, sources = doc["_splits"], doc["_metrics_from"]
    assert {k: splits[k]["size"] for k in ("train", "val", "test")} == {
        "train": 1257,
        "val": 180,
        "test": 360,
    }
    assert len({splits[k]["sha256"] for k in ("train", "val", "test")}) == 3
    assert sources["val/"]["split"] == "val" and sources["test/"]["split"] == "test"
    assert sources["test/"]["checkpoint"].startswith("best") and sources["test_last/"][
        "checkpoint"
    ].startswith("last")
    assert sources["test/"]["evaluated"] == 360 and sources["val/"]["evaluated"] == 64  # limit_val_batches=1
    assert doc["test/acc1"] == pytest.approx(metrics["test/acc1"]) and "test_last/acc1" in doc
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record == doc["_run"]
    commit = record["git"]["commit"]
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert set(record["packages"]) >= {"torch", "torchvision", "timm", "lightning", "visionzoo"}
    assert record["seeds"] == {"seed": 42, "data.seed": 0, "shuffle_seed": 42}


def test_test_ckpt_best_is_refused_when_val_is_test() -> None:
    same = {
        "val": {"sha256": "a", "size": 5, "source": "ROOT/val"},
        "test": {"sha256": "a", "size": 5, "source": "x"},
    }
    cfg = OmegaConf.create({"train": True, "test": True, "test_ckpt": "best"})
    with pytest.raises(ConfigError, match="test_ckpt=best would pick the checkpoint") as err:
        _check_test_protocol(cfg, same)
    assert_one_sentence(str(err.value))
    assert _check_test_protocol(OmegaConf.create({"test_ckpt": "last"}), same) == "last"
    with pytest.raises(ConfigError, match="test_ckpt 'bestest' is unknown"):
        _check_test_protocol(OmegaConf.create({"test_ckpt": "bestest"}), same)


# ----------------------------------------------------------------------------- built-in data
def test_digits_three_disjoint_stratified_parts() -> None:
    dm = DigitsDataModule(num_workers=0)
    info = dm.split_info()
    parts = [set(dm.train_indices), set(dm.val_indices), set(dm.test_indices)]
    assert [len(p) for p in parts] == [1257, 180, 360] and len(set.union(*parts)) == 1797
    assert [info[k]["size"] for k in ("train", "val", "test")] == [1257, 180, 360]
    assert DigitsDataModule(seed=1).split_info()["test"]["sha256"] != info["test"]["sha256"]


def test_fake_val_and_test_are_separate_draws() -> None:
    dm = FakeDataModule(num_classes=4, num_samples=32, num_val_samples=12, num_test_samples=20, image_size=8)
    dm.setup("fit")
    dm.setup("test")
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sizes == [32, 12, 20]
    xv, xt = dm.val_dataset.tensors[0], dm.test_dataset.tensors[0]
    assert not any(bool((xv[i] == xt[j]).all()) for i in range(len(xv)) for j in range(len(xt)))
    info = dm.split_info()
    assert [info[k]["size"] for k in ("train", "val", "test")] == sizes
    assert len({info[k]["sha256"] for k in info}) == 3


# ----------------------------------------------------------------------------- class folders
def _paths(info_samples) -> set[str]:
    return {p for p, _ in info_samples}


@pytest.mark.parametrize(
    ("splits", "kwargs", "expected"),
    [
        # neither val nor test folder: both held out of train (10 per class: 1 val + 2 test + 7 train)
        (("train",), {"val_dir": None, "val_fraction": 0.1, "test_fraction": 0.2}, (21, 3, 6)),
        # only a val folder: it is the test split, val is held out of train
        (("train", "val"), {"val_fraction": 0.2}, (24, 6, 30)),
        # only a test folder: val is held out of train
        (("train", "test"), {"val_dir": None, "test_dir": "test", "val_fraction": 0.3}, (21, 9, 30)),
        # both folders: taken as they are
        (("train", "val", "test"), {"test_dir": "test"}, (30, 30, 30)),
    ],
)
def test_image_folder_splits_are_disjoint_and_sized(tmp_path: Path, splits, kwargs, expected) -> None:
    root = make_folder(tmp_path / "d", splits=splits, per_class=10)
    dm = ImageFolderDataModule(root=root, num_workers=0, **kwargs)
    samples = dm.split_samples()
    assert tuple(len(samples[k]) for k in ("train", "val", "test")) == expected
    train, val, test = (_paths(samples[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    for split in ("val", "test"):  # stratified: every class in every split
        assert set(Counter(t for _, t in samples[split])) == {0, 1, 2}
    info = dm.split_info()
    assert tuple(info[k]["size"] for k in ("train", "val", "test")) == expected
    assert len({info[k]["sha256"] for k in info}) == 3
    again = ImageFolderDataModule(root=root, num_workers=0, **kwargs).split_info()
    assert again == info  # seeded: the same files every time


def test_imagenet_reports_the_final_checkpoint_and_takes_a_minival(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "in", splits=("train", "val"), per_class=10)
    plain = ImageNetDataModule(root=root, num_workers=0)
    info = plain.split_info()
    assert info["val"]["sha256"] == info["test"]["sha256"] and info["test"]["source"] == "ROOT/val"
    cfg = compose_cfg(["data=imagenet", f"data.root={root}"], tmp_path / "out")
    assert cfg.test_ckpt == "last"  # the paper convention: final checkpoint on the official val set
    with pytest.raises(ConfigError, match="test_ckpt=best"):
        _check_test_protocol(OmegaConf.merge(cfg, {"test_ckpt": "best"}), info)
    minival = ImageNetDataModule(root=root, num_workers=0, val_fraction=0.1).split_samples()
    assert len(minival["val"]) == 3 and len(minival["train"]) == 27 and len(minival["test"]) == 30
    assert not _paths(minival["val"]) & (_paths(minival["train"]) | _paths(minival["test"]))


def test_corrupt_validation_image_is_never_counted_twice(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", splits=("train", "val", "test"), per_class=3)
    bad = root / "val" / "n02" / "img_1.JPEG"
    _corrupt(bad)
    dm = ImageFolderDataModule(root=root, test_dir="test", batch_size=4, num_workers=0)
    with pytest.raises(DatasetError, match=re.escape(str(bad))) as err:
        dm.setup("fit")  # at set-up, before any evaluation
    assert_one_sentence(str(err.value))
    dm = ImageFolderDataModule(
        root=root, test_dir="test", batch_size=4, num_workers=0, eval_corrupt="exclude"
    )
    dm.set_data_config(MODEL_CFG)
    with pytest.warns(UnreadableImageWarning, match="img_1.JPEG"):
        dm.setup("fit")
    assert dm.split_info()["val"] == {**dm.split_info()["val"], "size": 8, "excluded": 1}
    seen = [dm.val_dataset.samples[i][0] for i in range(len(dm.val_dataset))]
    assert len(seen) == len(set(seen)) == 8 and str(bad) not in seen
    labels = [int(t) for _, y in dm.val_dataloader() for t in y]
    assert Counter(labels) == {0: 3, 1: 2, 2: 3}  # every readable image once, the bad one not at all


def test_corrupt_validation_image_excluded_count_reaches_metrics_json(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", splits=("train", "val", "test"), per_class=3)
    _corrupt(root / "val" / "n01" / "img_0.JPEG")
    overrides = [*FAST, "data=image_folder", f"data.root={root}", "data.test_dir=test", "data.num_workers=0"]
    overrides += ["data.batch_size=4", "data.image_size=32", "data.eval_corrupt=exclude"]
    run(compose_cfg(overrides, tmp_path / "out"))
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["_splits"]["val"]["excluded"] == 1 and doc["_splits"]["val"]["size"] == 8
    assert doc["_metrics_from"]["val/"]["evaluated"] == 8 and doc["_metrics_from"]["test/"]["evaluated"] == 9


# ----------------------------------------------------------------------------- Re-ID
def _reid_val_checks(dm, n_ids: int) -> None:
    splits = dm.split_records()
    val_pids = set(dm.val_pids)
    assert len(val_pids) == 1 and len(dm.train_pids) == n_ids - 1 and dm.num_classes == n_ids - 1
    assert not val_pids & set(dm.train_pids)  # identity-disjoint
    train_paths = {r[0] for r in splits["train"]}
    val_paths = {r[0] for r in splits["val"]}
    test_paths = {r[0] for r in splits["test"]}
    assert not (train_paths & val_paths or train_paths & test_paths or val_paths & test_paths)
    assert {r[1] for r in splits["val"]} == val_pids
    queries = [(r[1], r[2]) for r in splits["val"] if r[3]]
    assert len(queries) == len(set(queries))  # at most one query per identity per camera
    info = dm.split_info()
    assert info["val"]["size"] == len(splits["val"]) and len({info[k]["sha256"] for k in info}) == 3


def test_market_validation_is_an_identity_disjoint_holdout(tmp_path: Path) -> None:
    write_market(tmp_path)
    dm = Market1501DataModule(root=tmp_path, batch_size=4, num_instances=2, num_workers=0)
    _reid_val_checks(dm, len(TRAIN_PIDS))
    splits = dm.split_records()
    # the held-out id: 2 cameras x 2 images -> one query per camera, one gallery image per camera
    assert [r[3] for r in splits["val"]] == [True, True, False, False]
    assert len(splits["test"]) == 6 and len(splits["train"]) == 16  # query 2 + gallery 4; 4 ids x 4 images
    assert dm.val_pids == Market1501DataModule(root=tmp_path).val_pids  # seeded


@pytest.mark.parametrize("cameras", [True, False])
def test_reid_folder_validation_is_an_identity_disjoint_holdout(tmp_path: Path, cameras: bool) -> None:
    root = write_reid_folder(tmp_path / "reid", cameras=cameras)
    dm = ReIDFolderDataModule(root=root, batch_size=4, num_instances=2, num_workers=0)
    _reid_val_checks(dm, len(TRAIN_IDS))
    val = dm.split_records()["val"]
    assert [r[3] for r in val] == [
        True,
        False,
    ]  # 2 images: one query, one gallery (kept so the query can match)
    if not cameras:  # cross-set rule: query camera 0, gallery camera 1
        assert [r[2] for r in val] == [0, 1]


def test_reid_corrupt_images(tmp_path: Path) -> None:
    base = write_market(tmp_path)
    bad = base / "bounding_box_test" / "0003_c4s2_000401_02.jpg"
    _corrupt(bad)
    with pytest.raises(DatasetError, match=re.escape(str(bad))) as err:
        Market1501DataModule(root=tmp_path, num_workers=0).setup("fit")
    assert_one_sentence(str(err.value))
    dm = Market1501DataModule(
        root=tmp_path, batch_size=4, num_instances=2, num_workers=0, eval_corrupt="exclude"
    )
    with pytest.warns(UnreadableImageWarning):
        dm.setup("fit")
    assert dm.split_info()["test"]["excluded"] == 1 and len(dm.test_dataset) == 5
    # a corrupt training image: replaced by another image of the same identity, with a warning naming it
    train = dm.train_dataset
    first = train.records[0]
    _corrupt(Path(first[0]))
    with pytest.warns(UnreadableImageWarning, match=re.escape(Path(first[0]).name)):
        item = train[0]
    assert item["pid"] == first[1]
    Image.open(train.records[1][0]).verify()  # the stand-in really was a different, readable file


def test_market_run_reports_the_final_checkpoint_and_the_selected_one(tmp_path: Path) -> None:
    write_market(tmp_path / "data")
    cfg = compose_cfg(
        [*_tiny_overrides(tmp_path / "data"), "trainer.num_sanity_val_steps=0"], tmp_path / "out"
    )
    assert cfg.test_ckpt == "last" and cfg.optimized_metric == "val/mAP"
    metrics = run(cfg)
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["_metrics_from"]["test/"]["checkpoint"].startswith("last")
    assert doc["_metrics_from"]["test_best/"]["checkpoint"].startswith("best by val/mAP")
    assert {"test/mAP", "test_best/mAP", "val/mAP"} <= set(metrics)
    assert doc["_splits"]["val"]["sha256"] != doc["_splits"]["test"]["sha256"]
    assert doc["_metrics_from"]["test/"]["evaluated"] == doc["_splits"]["test"]["size"] == 6


def test_bad_protocol_settings_are_one_sentence(tmp_path: Path) -> None:
    makers = [
        lambda: ImageFolderDataModule(root=tmp_path, val_fraction=1.5),
        lambda: ImageFolderDataModule(root=tmp_path, eval_corrupt="skip"),
        lambda: Market1501DataModule(val_id_fraction=-0.1),
        lambda: DigitsDataModule(val_fraction=0.5, test_fraction=0.5),
    ]
    for make in makers:
        with pytest.raises(ConfigError) as err:
            make()
        assert_one_sentence(str(err.value))
    root = make_folder(tmp_path / "d", splits=("train",), per_class=2)
    with pytest.raises(ConfigError, match="val_fraction is 0"):
        ImageFolderDataModule(root=root, val_dir=None, val_fraction=0).check()
    with pytest.raises(DatasetError, match="leaves none to train on") as err:
        ImageFolderDataModule(root=root, val_dir=None).split_samples()  # 2 images: 1 val + 1 test + 0 train
    assert_one_sentence(str(err.value))
    write_market(tmp_path / "m")
    with pytest.raises(DatasetError, match="leaves none to train on"):
        Market1501DataModule(root=tmp_path / "m", val_id_fraction=0.95).check()
