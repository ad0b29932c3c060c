"""Segmentation split protocols: train / val / test disjoint and sized as each data config documents, the val split
never the test split, split_info for provenance, and unreadable files never counted twice in evaluation."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from seg_layouts import (
    write_ade20k,
    write_bkai_polyp,
    write_busi,
    write_drive,
    write_dsb2018,
    write_fives,
    write_isic2016,
    write_kvasir_seg,
    write_msd,
    write_seg_folder,
)

from visionzoo.datamodules import (
    ADE20KDataModule,
    BKAIPolypDataModule,
    BUSIDataModule,
    DRIVEDataModule,
    DSB2018DataModule,
    FIVESDataModule,
    ISIC2016DataModule,
    KvasirSEGDataModule,
    MSDDataModule,
    SegFolderDataModule,
    UnreadableImageWarning,
)
from visionzoo.datamodules.segmentation.splits import ValHoldout, holdout_indices, kfold_indices
from visionzoo.errors import ConfigError, DatasetError

NET = 32
KW = {"image_size": NET, "batch_size": 2, "num_workers": 0}


def one_sentence(msg: str) -> None:
    assert "\n" not in msg and msg.endswith("."), msg
    assert not re.search(r"\.\s+[A-Z]", msg), f"more than one sentence: {msg}"


def names(samples) -> list[str]:
    return [s.name for s in samples]


def assert_disjoint(dm, sizes: tuple[int, int, int] | None = None, by_name: bool = True) -> None:
    """train / val / test are pairwise disjoint (by file, and by name where names are unique across folders) and
    hold ``sizes`` samples."""
    splits = dm.splits
    if sizes is not None:
        assert tuple(len(splits[k]) for k in ("train", "val", "test")) == sizes
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not by_name or not set(names(splits[a])) & set(names(splits[b])), (a, b)
        assert not {s.image for s in splits[a]} & {s.image for s in splits[b]}, (a, b)
    for split in splits.values():
        assert len(set(names(split))) == len(split) > 0


# ----------------------------------------------------------------------------------------- helpers
def test_holdout_is_seeded_exact_and_stratified() -> None:
    groups = ["a"] * 30 + ["b"] * 10
    tr, va = holdout_indices(range(40), ValHoldout(0.1, 0), "x", groups)
    assert len(va) == 4 and sum(groups[i] == "a" for i in va) == 3 and not set(tr) & set(va)
    assert holdout_indices(range(40), ValHoldout(0.1, 0), "x", groups) == (tr, va)
    assert holdout_indices(range(40), ValHoldout(0.1, 1), "x", groups)[1] != va
    assert len(holdout_indices(range(40), ValHoldout(7, 0), "x")[1]) == 7
    assert len(holdout_indices(range(3), ValHoldout(0.1, 0), "x")[1]) == 1  # at least one
    with pytest.raises(DatasetError) as err:
        holdout_indices(range(4), ValHoldout(4, 0), "x")
    one_sentence(str(err.value))
    for bad in (0, 0.0, 1.0, -2, True, "0.1"):
        with pytest.raises(ConfigError):
            ValHoldout.parse(bad, 0)


def test_every_sample_is_tested_once_over_the_folds() -> None:
    for seed in (0, None):
        tested = [i for k in range(5) for i in kfold_indices(25, 5, k, seed)[1]]
        assert sorted(tested) == list(range(25))


# ----------------------------------------------------------------------------------------- official train/test
def test_qtseg_isic2016_validates_on_training_and_tests_on_the_official_test_set(tmp_path: Path) -> None:
    """``model=qtseg data=isic2016`` on the official layout: val = a held-out part of Training, test = Test."""
    from hydra_helpers import compose_cfg

    from visionzoo.train import build_datamodule

    root = write_isic2016(tmp_path / "isic", n_train=20, n_test=5)
    cfg = compose_cfg(["model=qtseg", "data=isic2016", f"data.root={root}", "data.num_workers=0"], tmp_path)
    assert cfg.test_ckpt == "best" and cfg.optimized_metric == "val/mDice"
    dm = build_datamodule(cfg)
    assert_disjoint(dm, (18, 2, 5))
    training = root / "ISBI2016_ISIC_Part1_Training_Data"
    assert all(Path(s.image).parent == training for s in dm.splits["train"] + dm.splits["val"])
    test_dir = root / "ISBI2016_ISIC_Part1_Test_Data"
    assert sorted(s.image for s in dm.splits["test"]) == sorted(str(p) for p in test_dir.glob("*.jpg"))
    info = dm.split_info()
    assert [info[k]["size"] for k in ("train", "val", "test")] == [18, 2, 5]
    assert "Test_Data" in info["test"]["source"] and "hold-out" in info["val"]["source"]
    assert len({info[k]["sha256"] for k in info}) == 3 and info["test"]["excluded"] == 0
    assert dm.split_info() == info  # deterministic
    other = ISIC2016DataModule(root=root, val_seed=1, **KW)
    assert other.split_info()["val"]["sha256"] != info["val"]["sha256"]


def test_fives_holdout_is_stratified_by_category(tmp_path: Path) -> None:
    dm = FIVESDataModule(root=write_fives(tmp_path, n_train=40, n_test=4), **KW)
    assert_disjoint(dm, (36, 4, 4))
    assert sorted(n.rsplit("_", 1)[1] for n in names(dm.splits["val"])) == ["A", "D", "G", "N"]


def test_drive_holds_out_four_training_images(tmp_path: Path) -> None:
    dm = DRIVEDataModule(root=write_drive(tmp_path, n_train=20, n_test=3), **KW)
    assert_disjoint(dm, (16, 4, 3))
    assert all("/training/" in s.image for s in dm.splits["val"])
    assert all("/test/" in s.image for s in dm.splits["test"])


def test_ade20k_tests_on_the_official_val_set_and_validates_on_training(tmp_path: Path) -> None:
    root = write_ade20k(tmp_path, n_train=8, n_val=3)
    assert ADE20KDataModule(root=root).holdout == ValHoldout(500, 0)  # the documented default
    dm = ADE20KDataModule(root=root, val_size=2, **KW)
    assert_disjoint(dm, (6, 2, 3))
    assert all("/training/" in s.image for s in dm.splits["val"])
    assert all("/validation/" in s.image for s in dm.splits["test"])


# ----------------------------------------------------------------------------------------- k-fold sets
KFOLD = {  # name → (writer kwargs, DataModule, (train, val, test) of fold 0 with the config defaults)
    "kvasir_seg": (write_kvasir_seg, {"n": 20}, KvasirSEGDataModule, (14, 2, 4)),
    "bkai_polyp": (write_bkai_polyp, {"n": 20}, BKAIPolypDataModule, (14, 2, 4)),
    "dsb2018": (write_dsb2018, {"n": 10}, DSB2018DataModule, (7, 1, 2)),
    # benign 10 / malignant 5 in contiguous per-class folds: test 2 + 1, val 1 of the other 12
    "busi": (write_busi, {"n_benign": 10, "n_malignant": 5}, BUSIDataModule, (11, 1, 3)),
}


@pytest.mark.parametrize("name", sorted(KFOLD))
def test_kfold_sets_have_separate_val_and_test_folds(name: str, tmp_path: Path) -> None:
    writer, wkw, cls, sizes = KFOLD[name]
    root = writer(tmp_path, **wkw)
    tested = []
    for fold in range(5):
        dm = cls(root=root, fold=fold, **KW)
        assert_disjoint(dm, sizes if fold == 0 else None)
        tested += names(dm.splits["test"])
    assert len(tested) == len(set(tested))  # every sample is tested at most once over the folds
    if name == "bkai_polyp":  # QTSeg's contiguous folds: fold 0 tests the first sorted names
        dm = cls(root=root, **KW)
        every = sorted(names(dm.splits["train"] + dm.splits["val"] + dm.splits["test"]))
        assert names(dm.splits["test"]) == every[:4]


def test_busi_test_fold_and_holdout_are_stratified(tmp_path: Path) -> None:
    dm = BUSIDataModule(root=write_busi(tmp_path, n_benign=20, n_malignant=10), **KW)
    # test: 4 benign + 2 malignant; val: 10% of the other 24 = 2 (largest remainder: 16 / 8 → 1.6 / 0.8 → 1 / 1)
    assert_disjoint(dm, (22, 2, 6))
    assert sorted(n.split("/")[0] for n in names(dm.splits["val"])) == ["benign", "malignant"]
    assert sorted(n.split("/")[0] for n in names(dm.splits["test"])).count("benign") == 4


def test_seg_folder_protocols(tmp_path: Path) -> None:
    kw = {**KW, "classes": ["bg", "a", "b"]}
    flat = SegFolderDataModule(root=write_seg_folder(tmp_path / "flat", n=10), **kw)
    assert_disjoint(flat, (7, 1, 2))
    two = SegFolderDataModule(root=write_seg_folder(tmp_path / "two", n=10, splits=True), **kw)
    assert_disjoint(two, (9, 1, 5), by_name=False)  # val/ folder (5) is the test split
    assert all("/val/" in s.image for s in two.splits["test"])
    assert all("/train/" in s.image for s in two.splits["train"] + two.splits["val"])
    assert "used as test" in two.split_info()["test"]["source"]
    three_root = write_seg_folder(tmp_path / "three", n=6, splits=True)
    for d in ("images", "masks"):
        (three_root / d / "val").rename(three_root / d / "test")
    write_seg_folder(tmp_path / "extra", n=4, splits=True)
    for d in ("images", "masks"):
        (tmp_path / "extra" / "seg_folder" / d / "train").rename(three_root / d / "val")
    three = SegFolderDataModule(root=three_root, **kw)
    assert_disjoint(three, (6, 4, 3), by_name=False)


def test_msd_volumes_have_separate_val_and_test_folds(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    root = write_msd(tmp_path, n=10, shape=(20, 20, 3))
    dm = MSDDataModule(root=root, cache_dir=tmp_path / "c", **KW)
    vols = {k: {s.volume_id for s in v} for k, v in dm.splits.items()}
    assert [len(vols[k]) for k in ("train", "val", "test")] == [7, 1, 2]
    assert not (vols["train"] & vols["val"] or vols["train"] & vols["test"] or vols["val"] & vols["test"])
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [21, 3, 6]
    info = dm.split_info()
    assert [(info[k]["size"], info[k]["volumes"]) for k in ("train", "val", "test")] == [
        (21, 7),
        (3, 1),
        (6, 2),
    ]


# ----------------------------------------------------------------------------------------- unreadable files
def _val_image(dm) -> Path:
    return Path(dm.splits["val"][0].image)


def test_corrupt_validation_image_fails_setup_in_one_sentence(tmp_path: Path) -> None:
    root = write_isic2016(tmp_path, n_train=20, n_test=3)
    dm = ISIC2016DataModule(root=root, **KW)
    bad = _val_image(dm)
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError) as err:
        dm.setup("validate")
    assert str(bad) in str(err.value) and "data.eval_unreadable=exclude" in str(err.value)
    one_sentence(str(err.value))


def test_corrupt_validation_image_excluded_is_counted_once(tmp_path: Path) -> None:
    root = write_isic2016(tmp_path, n_train=20, n_test=3)
    dm = ISIC2016DataModule(root=root, eval_unreadable="exclude", **{**KW, "val_batch_size": 1})
    bad = _val_image(dm)
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):
        dm.setup("fit")
    seen = [n for batch in dm.val_dataloader() for n in batch["name"]]
    assert len(seen) == len(set(seen)) == 1 and bad.stem not in seen  # 2 held out, 1 unreadable
    assert dm.excluded["val"] == [str(bad)] and dm.split_info()["val"] == {
        **dm.split_info()["val"],
        "size": 1,
        "excluded": 1,
    }


def test_corrupt_test_mask_is_excluded_not_replaced(tmp_path: Path) -> None:
    root = write_fives(tmp_path, n_train=8, n_test=4)
    dm = FIVESDataModule(root=root, eval_unreadable="exclude", **KW)
    bad = Path(dm.splits["test"][1].masks[0])
    bad.write_bytes(b"\x89PNG broken")
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):  # the mask, not its image
        dm.setup("test")
    seen = [n for batch in dm.test_dataloader() for n in batch["name"]]
    assert len(seen) == len(set(seen)) == 3 and dm.split_info()["test"]["excluded"] == 1
    assert dm.excluded["test"] == [str(bad)]


def test_file_broken_after_setup_fails_evaluation_instead_of_replacing(tmp_path: Path) -> None:
    dm = ISIC2016DataModule(root=write_isic2016(tmp_path), **KW)
    dm.setup("test")
    Path(dm.test_dataset.samples[0].image).write_bytes(b"gone")
    with pytest.raises(DatasetError, match="during evaluation") as err:
        dm.test_dataset[0]
    one_sentence(str(err.value))


def test_corrupt_training_image_is_skipped_with_a_warning(tmp_path: Path) -> None:
    dm = KvasirSEGDataModule(root=write_kvasir_seg(tmp_path, n=10), **KW)
    bad = Path(dm.splits["train"][0].image)
    bad.write_bytes(b"broken")
    dm.setup("fit")  # evaluation splits are fine
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):
        batches = list(dm.train_dataloader())
    assert batches and dm.split_info()["train"]["size"] == 7


def _corrupt_volume(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated gzip stream


def test_corrupt_nifti_in_validation(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    root = write_msd(tmp_path, n=10, shape=(20, 20, 3))
    probe = MSDDataModule(root=root, cache_dir=tmp_path / "probe", **KW)
    val_vid = probe.splits["val"][0].volume_id
    bad = root / "imagesTr" / f"{val_vid}.nii.gz"
    _corrupt_volume(bad)
    strict = MSDDataModule(root=root, cache_dir=tmp_path / "c1", **KW)
    with pytest.raises(DatasetError) as err:
        strict.setup("validate")
    assert str(bad) in str(err.value)
    one_sentence(str(err.value))
    lenient = MSDDataModule(root=root, cache_dir=tmp_path / "c2", eval_unreadable="exclude", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        lenient.setup("fit")
    assert {s.volume_id for s in lenient.splits["test"]} == {s.volume_id for s in probe.splits["test"]}
    assert len(lenient.val_dataset) == 0 and lenient.split_info()["val"]["excluded"] == 1


def test_corrupt_nifti_in_training_is_skipped_with_a_warning(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    root = write_msd(tmp_path, n=10, shape=(20, 20, 3))
    probe = MSDDataModule(root=root, cache_dir=tmp_path / "probe", **KW)
    train_vid = probe.splits["train"][0].volume_id
    bad = root / "imagesTr" / f"{train_vid}.nii.gz"
    _corrupt_volume(bad)
    dm = MSDDataModule(root=root, cache_dir=tmp_path / "c", **KW)
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):
        train = dm.splits["train"]
    assert train_vid not in {s.volume_id for s in train} and len(train) == 6 * 3
    assert names(dm.splits["val"]) == names(probe.splits["val"])  # the folds do not shift
    assert np.array_equal(
        [s.volume_id for s in dm.splits["test"]], [s.volume_id for s in probe.splits["test"]]
    )


@pytest.mark.parametrize("experiment", ["biformer_small_upernet_ade20k", "biformer_base_upernet_ade20k"])
def test_ade20k_recipes_report_the_final_checkpoint(experiment: str, tmp_path: Path) -> None:
    from hydra_helpers import compose_cfg

    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    assert cfg.test_ckpt == "last" and cfg.optimized_metric == "val/mIoU" and cfg.data.val_size == 500
