"""ReIDFolderDataModule on tiny ``ROOT/{train,query,gallery}/<identity>/<image>`` layouts written by the test."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.hydra_helpers import compose_cfg
from tests.test_reid_task import _tiny_overrides
from visionzoo.datamodules import Market1501DataModule, ReIDDataModule, ReIDFolderDataModule
from visionzoo.errors import ConfigError, DatasetError
from visionzoo.tasks.reid_metrics import compute_reid_metrics

TRAIN_IDS = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
)  # relabelled 0..4 in this (sorted) order; one held out for val

# (identity folder, file name) of the query and gallery; cameras in the names
QUERY = [("p01", "p01_c1_0.jpg"), ("p02", "p02_c1_0.jpg"), ("p04", "p04_c2_0.jpg")]
GALLERY = [
    ("p01", "p01_c2_0.jpg"),
    ("p01", "p01_c1_1.jpg"),  # same camera as the query: ignored by the metrics unless cross-set
    ("p02", "p02_c3_0.jpg"),
    ("p03", "p03_c1_0.jpg"),  # gallery-only identity: a distractor in effect, keeps its own pid
    ("p04", "p04_c2_1.jpg"),  # p04's only match is seen by the query's camera
    ("0000", "d_c4_0.jpg"),  # distractor folder: pid 0
    ("-1", "j_c1_0.jpg"),  # junk: dropped
    ("junk", "j_c2_1.jpg"),  # junk: dropped
]


def _img(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), (shade, 255 - shade, 40)).save(path, quality=80)


def write_reid_folder(root: Path, cameras: bool = True) -> Path:
    """5 train ids x 2 cameras (+ junk and distractor folders), the query/gallery above; ``cameras=False`` drops
    the ``_c<n>`` part of every name."""

    def name(n: str) -> str:
        return n if cameras else n.replace("_c", "_v")  # _v1 does not match c(\d+)

    for k, ident in enumerate(TRAIN_IDS):
        for cam in (1, 2):
            _img(root / "train" / ident / name(f"{ident}_c{cam}_0.jpg"), 30 * k + cam)
    _img(root / "train" / "-1" / name("x_c1_0.jpg"), 0)
    _img(root / "train" / "0000" / name("x_c1_1.jpg"), 0)
    for split, items in (("query", QUERY), ("gallery", GALLERY)):
        for i, (ident, fname) in enumerate(items):
            _img(root / split / ident / name(fname), 10 * i)
    (root / "gallery" / "p01" / ".hidden.jpg").write_bytes(b"")
    (root / "gallery" / "p01" / "notes.txt").write_text("x")
    (root / "query" / "readme.txt").write_text("loose non-image files are ignored")
    return root


@pytest.fixture
def reid_root(tmp_path):
    return write_reid_folder(tmp_path / "reid")


def _dm(root, **kw) -> ReIDFolderDataModule:
    return ReIDFolderDataModule(root=root, **{"batch_size": 4, "num_instances": 2, "num_workers": 0, **kw})


def _named(records) -> list[tuple[str, str, int, int]]:
    """``(identity folder, file name, pid, camid)`` of ``(path, pid, camid, ...)`` records."""
    return [(Path(r[0]).parent.name, Path(r[0]).name, r[1], r[2]) for r in records]


def test_records_relabelling_junk_distractors_and_cameras(reid_root):
    dm = _dm(reid_root, val_id_fraction=0)  # no validation hold-out: every train id relabelled
    assert isinstance(dm, ReIDDataModule) and dm.task == "reid"
    assert dm.num_classes == 5 and dm.class_names == list(TRAIN_IDS)
    assert not dm.cross_set
    recs = dm._records
    # train: junk folder dropped, distractor folder kept in the raw records as pid 0, real ids 1..4 by sorted name
    assert sorted({(Path(p).parent.name, pid) for p, pid, _ in recs["train"]}) == [
        ("0000", 0),
        ("alice", 1),
        ("bob", 2),
        ("carol", 3),
        ("dave", 4),
        ("erin", 5),
    ]
    # query/gallery share one numbering by name: p01..p04 -> 1..4; junk folders dropped, 0000 -> 0
    assert _named(recs["query"]) == [
        ("p01", "p01_c1_0.jpg", 1, 1),
        ("p02", "p02_c1_0.jpg", 2, 1),
        ("p04", "p04_c2_0.jpg", 4, 2),
    ]
    assert sorted(_named(recs["gallery"])) == [
        ("0000", "d_c4_0.jpg", 0, 4),
        ("p01", "p01_c1_1.jpg", 1, 1),
        ("p01", "p01_c2_0.jpg", 1, 2),
        ("p02", "p02_c3_0.jpg", 2, 3),
        ("p03", "p03_c1_0.jpg", 3, 1),
        ("p04", "p04_c2_1.jpg", 4, 2),
    ]

    dm.setup("fit")
    train = dm.train_dataset
    assert len(train) == 10  # 5 ids x 2 images, junk and distractor dropped
    assert Counter(train.pids) == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2}
    assert [Path(r[0]).parent.name for r in train.records if r[1] == 2] == ["carol", "carol"]
    assert sorted({r[2] for r in train.records}) == [1, 2]
    assert dm.val_dataset is None  # val_id_fraction=0: no validation split
    val = dm.test_dataset
    assert [r[3] for r in val.records] == [True] * 3 + [False] * 6
    assert all(r[1] != -1 for r in val.records)


def test_identity_names_are_matched_across_splits_not_positions(tmp_path):
    """A query identity missing from the gallery keeps a pid no gallery item has; gallery-only ones are distinct."""
    root = write_reid_folder(tmp_path / "reid")
    _img(root / "query" / "a_only_in_query" / "q_c1_0.jpg", 5)
    dm = _dm(root)
    dm.check()
    q = {Path(p).parent.name: pid for p, pid, _ in dm._records["query"]}
    g = {Path(p).parent.name: pid for p, pid, _ in dm._records["gallery"]}
    assert q["a_only_in_query"] not in g.values()
    assert q["p01"] == g["p01"] and q["p04"] == g["p04"]
    assert g["p03"] not in q.values() and g["p03"] > 0
    assert sorted(q.values()) == [1, 2, 3, 5]  # a_only_in_query, p01, p02, p04 among a..p04 -> 1, 2, 3, 5


def _metrics_with_ideal_features(dm: ReIDFolderDataModule) -> dict[str, float]:
    """Metrics of one-hot-of-pid features: every real match is at distance 0, so only the protocol matters."""
    dm.setup("test")
    recs = dm.test_dataset.records
    pids = torch.tensor([r[1] for r in recs])
    cams = torch.tensor([r[2] for r in recs])
    q = torch.tensor([r[3] for r in recs])
    feats = torch.nn.functional.one_hot(pids, int(pids.max()) + 1).float() + 0.01
    return compute_reid_metrics(feats[q], feats[~q], pids[q], pids[~q], cams[q], cams[~q])


def test_camera_protocol_vs_cross_set(reid_root):
    # cameras parsed: p04's only gallery match has the query's camera -> that query is skipped
    m = _metrics_with_ideal_features(_dm(reid_root))
    assert m["num_valid_queries"] == 2 and m["mAP"] == pytest.approx(1.0) and m["rank1"] == 1.0
    # same files, camera_regex null: cross-set protocol, query camera 0 / gallery camera 1, all 3 queries count
    dm = _dm(reid_root, camera_regex=None)
    assert dm.cross_set
    assert {r[2] for r in dm._records["query"]} == {0} and {r[2] for r in dm._records["gallery"]} == {1}
    m = _metrics_with_ideal_features(dm)
    assert m["num_valid_queries"] == 3 and m["mAP"] == pytest.approx(1.0)


def test_names_without_camera_use_cross_set(tmp_path):
    root = write_reid_folder(tmp_path / "reid", cameras=False)
    dm = _dm(root)
    assert dm.cross_set
    assert {r[2] for r in dm._records["train"]} == {0}
    assert {r[2] for r in dm._records["query"]} == {0} and {r[2] for r in dm._records["gallery"]} == {1}
    assert _metrics_with_ideal_features(dm)["num_valid_queries"] == 3


def test_custom_split_names_regex_and_distractor_names(tmp_path):
    root = tmp_path / "reid"
    for ident in ("0000", "0001"):  # 0000 is a real person here
        for cam in (5, 6):
            _img(root / "bbox_train" / ident / f"cam{cam}-{ident}.png", cam)
    _img(root / "probe" / "0001" / "cam5-q.png", 1)
    _img(root / "bbox_test" / "0001" / "cam6-g.png", 2)
    _img(root / "bbox_test" / "0000" / "cam6-g.png", 3)
    dm = _dm(
        root,
        train_dir="bbox_train",
        query_dir="probe",
        gallery_dir="bbox_test",
        camera_regex=r"cam(\d+)-",
        distractor_names=[],
    )
    assert dm.class_names == ["0000", "0001"]
    assert {r[2] for r in dm._records["train"]} == {5, 6}
    assert sorted((Path(p).parent.name, pid, c) for p, pid, c in dm._records["gallery"]) == [
        ("0000", 1, 6),
        ("0001", 2, 6),
    ]


def test_pk_batches(reid_root):
    dm = _dm(reid_root, image_size=(32, 16))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 16) and batch["image"].dtype == torch.float32
    counts = Counter(batch["pid"].tolist())
    assert len(counts) == 2 and set(counts.values()) == {2}  # P=2 ids x K=2
    assert set(counts) <= {0, 1, 2, 3} and "is_query" not in batch
    assert len(dm.train_dataloader()) == 2  # 4 ids (one of 5 held out for val) x 2 images, 2 ids per batch
    val = next(
        iter(dm.val_dataloader())
    )  # the held-out id: its camera-1 image is the query, camera 2 the gallery
    assert val["is_query"].tolist() == [True, False] and val["camid"].tolist() == [1, 2]
    vb = next(iter(dm.test_dataloader()))
    assert vb["image"].shape == (4, 3, 32, 16)
    assert vb["is_query"].tolist() == [True, True, True, False]
    assert vb["pid"].tolist()[:3] == [1, 2, 4] and vb["camid"].tolist()[:3] == [1, 1, 2]


def test_errors(tmp_path, reid_root):
    layout = "ROOT/train/<identity>/<image>"
    with pytest.raises(DatasetError, match=f"data.root is not set: .*{layout}"):
        _dm(None).check()
    with pytest.raises(DatasetError, match="'.*nope' is not an existing folder"):
        _dm(tmp_path / "nope").check()
    with pytest.raises(
        DatasetError,
        match=r"split folder '.*probe' is missing: expected .*ROOT/probe/<identity>.*data.query_dir",
    ):
        _dm(reid_root, query_dir="probe").check()
    loose = write_reid_folder(tmp_path / "loose")
    (loose / "train" / "bob" / "bob_c1_0.jpg").rename(loose / "train" / "bob_c1_0.jpg")
    with pytest.raises(DatasetError, match=r"'.*bob_c1_0.jpg' is an image directly in the split folder"):
        _dm(loose).check()
    empty_id = write_reid_folder(tmp_path / "empty_id")
    (empty_id / "gallery" / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"identity folder '.*empty' holds no image"):
        _dm(empty_id).check()

    def tiny(name: str, train: str, query: str, gallery: str) -> Path:
        root = tmp_path / name
        for split, ident in (("train", train), ("query", query), ("gallery", gallery)):
            _img(root / split / ident / f"{ident}_c{len(split)}.jpg", 1)
        return root

    no_gallery = tiny("no_gallery", "a", "a", "junk")
    (no_gallery / "gallery" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"'.*gallery' holds no identity folder \(besides junk\)"):
        _dm(no_gallery).check()
    with pytest.raises(
        DatasetError, match=r"'.*train' holds no identity folder besides junk and distractors"
    ):
        _dm(tiny("only_distractors", "distractors", "a", "a")).check()
    with pytest.raises(DatasetError, match=r"no query identity of '.*query' has a folder of the same name"):
        _dm(tiny("no_match", "a", "a", "b")).check()
    # some names carry a camera, some do not
    (reid_root / "gallery" / "p02" / "p02_c3_0.jpg").rename(reid_root / "gallery" / "p02" / "p02_nocam.jpg")
    with pytest.raises(
        DatasetError, match=r"'.*p02_nocam.jpg' has no camera id matching .* while '.*' has one"
    ):
        _dm(reid_root).check()
    assert _dm(reid_root, camera_regex=None).cross_set  # the documented way out
    with pytest.raises(ConfigError, match="has no group"):
        _dm(reid_root, camera_regex=r"c\d+")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        _dm(reid_root, camera_regex="c(")
    with pytest.raises(ConfigError, match="multiple of data.num_instances"):
        _dm(reid_root, batch_size=6, num_instances=4)


def test_market_is_a_reid_datamodule():
    assert issubclass(Market1501DataModule, ReIDDataModule)
    assert not hasattr(ReIDDataModule, "data_dir")


def test_reid_folder_run_tiny(tmp_path):
    from visionzoo.train import run

    root = write_reid_folder(tmp_path / "data")
    overrides = [o if o != "data=market1501" else "data=reid_folder" for o in _tiny_overrides(root)]
    assert "data=reid_folder" in overrides
    cfg = compose_cfg(overrides, tmp_path / "out")
    assert cfg.optimized_metric == "val/mAP" and cfg.data.camera_regex == r"c(\d+)"
    metrics = run(cfg)
    for key in ("test/mAP", "test/rank1", "test/rank5", "test/rank10", "val/mAP", "val/rank1"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert math.isfinite(metrics["train/loss_epoch"])
    # the camera protocol leaves 2 valid queries, each with at most 6 gallery candidates: rank-10 finds both
    assert metrics["test/rank10"] == 1.0
