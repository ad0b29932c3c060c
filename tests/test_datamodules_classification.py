"""Classification DataModules: folder layouts, errors, transforms, corrupt files, digits, fake data."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from visionzoo.datamodules import (
    DigitsDataModule,
    FakeDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    UnreadableImageWarning,
)
from visionzoo.datamodules.samplers import EpochShuffleSampler
from visionzoo.errors import ConfigError, DatasetError

CLASSES = ["n02", "n01", "n03"]  # written unsorted on purpose: labels follow the sorted order
MODEL_CFG = {
    "input_size": (3, 64, 64),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.9,
    "crop_mode": "center",
}


def _write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (40, 48)) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.info["transparency"] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_folder(root: Path, splits=("train", "val"), classes=CLASSES, per_class: int = 4) -> Path:
    """``root/<split>/<class>/img_<i>.JPEG``: 3 classes × 4 JPEGs of 40×48 px per split."""
    seed = 0
    for split in splits:
        for cls in classes:
            for i in range(per_class):
                _write_image(root / split / cls / f"img_{i}.JPEG", seed)
                seed += 1
    return root


def assert_one_sentence(msg: str) -> None:
    assert "\n" not in msg, msg
    assert msg.endswith("."), msg
    assert not re.search(r"\.\s+[A-Z]", msg), f"more than one sentence: {msg}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


# ----------------------------------------------------------------------------- folder: happy path
@pytest.mark.parametrize("cls", [ImageFolderDataModule, ImageNetDataModule])
def test_folder_batches_and_metadata(folder: Path, cls) -> None:
    dm = cls(root=folder, batch_size=4, num_workers=0)
    assert dm.task == "classification" and dm.in_chans == 3
    dm.check()
    assert dm.num_classes == 3
    assert dm.class_names == sorted(CLASSES)
    dm.set_data_config(MODEL_CFG)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.shape == (4,)
    if cls is ImageNetDataModule:  # no minival by default: val is the val folder, in sorted file order
        xv, yv = next(iter(dm.val_dataloader()))
        assert xv.shape == (4, 3, 64, 64)
        assert yv.tolist() == [0, 0, 0, 0]  # sorted samples: first class first
        labels = torch.cat([b[1] for b in dm.val_dataloader()])
        assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    else:  # val held out of train (one image per class), the val folder is the test split
        labels = torch.cat([b[1] for b in dm.val_dataloader()])
        assert labels.tolist() == [0, 1, 2]
        dm.setup("test")
        assert torch.cat([b[1] for b in dm.test_dataloader()]).tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_default_data_config_is_timm_imagenet(folder: Path) -> None:
    dm = ImageFolderDataModule(root=folder, batch_size=2, num_workers=0)
    cfg = dm.data_config
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == pytest.approx(0.875)
    assert cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    dm.setup("validate")
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 224, 224)


def test_image_size_overrides_model_input_size(folder: Path) -> None:
    dm = ImageFolderDataModule(root=folder, batch_size=2, num_workers=0, image_size=48)
    dm.set_data_config(MODEL_CFG)
    assert dm.data_config["input_size"] == (3, 48, 48)
    x, _ = next(iter(dm.train_dataloader()))  # loaders set themselves up when needed
    assert x.shape == (2, 3, 48, 48)


def test_eval_transform_uses_mean_and_std(folder: Path) -> None:
    dm = ImageFolderDataModule(root=folder, batch_size=12, num_workers=0)
    dm.set_data_config({**MODEL_CFG, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    dm.setup("validate")
    plain, _ = next(iter(dm.val_dataloader()))
    assert plain.min() >= 0.0 and plain.max() <= 1.0
    # changing the data config after setup re-points the datasets at new transforms
    dm.set_data_config({**MODEL_CFG, "mean": (0.5, 0.4, 0.3), "std": (0.25, 0.5, 0.2)})
    norm, _ = next(iter(dm.val_dataloader()))
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.5, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, (plain - mean) / std, atol=1e-5, rtol=1e-5)


def test_train_transform_kwargs_reach_timm(folder: Path) -> None:
    dm = ImageFolderDataModule(
        root=folder, num_workers=0, train_transform={"re_prob": 0.25, "hflip": 0.0, "scale": [0.5, 1.0]}
    )
    dm.set_data_config(MODEL_CFG)
    text = repr(dm.build_train_transform())
    assert "RandomErasing" in text
    assert "RandomHorizontalFlip" not in text
    assert "scale=(0.5, 1.0)" in text
    default = repr(dm.__class__(root=folder).build_train_transform())
    assert "RandomHorizontalFlip(p=0.5)" in default and "RandomErasing" not in default
    assert "RandAugment" not in default and "AutoAugment" not in default
    with pytest.raises(ConfigError, match="bogus"):
        ImageFolderDataModule(root=folder, train_transform={"bogus": 1})


def test_train_loader_shuffle_drop_last_and_workers(folder: Path) -> None:
    dm = ImageNetDataModule(root=folder, batch_size=4, num_workers=0)  # no hold-out: all 12 train images
    dm.set_data_config(MODEL_CFG)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochShuffleSampler) and train.drop_last  # 12 samples > 4
    train.sampler.set_epoch(0)
    first = list(train.sampler)
    train.sampler.set_epoch(1)
    assert sorted(first) == list(range(12)) and list(train.sampler) != first
    train.sampler.set_epoch(0)
    assert list(train.sampler) == first  # the order depends on (seed, epoch) only
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert not dm.val_dataloader().drop_last
    big = ImageNetDataModule(root=folder, batch_size=16, num_workers=0)
    big.set_data_config(MODEL_CFG)
    batches = list(big.train_dataloader())
    assert not big.train_dataloader().drop_last  # 12 samples <= 16: keep the only batch
    assert len(batches) == 1 and batches[0][0].shape[0] == 12
    workers = ImageFolderDataModule(root=folder, batch_size=4, num_workers=2)
    workers.setup("fit")
    assert workers.train_dataloader().persistent_workers
    assert not dm.train_dataloader().persistent_workers


def test_test_split_is_the_val_folder_without_test_dir_and_uses_test_dir(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", splits=("train", "val"))
    make_folder(root, splits=("test",), classes=["n01", "n03"], per_class=2)
    dm = ImageFolderDataModule(root=root, batch_size=8, num_workers=0)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 12  # the val folder: val itself is held out of train
    assert dm.split_sources() == {"val": "holdout", "test": "val"}
    dm_t = ImageFolderDataModule(root=root, test_dir="test", batch_size=8, num_workers=0)
    dm_t.set_data_config(MODEL_CFG)
    dm_t.setup("test")
    _, y = next(iter(dm_t.test_dataloader()))
    assert y.tolist() == [0, 0, 2, 2]  # labels follow the train classes (n01, n02, n03)


def test_image_modes_and_extensions_are_read_as_rgb(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    files = {
        "gray.png": "L",
        "rgba.PNG": "RGBA",
        "pal.png": "P",
        "rgb.jpg": "RGB",
        "bmp.BMP": "RGB",
        "w.webp": "RGB",
    }
    for split in ("train", "val"):
        for i, (name, mode) in enumerate(files.items()):
            _write_image(root / split / "only" / name, i, mode=mode)
        (root / split / "only" / "notes.txt").write_text("not an image")
    dm = ImageNetDataModule(root=root, batch_size=6, num_workers=0)  # val = the val folder
    dm.set_data_config(MODEL_CFG)
    dm.setup("validate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no palette/transparency or unreadable-image warnings
        x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (6, 3, 64, 64) and y.tolist() == [0] * 6


# ----------------------------------------------------------------------------- folder: errors
@pytest.mark.parametrize("root", [None, "", "  "])
def test_root_not_set(root) -> None:
    dm = ImageNetDataModule(root=root)
    with pytest.raises(DatasetError) as info:
        dm.check()
    msg = str(info.value)
    assert_one_sentence(msg)
    assert msg.startswith("data.root is not set")
    assert "ROOT/train/<wnid>/*.JPEG" in msg and "ROOT/val/<wnid>/*.JPEG" in msg


def test_root_missing_and_not_a_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        ImageFolderDataModule(root=missing).check()
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert_one_sentence(str(info.value))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="is not a folder") as info:
        ImageFolderDataModule(root=a_file).check()
    assert_one_sentence(str(info.value))


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_missing(tmp_path: Path, split: str) -> None:
    other = "val" if split == "train" else "train"
    root = make_folder(tmp_path / "d", splits=(other,))
    dm = ImageNetDataModule(root=root)
    with pytest.raises(DatasetError) as info:
        dm.check()
    msg = str(info.value)
    assert_one_sentence(msg)
    assert str(root / split) in msg and "is missing" in msg
    with pytest.raises(DatasetError):  # setup() validates too
        dm.setup("fit")


def test_custom_split_dirs(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", splits=("training", "validation"))
    with pytest.raises(DatasetError, match="train"):
        ImageFolderDataModule(root=root).check()
    dm = ImageFolderDataModule(root=root, train_dir="training", val_dir="validation", num_workers=0)
    dm.check()
    assert dm.num_classes == 3


def test_empty_class_folder_is_named(folder: Path) -> None:
    empty = folder / "val" / "n04"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    (folder / "train" / "n04").mkdir()
    _write_image(folder / "train" / "n04" / "a.jpeg", 1)
    with pytest.raises(DatasetError) as info:
        ImageFolderDataModule(root=folder).check()
    msg = str(info.value)
    assert_one_sentence(msg)
    assert str(empty) in msg and "no images" in msg


def test_class_sets_differ(folder: Path) -> None:
    _write_image(folder / "train" / "n09" / "a.JPEG", 1)
    _write_image(folder / "val" / "n07" / "a.JPEG", 2)
    with pytest.raises(DatasetError) as info:
        ImageNetDataModule(root=folder).check()
    msg = str(info.value)
    assert_one_sentence(msg)
    assert "n09" in msg and "n07" in msg and "differ" in msg


def test_flat_val_folder_gets_a_hint(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", splits=("train",))
    for i in range(3):
        _write_image(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    with pytest.raises(DatasetError) as info:
        ImageNetDataModule(root=root).check()
    msg = str(info.value)
    assert_one_sentence(msg)
    assert str(root / "val") in msg and "3 images directly" in msg


# ----------------------------------------------------------------------------- folder: corrupt files
def test_corrupt_image_is_skipped_with_one_warning_naming_it(folder: Path) -> None:
    bad = folder / "train" / "n01" / "img_0.JPEG"  # the very first train sample
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    dm = ImageNetDataModule(root=folder, batch_size=4, num_workers=0)
    dm.set_data_config(MODEL_CFG)
    dm.setup("fit")
    ds = dm.train_dataset
    with pytest.warns(UnreadableImageWarning, match=re.escape(str(bad))):
        x, y = ds[0]
    assert y == 0 and x.shape == (3, 64, 64)  # replaced by the next readable image (same class here)
    assert ds.skipped == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader()) + list(dm.train_dataloader())
    assert len(batches) == 6 and all(b[0].shape == (4, 3, 64, 64) for b in batches)
    assert not [w for w in caught if issubclass(w.category, UnreadableImageWarning)]  # once per file
    assert ds.skipped == 1


def test_truncated_train_image_is_skipped(folder: Path) -> None:
    victim = folder / "train" / "n03" / "img_3.JPEG"  # the last sample: replacement wraps around
    victim.write_bytes(victim.read_bytes()[:200])
    dm = ImageNetDataModule(root=folder, batch_size=12, num_workers=0)
    dm.set_data_config(MODEL_CFG)
    dm.setup("fit")
    with pytest.warns(UnreadableImageWarning, match="img_3.JPEG"):
        x, y = dm.train_dataset[11]
    assert x.shape == (3, 64, 64)
    assert y == 0  # wrapped to the first readable sample, with its own label


def test_truncated_val_image_fails_at_setup_naming_it(folder: Path) -> None:
    """Old behaviour (the bug): the bad val image was replaced by the next one, which was then counted twice."""
    victim = folder / "val" / "n03" / "img_3.JPEG"
    victim.write_bytes(victim.read_bytes()[:200])
    dm = ImageFolderDataModule(root=folder, batch_size=12, num_workers=0)
    with pytest.raises(DatasetError, match="img_3.JPEG") as err:
        dm.setup("fit")
    assert_one_sentence(str(err.value))


def test_all_images_unreadable_raises(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / "x.jpg").write_bytes(b"garbage")
    dm = ImageNetDataModule(root=root, batch_size=1, num_workers=0)
    with pytest.raises(DatasetError, match="unreadable image"):
        dm.setup("validate")
    dm = ImageNetDataModule(root=root, batch_size=1, num_workers=0, eval_corrupt="exclude")
    with pytest.warns(UnreadableImageWarning), pytest.raises(DatasetError, match="could be decoded"):
        dm.setup("validate")


# ----------------------------------------------------------------------------- digits
def test_digits_split_is_stratified_and_deterministic() -> None:
    a, b = DigitsDataModule(num_workers=0), DigitsDataModule(num_workers=0)
    a.setup("fit")
    b.setup("fit")
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    np.testing.assert_array_equal(a.val_indices, b.val_indices)
    np.testing.assert_array_equal(a.test_indices, b.test_indices)
    assert (len(a.train_indices), len(a.val_indices), len(a.test_indices)) == (1257, 180, 360)
    parts = [set(a.train_indices), set(a.val_indices), set(a.test_indices)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 1797
    all_counts = torch.bincount(
        torch.cat([a.train_dataset.targets, a.val_dataset.targets, a.test_dataset.targets]), minlength=10
    )
    for ds, fraction in ((a.val_dataset, 0.1), (a.test_dataset, 0.2)):
        counts = torch.bincount(ds.targets, minlength=10)
        assert (counts > 0).all() and len(counts) == 10
        assert ((counts.float() - fraction * all_counts.float()).abs() <= 1.0).all()
    other = DigitsDataModule(seed=1, num_workers=0)
    other.setup("fit")
    assert not np.array_equal(other.val_indices, a.val_indices)


def test_digits_batches_sizes_and_speed() -> None:
    dm = DigitsDataModule(batch_size=64, num_workers=0)
    assert dm.task == "classification" and dm.in_chans == 3
    assert dm.num_classes == 10 and dm.class_names == [str(i) for i in range(10)]
    dm.check()
    dm.set_data_config({**MODEL_CFG, "input_size": (3, 224, 224)})  # image_size=32 wins
    dm.setup("fit")
    start = time.perf_counter()
    batches = list(dm.train_dataloader())
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"a digits epoch took {elapsed:.2f}s"
    x, y = batches[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(batches) == len(dm.train_dataset) // 64  # drop_last
    xv, _ = next(iter(dm.test_dataloader()))
    assert xv.shape[1:] == (3, 32, 32)
    assert len(dm.test_dataset) == 360 and len(dm.val_dataset) == 180  # old behaviour (the bug): test was val


def test_digits_normalization_and_model_size() -> None:
    dm = DigitsDataModule(image_size=None, batch_size=360, num_workers=0)
    dm.set_data_config({**MODEL_CFG, "input_size": (3, 40, 40), "mean": (0, 0, 0), "std": (1, 1, 1)})
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (360, 3, 40, 40)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    torch.testing.assert_close(x[:, 0], x[:, 2])  # grey replicated to 3 channels
    dm.set_data_config({**MODEL_CFG, "input_size": (3, 40, 40), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    x2, _ = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(x2, (x - 0.5) / 0.5)


def test_digits_train_augmentation_only_translates() -> None:
    plain = DigitsDataModule(num_workers=0, train_transform={"translate": 0})
    plain.setup("fit")
    ds = plain.train_dataset
    ref = [ds[i][0] for i in range(5)]
    torch.testing.assert_close(torch.stack(ref), torch.stack([ds[i][0] for i in range(5)]))
    aug = DigitsDataModule(num_workers=0)  # default ±2 px at 32
    aug.setup("fit")
    assert aug.train_dataset.max_shift == 2
    background = (-aug.train_dataset.mean / aug.train_dataset.std).view(3)  # black after normalization
    torch.manual_seed(0)
    for i in range(5):
        x, _ = aug.train_dataset[i]
        padded = torch.stack(
            [torch.nn.functional.pad(ref[i][c], (2, 2, 2, 2), value=float(background[c])) for c in range(3)]
        )
        matches = [
            torch.allclose(x, padded[:, 2 + dy : 34 + dy, 2 + dx : 34 + dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(matches), "train sample is not a ±2 px translation of the image"
    with pytest.raises(ConfigError, match="nonsense"):
        DigitsDataModule(train_transform={"nonsense": 1})
    with pytest.warns(UserWarning, match="hflip"):
        DigitsDataModule(train_transform={"hflip": 0.5})


# ----------------------------------------------------------------------------- fake
def test_fake_data_shapes_determinism_and_learnability() -> None:
    dm = FakeDataModule(num_classes=4, num_samples=64, image_size=16, seed=3, batch_size=16)
    assert dm.task == "classification" and dm.in_chans == 3
    assert dm.num_classes == 4 and len(dm.class_names) == 4
    dm.check()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert set(y.tolist()) <= set(range(4))
    again = FakeDataModule(num_classes=4, num_samples=64, image_size=16, seed=3)
    again.setup("fit")
    torch.testing.assert_close(dm.train_dataset.tensors[0], again.train_dataset.tensors[0])
    assert not torch.equal(dm.train_dataset.tensors[0][:8], dm.val_dataset.tensors[0][:8])
    # labels are learnable: nearest class mean (from train) classifies val almost perfectly
    xt, yt = dm.train_dataset.tensors
    means = torch.stack([xt[yt == c].mean(0) for c in range(4)]).flatten(1)
    xv, yv = dm.val_dataset.tensors
    pred = torch.cdist(xv.flatten(1), means).argmin(1)
    assert (pred == yv).float().mean() > 0.9
    big = FakeDataModule(image_size=None)
    big.set_data_config(MODEL_CFG)
    big.setup("fit")
    assert big.train_dataset.tensors[0].shape == (64, 3, 64, 64)
    assert not big.train_dataloader().drop_last  # 64 samples, batch 64
