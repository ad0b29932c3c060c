"""Market1501DataModule on a tiny Market-1501 layout written by the test, and the PK sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionzoo.datamodules import Market1501DataModule, PKSampler
from visionzoo.datamodules.reid import MARKET1501_DIRNAME, parse_market_name
from visionzoo.errors import ConfigError, DatasetError

TRAIN_PIDS = (2, 7, 11, 20, 25)  # 5 ids: one is held out for validation, 4 make a P=4 batch


def _img(path: Path, shade: int) -> None:
    Image.new("RGB", (16, 32), (shade, 255 - shade, 40)).save(path, quality=80)


def write_market(root: Path) -> Path:
    """5 train ids x 2 cameras x 2 images (+1 junk); query ids 1, 3; gallery with matches, distractor, junk."""
    base = root / MARKET1501_DIRNAME
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (base / split).mkdir(parents=True)
    for k, pid in enumerate(TRAIN_PIDS):
        for cam in (1, 3):
            for f in range(2):
                _img(base / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{f:06d}_0{f}.jpg", 20 * k + f)
    _img(base / "bounding_box_train" / "-1_c1s1_000001_00.jpg", 0)
    _img(base / "query" / "0001_c1s1_001051_00.jpg", 10)
    _img(base / "query" / "0003_c2s1_000101_00.jpg", 20)
    for name in (
        "0001_c2s1_000201_01.jpg",
        "0001_c1s1_000301_01.jpg",  # same camera as the query: kept here, removed by the metric
        "0003_c4s2_000401_02.jpg",
        "0000_c1s1_000151_01.jpg",  # distractor: kept
        "-1_c1s1_000009_00.jpg",  # junk: dropped
        ".hidden.jpg",
        "readme.txt",
    ):
        path = base / "bounding_box_test" / name
        if name.endswith(".jpg"):
            _img(path, 100)
        else:
            path.write_text("x")
    return base


@pytest.fixture
def market(tmp_path):
    return write_market(tmp_path)


def test_parse_market_name():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_market_name("-1_c6s2_000001_00.jpg") == (-1, 5)
    assert parse_market_name("0000_c3s1_000151_01.jpg") == (0, 2)
    assert parse_market_name("foo.jpg") is None


def test_splits_relabel_and_flags(market, tmp_path):
    for root in (tmp_path, market):  # parent folder or the Market folder itself
        # no validation hold-out here: every train id is relabelled (the hold-out: tests/test_protocols.py)
        dm = Market1501DataModule(root=root, batch_size=4, num_instances=2, num_workers=0, val_id_fraction=0)
        assert dm.task == "reid"
        assert dm.num_classes == len(TRAIN_PIDS)
        assert dm.train_pids == list(TRAIN_PIDS)
        dm.setup("fit")
        train = dm.train_dataset
        assert len(train) == len(TRAIN_PIDS) * 4  # junk dropped
        assert sorted(set(train.pids)) == [0, 1, 2, 3, 4]
        assert dm.val_dataset is None and dm.val_dataloader() == []  # no validation split
        val = dm.test_dataset  # query + gallery
        flags = [r[3] for r in val.records]
        assert flags.count(True) == 2 and flags.count(False) == 4  # junk dropped, distractor kept
        assert sorted(r[1] for r in val.records if not r[3]) == [0, 1, 1, 3]
        assert all(r[1] != -1 for r in val.records)


def test_batches(market):
    dm = Market1501DataModule(root=market, batch_size=4, num_instances=2, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 256, 128) and batch["image"].dtype == torch.float32
    assert batch["pid"].dtype == torch.long
    counts = Counter(batch["pid"].tolist())
    assert len(counts) == 2 and set(counts.values()) == {2}  # P=2 ids x K=2
    assert "is_query" not in batch
    vb = next(iter(dm.test_dataloader()))
    assert vb["image"].shape == (4, 3, 256, 128)
    assert vb["is_query"].tolist() == [True, True, False, False]
    assert vb["pid"].tolist()[:2] == [1, 3] and vb["camid"].tolist()[:2] == [0, 1]


def test_train_transform_recipe(market):
    dm = Market1501DataModule(root=market, image_size=(64, 32))
    names = [type(t).__name__ for t in dm.build_train_transform().transforms]
    assert names == [
        "Resize",
        "RandomHorizontalFlip",
        "Pad",
        "RandomCrop",
        "ToTensor",
        "Normalize",
        "RandomErasing",
    ]
    assert [type(t).__name__ for t in dm.build_eval_transform().transforms] == [
        "Resize",
        "ToTensor",
        "Normalize",
    ]
    dm.set_data_config({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 224, 224)})
    assert dm.mean == (0.5, 0.5, 0.5) and dm.input_size == (3, 64, 32)


def test_pk_sampler_batches_and_determinism():
    pids = [0] * 5 + [1] * 1 + [2] * 4 + [3] * 3 + [4] * 8
    s = PKSampler(pids, batch_size=6, num_instances=2, seed=3)
    order = list(s)
    assert len(order) == len(s) and len(order) % 6 == 0
    for b in range(0, len(order), 6):
        counts = Counter(pids[i] for i in order[b : b + 6])
        assert len(counts) == 3 and set(counts.values()) == {2}
    assert list(PKSampler(pids, 6, 2, seed=3)) == order
    s.set_epoch(1)
    assert list(s) != order or len(set(pids)) < 2
    with pytest.raises(DatasetError, match="identities"):
        PKSampler([0, 0, 1], batch_size=6, num_instances=2)


def test_check_errors(tmp_path, market):
    with pytest.raises(DatasetError, match="not set"):
        Market1501DataModule(root=None).check()
    with pytest.raises(DatasetError, match="not an existing folder"):
        Market1501DataModule(root=tmp_path / "nope").check()
    (market / "query" / "badname.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="does not follow Market-1501 naming"):
        Market1501DataModule(root=market).check()
    (market / "query" / "badname.jpg").unlink()
    for p in (market / "query").iterdir():
        p.unlink()
    (market / "query").rmdir()
    with pytest.raises(DatasetError, match="split folder .* is missing"):
        Market1501DataModule(root=market).check()
    with pytest.raises(ConfigError, match="multiple of data.num_instances"):
        Market1501DataModule(root=market, batch_size=6, num_instances=4)


def test_test_batches_feed_the_metrics(market):
    """Round trip: model embeddings of the test loader -> query/gallery split by flag -> Market-1501 metrics."""
    import timm

    import visionzoo.models  # noqa: F401
    from visionzoo.tasks.reid_metrics import compute_reid_metrics

    dm = Market1501DataModule(root=market, batch_size=4, num_instances=2, num_workers=0, image_size=(64, 32))
    model = timm.create_model("reid_resnet50_lab", layers=(1, 1, 1, 1), num_classes=0, bnneck=True).eval()
    feats, pids, cams, flags = [], [], [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            feats.append(model(b["image"]))
            pids.append(b["pid"])
            cams.append(b["camid"])
            flags.append(b["is_query"])
    f, p, c, q = (torch.cat(t) for t in (feats, pids, cams, flags))
    m = compute_reid_metrics(f[q], f[~q], p[q], p[~q], c[q], c[~q], metric="cosine")
    # query 0001 (cam 0) has one valid match (cam 1); query 0003 (cam 1) one (cam 3); gallery of 4 items
    assert m["num_valid_queries"] == 2
    assert 0.0 < m["mAP"] <= 1.0 and m["rank5"] == 1.0
