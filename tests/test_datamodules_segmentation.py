"""Segmentation DataModules: every official layout, batches, mask decoding, splits, configs and errors."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from seg_layouts import (
    SIZE,
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
    ShapesDataModule,
    UnreadableImageWarning,
    kfold_indices,
)
from visionzoo.datamodules.samplers import EpochShuffleSampler
from visionzoo.datamodules.segmentation.polyp import decode_bkai
from visionzoo.errors import ConfigError, DatasetError

CONF = Path(__file__).resolve().parents[1] / "visionzoo" / "conf" / "data"
NET = 32  # network size in these tests (the written images are 56×64)

# name → (writer, DataModule, extra kwargs, expected num_classes)
FILE_SETS = {
    "ade20k": (write_ade20k, ADE20KDataModule, {"val_size": 1}, 150),  # 4 training images here
    "seg_folder": (write_seg_folder, SegFolderDataModule, {"classes": ["bg", "a", "b"], "num_folds": 3}, 3),
    "isic2016": (write_isic2016, ISIC2016DataModule, {}, 2),
    "kvasir_seg": (write_kvasir_seg, KvasirSEGDataModule, {}, 2),
    "bkai_polyp": (write_bkai_polyp, BKAIPolypDataModule, {}, 2),
    "busi": (write_busi, BUSIDataModule, {}, 2),
    "dsb2018": (write_dsb2018, DSB2018DataModule, {}, 2),
    "fives": (write_fives, FIVESDataModule, {}, 2),
    "drive": (write_drive, DRIVEDataModule, {"val_size": 2}, 2),  # 5 training images here
}


def assert_one_sentence(msg: str) -> None:
    assert "\n" not in msg, msg
    assert msg.endswith("."), msg
    assert not re.search(r"\.\s+[A-Z]", msg), f"more than one sentence: {msg}"


def make_dm(name: str, root: Path, **kwargs):
    _, cls, extra, _ = FILE_SETS[name]
    return cls(root=root, **{"image_size": NET, "batch_size": 2, "num_workers": 0, **extra, **kwargs})


def values(masks) -> set[int]:
    return set(torch.cat([m.flatten() for m in masks]).unique().tolist())


# ----------------------------------------------------------------------------------------- every layout
@pytest.mark.parametrize("name", sorted(FILE_SETS))
def test_layout_batches(name: str, tmp_path: Path) -> None:
    writer, _, _, num_classes = FILE_SETS[name]
    dm = make_dm(name, writer(tmp_path))
    assert dm.task == "segmentation" and dm.in_chans == 3
    dm.check()
    assert dm.num_classes == num_classes == len(dm.class_names)
    allowed = set(range(num_classes)) | ({dm.ignore_index} if dm.ignore_index is not None else set())
    dm.setup()

    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"image", "mask"}
    assert train["image"].shape == (2, 3, NET, NET) and train["image"].dtype == torch.float32
    assert train["mask"].shape == (2, NET, NET) and train["mask"].dtype == torch.long
    assert values([train["mask"]]) <= allowed

    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        n = min(2, len(loader.dataset))  # a tiny layout's validation hold-out may be one image
        assert set(batch) == {"image", "mask", "orig_mask", "name"}
        assert batch["image"].shape == (n, 3, NET, NET) and batch["mask"].shape == (n, NET, NET)
        assert batch["mask"].dtype == torch.long
        assert all(m.shape == SIZE and m.dtype == torch.long for m in batch["orig_mask"])
        assert all(isinstance(n, str) for n in batch["name"]) and len(batch["name"]) == n
        assert values(batch["orig_mask"]) <= allowed
        assert values(batch["orig_mask"]) - {dm.ignore_index} > {0}  # foreground present

    pred = next(iter(dm.predict_dataloader()))
    assert set(pred) == {"image", "name", "orig_size"}
    assert pred["image"].shape == (2, 3, NET, NET) and pred["orig_size"] == [SIZE, SIZE]


@pytest.mark.parametrize("name", sorted(FILE_SETS) + ["msd"])
def test_missing_root_errors_name_data_root_and_layout(name: str, tmp_path: Path) -> None:
    cls = MSDDataModule if name == "msd" else FILE_SETS[name][1]
    extra = {} if name == "msd" else FILE_SETS[name][2]
    layout = cls(root=None, **extra)._layout()
    with pytest.raises(DatasetError) as err:
        cls(root=None, **extra).check()
    assert "data.root is not set" in str(err.value) and layout in str(err.value)
    assert_one_sentence(str(err.value))
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        cls(root=missing, **extra).check()
    assert f"data.root '{missing}' does not exist" in str(err.value) and layout in str(err.value)
    assert_one_sentence(str(err.value))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:  # root exists but holds nothing of the layout
        cls(root=tmp_path / "empty", **extra).check()
    assert_one_sentence(str(err.value))


# ----------------------------------------------------------------------------------------- errors
def _resize_file(path: Path, size=(30, 20)) -> None:
    Image.open(path).resize(size).save(path)


def test_mask_size_mismatch_in_check_names_the_file(tmp_path: Path) -> None:
    root = write_isic2016(tmp_path)
    mask = root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000000_Segmentation.png"
    _resize_file(mask)
    with pytest.raises(DatasetError) as err:
        make_dm("isic2016", root).check()
    msg = str(err.value)
    assert f"mask '{mask}'" in msg and "30×20 px" in msg and "64×56 px" in msg
    assert_one_sentence(msg)


def test_mask_size_mismatch_at_load_time_names_the_file(tmp_path: Path) -> None:
    root = write_busi(tmp_path)
    extra = root / "Dataset_BUSI_with_GT" / "benign" / "benign (2)_mask_1.png"
    _resize_file(extra)
    dm = make_dm("busi", root, check_samples=0)
    dm.check()  # not sampled by check
    assert sum(len(v) for v in dm.splits.values()) == 11
    split = next(k for k, v in dm.splits.items() if any(s.name.endswith("(2)") for s in v))
    with pytest.raises(DatasetError, match=re.escape(f"mask '{extra}'")):
        if split == "train":  # found when the sample is loaded
            dm.setup("fit")
            dm.train_dataset[
                next(i for i, s in enumerate(dm.train_dataset.samples) if s.name.endswith("(2)"))
            ]
        else:  # evaluation decodes every sample at set-up
            dm.eval_samples(split)


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    root = write_kvasir_seg(tmp_path)
    (root / "Kvasir-SEG" / "masks" / "cju0003polyp.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        make_dm("kvasir_seg", root).check()
    assert "cju0003polyp.jpg" in str(err.value) and "has no mask" in str(err.value)
    assert_one_sentence(str(err.value))


def test_unreadable_training_image_is_skipped_with_a_warning(tmp_path: Path) -> None:
    # (evaluation never replaces a sample: tests/test_seg_protocols.py)
    root = write_fives(tmp_path)
    dm = make_dm("fives", root)
    dm.check()
    names = [s.name for s in dm.splits["train"]]
    bad = Path(dm.splits["train"][0].image)
    bad.write_bytes(b"not a png")
    dm.setup("fit")
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):
        item = dm.train_dataset[0]
    assert item["image"].shape == (3, NET, NET) and len(names) > 1
    assert dm.train_dataset.skipped == 1


# ----------------------------------------------------------------------------------------- mask decoding
def test_ade20k_reduce_zero_label(tmp_path: Path) -> None:
    root = write_ade20k(tmp_path)
    dm = make_dm("ade20k", root)
    assert dm.num_classes == 150 and dm.ignore_index == 255 and dm.class_names[0] == "wall"
    dm.setup("test")  # the official validation images are the test split
    item = dm.test_dataset[0]
    raw = np.asarray(Image.open(root / "annotations" / "validation" / "ADE_val_00000001.png")).astype(
        np.int64
    )
    expected = np.where(raw == 0, 255, raw - 1)
    assert torch.equal(item["orig_mask"], torch.from_numpy(expected))
    assert item["orig_mask"][0, 0] == 149 and item["orig_mask"][-1, -1] == 0
    assert {0, 149, 255} <= set(item["orig_mask"].unique().tolist())


def test_busi_merges_extra_masks_and_drops_normal(tmp_path: Path) -> None:
    root = write_busi(tmp_path)
    dm = make_dm("busi", root)
    dm.setup("fit")
    all_samples = [s for v in dm.splits.values() for s in v]
    assert len(all_samples) == 11 and not any(s.name.startswith("normal") for s in all_samples)
    sample = next(s for s in all_samples if s.name == "benign/benign (2)")
    assert [Path(m).name for m in sample.masks] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    _, mask = dm.train_dataset.reader.load(sample)
    first = np.asarray(Image.open(sample.masks[0])) > 127
    assert (
        mask[:6, :6].all()
        and mask.sum() == (first | (np.arange(SIZE[0])[:, None] < 6) & (np.arange(SIZE[1]) < 6)).sum()
    )
    with_normal = make_dm("busi", root, include_normal=True)
    with_normal.check()
    assert sum(len(v) for v in with_normal.splits.values()) == 13


def test_busi_qtseg_folds_are_contiguous_per_class(tmp_path: Path) -> None:
    root = write_busi(tmp_path, n_benign=7, n_malignant=5)
    vals = []
    for fold in range(5):
        dm = make_dm("busi", root, fold=fold)
        dm.check()
        vals.append([s.name for s in dm.splits["test"]])
    # benign: 7 // 5 = 1 per test fold in sorted order; the last 2 sorted benign images are never tested
    benign_sorted = sorted(f"benign ({k})" for k in range(1, 8))
    assert [v[0] for v in vals] == [f"benign/{n}" for n in benign_sorted[:5]]
    assert [v[1] for v in vals] == [f"malignant/malignant ({k})" for k in range(1, 6)]
    assert all(len(v) == 2 for v in vals)


def test_dsb2018_merges_instance_masks(tmp_path: Path) -> None:
    root = write_dsb2018(tmp_path)
    dm = make_dm("dsb2018", root)
    dm.check()
    sample = dm.splits["train"][0]
    assert len(sample.masks) >= 2
    union = np.zeros(SIZE, bool)
    for m in sample.masks:
        union |= np.asarray(Image.open(m)) > 127
    image, mask = dm._reader("train").load(sample)
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8  # RGBA → RGB
    assert np.array_equal(mask.astype(bool), union)


def test_bkai_colour_masks_binary_and_three_class(tmp_path: Path) -> None:
    root = write_bkai_polyp(tmp_path)
    three = make_dm("bkai_polyp", root, three_class=True)
    assert three.num_classes == 3 and three.class_names == ["background", "non_neoplastic", "neoplastic"]
    three.check()
    sample = three.splits["train"][0]
    _, labels = three._reader("train").load(sample)
    half = SIZE[1] // 2
    assert set(np.unique(labels[:, :half])) <= {0, 2} and set(np.unique(labels[:, half:])) <= {0, 1}
    _, binary = make_dm("bkai_polyp", root)._reader("train").load(sample)
    assert np.array_equal(binary, (labels > 0).astype(np.uint8))
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0] = [(250, 10, 5), (10, 240, 20), (0, 0, 0), (200, 200, 200)]  # red, green, black, white
    assert decode_bkai(rgb).tolist() == [[2, 1, 0, 0]]


def test_drive_fov_is_ignored_in_evaluation_only(tmp_path: Path) -> None:
    root = write_drive(tmp_path)
    dm = make_dm("drive", root)
    assert dm.ignore_index == 255
    dm.setup()
    item = dm.val_dataset[0]
    fov = np.asarray(Image.open(dm.val_dataset.samples[0].fov).convert("L")) > 127
    assert np.array_equal(item["orig_mask"].numpy() == 255, ~fov)
    assert (item["mask"] == 255).any()
    train = next(iter(dm.train_dataloader()))
    assert 255 not in values([train["mask"]])
    ignored = make_dm("drive", root, fov_ignore_train=True)
    ignored.setup("fit")
    assert 255 in values([next(iter(ignored.train_dataloader()))["mask"]])


def test_drive_without_test_labels_is_refused(tmp_path: Path) -> None:
    # (it used to test on the validation fold: the split that chose the checkpoint)
    root = write_drive(tmp_path, test_labels=False)
    with pytest.raises(DatasetError, match="1st_manual") as err:
        make_dm("drive", root).check()
    assert_one_sentence(str(err.value))


def test_seg_folder_split_folders_binary_suffix_and_bad_labels(tmp_path: Path) -> None:
    root = write_seg_folder(tmp_path / "a", splits=True, mask_suffix="_mask")
    dm = make_dm("seg_folder", root, mask_suffix="_mask")
    dm.check()
    # train/ + val/ only: the given val/ folder is the test split, val a hold-out of train/
    assert len(dm.splits["train"]) == 5 and len(dm.splits["val"]) == 1 and len(dm.splits["test"]) == 3
    assert all("/val/" in s.image for s in dm.splits["test"])
    for mask in (root / "masks").rglob("*.png"):  # 8-bit 0/255 masks for the binary mode
        Image.fromarray(((np.asarray(Image.open(mask)) > 0) * 255).astype(np.uint8)).save(mask)
    binary = make_dm("seg_folder", root, mask_suffix="_mask", mask_mode="binary", classes=["bg", "fg"])
    binary.setup("validate")
    assert values([binary.val_dataset[i]["orig_mask"] for i in range(3)]) == {0, 1}

    flat = write_seg_folder(tmp_path / "b", n=6)
    bad = flat / "masks" / "img_002.png"
    Image.fromarray(np.full(SIZE, 7, np.uint8)).save(bad)
    dm = make_dm("seg_folder", flat, num_folds=2, check_samples=0)
    dm.check()
    split = next(k for k, v in dm.splits.items() if any(s.name == "img_002" for s in v))
    with pytest.raises(DatasetError) as err:
        if split == "train":
            dm.setup("fit")
            dm.train_dataset[[s.name for s in dm.train_dataset.samples].index("img_002")]
        else:  # evaluation decodes every sample at set-up
            dm.eval_samples(split)
    assert f"mask '{bad}' holds label 7" in str(err.value)
    assert_one_sentence(str(err.value))
    with pytest.raises(ConfigError):
        SegFolderDataModule(root=flat, mask_mode="binary", classes=["a", "b", "c"])


# ----------------------------------------------------------------------------------------- splits
def test_kfold_indices_deterministic_disjoint_and_complete() -> None:
    for seed in (0, 7, None):
        folds = [kfold_indices(23, 5, k, seed) for k in range(5)]
        assert folds == [kfold_indices(23, 5, k, seed) for k in range(5)]
        vals = [set(v) for _, v in folds]
        for tr, va in folds:
            assert not set(tr) & set(va) and set(tr) | set(va) == set(range(23))
        for i in range(5):
            for j in range(i + 1, 5):
                assert not vals[i] & vals[j]
        union = set().union(*vals)
        assert union == set(range(23)) if seed is not None else union == set(range(20))
    assert kfold_indices(23, 5, 0, None)[1] == [0, 1, 2, 3]  # contiguous, sorted order
    assert kfold_indices(23, 5, 0, 0)[1] != kfold_indices(23, 5, 0, 1)[1]
    tr, va = kfold_indices(10, 2, 1, None, groups=["a"] * 6 + ["b"] * 4)  # per group, contiguous
    assert va == [3, 4, 5, 8, 9] and tr == [0, 1, 2, 6, 7]


def test_datamodule_folds_cover_every_image_once(tmp_path: Path) -> None:
    root = write_kvasir_seg(tmp_path, n=11)
    seen = []
    for fold in range(5):
        dm = make_dm("kvasir_seg", root, fold=fold)
        dm.check()
        test, val, train = ([s.name for s in dm.splits[k]] for k in ("test", "val", "train"))
        assert not set(val) & set(train) and not set(test) & (set(val) | set(train))
        assert len(test) + len(val) + len(train) == 11 and val
        again = make_dm("kvasir_seg", root, fold=fold)
        again.check()
        assert [s.name for s in again.splits["test"]] == test and [s.name for s in again.splits["val"]] == val
        seen += test
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 11
    with pytest.raises(ConfigError, match="data.fold"):
        KvasirSEGDataModule(root=root, fold=5)


def test_official_split_holds_validation_out_of_training(tmp_path: Path) -> None:
    # (fold: null used to validate on the official test set)
    root = write_isic2016(tmp_path)
    dm = make_dm("isic2016", root)
    dm.check()
    assert len(dm.splits["test"]) == 3 and len(dm.splits["val"]) == 1 and len(dm.splits["train"]) == 5
    assert {s.name for s in dm.splits["test"]}.isdisjoint(s.name for s in dm.splits["val"])
    with pytest.raises(ConfigError, match="data.val_size"):
        make_dm("isic2016", root, val_size=0.0)


def test_too_few_images_for_the_folds(tmp_path: Path) -> None:
    root = write_kvasir_seg(tmp_path, n=3)
    with pytest.raises(DatasetError, match="5-fold split needs at least 5") as err:
        make_dm("kvasir_seg", root).check()
    assert_one_sentence(str(err.value))


# ----------------------------------------------------------------------------------------- MSD volumes
def test_msd_ct_slices_volume_keys_and_cache(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    root = write_msd(tmp_path)
    cache = tmp_path / "cache"
    dm = MSDDataModule(root=root, image_size=NET, batch_size=4, num_workers=0, cache_dir=cache)
    dm.check()
    assert dm.num_classes == 2 and dm.class_names == ["background", "spleen"] and dm.in_chans == 3
    dm.setup()
    # 5 volumes of 6 slices: 1 tests (fold 0), 1 validates (held out of the other 4), 3 train
    assert len(dm.splits["train"]) == 3 * 6 and len(dm.splits["val"]) == 6 and len(dm.splits["test"]) == 6
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "mask", "orig_mask", "name", "volume_id", "slice_index"}
    assert batch["slice_index"] == [0, 1, 2, 3] and len(set(batch["volume_id"])) == 1
    assert batch["image"].shape == (4, 3, NET, NET) and batch["orig_mask"][0].shape == (32, 28)
    assert batch["orig_mask"][0].sum() == 0 and batch["orig_mask"][1].sum() > 0  # first slice is empty
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, NET, NET) and values([train["mask"]]) <= {0, 1}
    # CT: background -300 HU is clipped to -175 → 0 → (0 - mean) / std of the model's config
    dm.set_data_config({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 224, 224)})
    item = dm.val_dataset[0]
    assert item["image"].shape == (3, NET, NET) and item["image"].min() == pytest.approx(-1.0)
    assert dm.volume_spacing[batch["volume_id"][0]] == pytest.approx((0.8, 0.8, 2.5))
    # the cache is reused as it is
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = MSDDataModule(root=root, image_size=NET, num_workers=0, cache_dir=cache)
    again.setup("fit")
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp
    fg = MSDDataModule(root=root, image_size=NET, num_workers=0, cache_dir=cache, train_slices="foreground")
    assert len(fg.splits["train"]) == 3 * 4
    pred = MSDDataModule(
        root=root, image_size=NET, num_workers=0, cache_dir=cache, predict_dir=root / "imagesTs"
    )
    pbatch = next(iter(pred.predict_dataloader()))
    assert set(pbatch) == {"image", "name", "orig_size", "volume_id", "slice_index"}
    assert pbatch["volume_id"][0] == "spleen_6" and pbatch["orig_size"][0] == (32, 28)


def test_msd_mri_multimodal_and_worker_loading(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    root = write_msd(tmp_path, modality="MRI2", n=5)
    dm = MSDDataModule(root=root, image_size=NET, batch_size=6, num_workers=1, cache_dir=tmp_path / "c")
    dm.check()
    assert dm.in_chans == 2 and dm.input_size == (2, NET, NET)
    batch = next(iter(dm.val_dataloader()))  # through a worker process: memory maps reopen there
    image = batch["image"]
    assert image.shape == (6, 2, NET, NET)
    assert (
        abs(float(image.mean())) < 1.0 and 0.3 < float(image.std()) < 3.0
    )  # per-volume z-score, no mean/std


def test_msd_errors(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    import nibabel as nib

    root = write_msd(tmp_path)
    label = root / "labelsTr" / "spleen_1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 6), np.uint8), np.eye(4)), str(label))
    with pytest.raises(DatasetError) as err:
        MSDDataModule(root=root, cache_dir=tmp_path / "c").check()
    assert f"label volume '{label}'" in str(err.value) and "10×10×6" in str(err.value)
    assert_one_sentence(str(err.value))
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json") as err:
        MSDDataModule(root=root).check()
    assert_one_sentence(str(err.value))


# ----------------------------------------------------------------------------------------- shapes
def test_shapes_deterministic_three_classes() -> None:
    dm = ShapesDataModule(batch_size=8)
    assert dm.num_classes == 3 and dm.input_size == (3, 64, 64) and dm.ignore_index is None
    dm.setup()
    a = dm.val_dataset[3]
    other = ShapesDataModule(batch_size=8)
    other.setup()
    assert torch.equal(a["image"], other.val_dataset[3]["image"]) and torch.equal(
        a["mask"], other.val_dataset[3]["mask"]
    )
    assert not np.array_equal(
        ShapesDataModule(seed=1)._generated("val").images, other._generated("val").images
    )
    assert not np.array_equal(other._generated("train").images[:16], other._generated("val").images)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64) and values([batch["mask"]]) == {0, 1, 2}
    val = next(iter(dm.val_dataloader()))
    assert all(torch.equal(o, m) for o, m in zip(val["orig_mask"], val["mask"], strict=True))
    with pytest.raises(ConfigError):
        ShapesDataModule(root="/data")


# ----------------------------------------------------------------------------------------- transforms, loaders
def test_train_transform_from_yaml_list_and_errors(tmp_path: Path) -> None:
    dm = ShapesDataModule(
        image_size=[48, 40],
        train_transform=[
            {"name": "OneOf", "transforms": [{"name": "HorizontalFlip"}, {"name": "VerticalFlip"}], "p": 1.0},
            {"name": "RandomScale", "scale_limit": [0.2, 0.5], "p": 1.0},  # changes the size: stretched back
        ],
    )
    dm.setup("fit")
    assert dm.train_dataset[0]["image"].shape == (3, 48, 40) and dm.train_dataset[0]["mask"].shape == (48, 40)
    with pytest.raises(ConfigError, match=r"train_transform\[0\]\.name 'Flipp'") as err:
        ShapesDataModule(train_transform=[{"name": "Flipp"}])
    assert_one_sentence(str(err.value))
    with pytest.raises(ConfigError, match="HorizontalFlip"):
        ShapesDataModule(train_transform=[{"name": "HorizontalFlip", "prob": 0.5}])
    with pytest.raises(ConfigError, match="Resize"):
        ShapesDataModule(train_transform=[{"name": "Resize", "height": "a", "width": 3}])
    with pytest.raises(ConfigError):
        ShapesDataModule(train_transform={"name": "HorizontalFlip"})
    with pytest.raises(ConfigError, match="data.resize"):
        ShapesDataModule(resize="crop")


def test_ade20k_shortest_side_scale_pad_crop_recipe(tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "ade20k.yaml"))
    ops = cfg["train_transform"]
    for op in ops:
        for key in ("min_height", "min_width", "height", "width"):
            if key in op:
                op[key] = NET
    dm = ADE20KDataModule(
        root=write_ade20k(tmp_path),
        image_size=NET,
        batch_size=2,
        num_workers=0,
        train_transform=ops,
        val_size=1,
    )
    dm.setup("fit")
    for i in range(4):
        item = dm.train_dataset[i]
        assert item["image"].shape == (3, NET, NET) and set(item["mask"].unique().tolist()) <= set(
            range(150)
        ) | {255}


def test_normalisation_modes_and_data_config(tmp_path: Path) -> None:
    dm = ShapesDataModule()
    dm.setup("validate")
    raw = dm._generated("val").images[0].astype(np.float32) / 255
    imagenet = dm.val_dataset[0]["image"]
    expected = (raw - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(imagenet.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    dm.set_data_config({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 224, 224)})
    assert dm.input_size == (3, 64, 64)  # the data config's image_size wins over the model's
    assert np.allclose(dm.val_dataset[0]["image"].numpy(), (raw * 2 - 1).transpose(2, 0, 1), atol=1e-5)
    follow = ShapesDataModule(image_size=None)
    follow.set_data_config({"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 40, 48)})
    assert follow.input_size == (3, 40, 48)
    mm = ShapesDataModule(normalize="minmax", color_space="YCrCb")
    mm.setup("validate")
    x = mm.val_dataset[0]["image"]
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(1.0)
    fixed = ShapesDataModule(normalize={"mean": [0, 0, 0], "std": [1, 1, 1]})
    fixed.setup("validate")
    assert np.allclose(fixed.val_dataset[0]["image"].numpy(), raw.transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(ConfigError, match="data.normalize"):
        ShapesDataModule(normalize="zscore")
    with pytest.raises(ConfigError, match="data.color_space"):
        ShapesDataModule(color_space="XYZW")


def test_train_loader_order_and_augmentation_are_seeded() -> None:
    spec = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-40, 40], "p": 0.7}]
    batches = []
    for _ in range(2):
        torch.manual_seed(123)
        dm = ShapesDataModule(batch_size=8, train_transform=spec)
        dm.shuffle_seed = 5
        loader = dm.train_dataloader()
        assert (
            isinstance(loader.sampler, EpochShuffleSampler) and loader.sampler.seed == 5 and loader.drop_last
        )
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0]["image"], batches[1]["image"]) and torch.equal(
        batches[0]["mask"], batches[1]["mask"]
    )
    dm = ShapesDataModule(batch_size=8, val_batch_size=5)
    assert next(iter(dm.val_dataloader()))["image"].shape[0] == 5


# ----------------------------------------------------------------------------------------- configs
SEG_CONFIGS = [
    "ade20k",
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
]


@pytest.mark.parametrize("name", SEG_CONFIGS)
def test_data_configs_instantiate(name: str, tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert cfg.pop("task") == "segmentation"
    assert {
        "_target_",
        "root",
        "image_size",
        "batch_size",
        "num_workers",
        "train_transform",
        "metrics",
    } <= set(cfg)
    assert cfg["root"] is None
    # the protocol's checkpoint rule (train.py reads these; the DataModule never sees them)
    metric, test_ckpt = cfg.pop("optimized_metric", None), cfg.pop("test_ckpt", None)
    if name != "shapes":
        assert test_ckpt == ("last" if name == "ade20k" else "best")
        assert metric in (None, "val/mIoU" if name == "ade20k" else "val/mDice")
    assert set(cfg["metrics"]) <= {"dice", "iou", "hd95"}
    if name not in ("ade20k", "seg_folder", "shapes"):
        assert cfg["metrics"] == ["dice", "iou", "hd95"]
    if name in FILE_SETS or name == "msd":
        kfold = name not in ("ade20k", "isic2016", "fives", "drive")
        assert ("fold" in cfg) == kfold and {"val_size", "val_seed", "eval_unreadable"} <= set(cfg)
        if name == "msd":
            pytest.importorskip("nibabel")
            cfg["root"] = str(write_msd(tmp_path))
            cfg["cache_dir"] = str(tmp_path / "cache")
        elif name == "seg_folder":  # the config's two classes
            cfg["root"] = str(write_seg_folder(tmp_path, classes=2))
        else:
            cfg["root"] = str(FILE_SETS[name][0](tmp_path))
        if name == "seg_folder":
            cfg["num_folds"] = 3
        if name == "ade20k":
            cfg["val_size"] = 1  # 500 of 4 tiny training images would leave none to train
    dm = instantiate(
        {**cfg, "num_workers": 0, "pin_memory": False, "image_size": NET, "batch_size": 2}, _convert_="all"
    )
    dm.check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[-2:] == (NET, NET) and dm.metrics == cfg["metrics"]


def test_module_files_stay_small() -> None:
    folder = Path(__file__).resolve().parents[1] / "visionzoo" / "datamodules" / "segmentation"
    assert {p.name for p in folder.glob("*.py")} >= {"_base.py", "transforms.py", "__init__.py"}
    assert all(os.path.getsize(p) < 40_000 for p in folder.glob("*.py"))
