"""DDP evaluation equals one process: the same checkpoint tested on 2 gloo ranks (``trainer=ddp_cpu``) and in one.

The evaluation sets have odd sizes, so Lightning's padding sampler would evaluate a sample twice; the loaders'
unpadded shards, per-sample loss sums and the Re-ID gather in rank order must give the single-process numbers.
The fast tests check the pieces (shards, gather order) without processes.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from hydra_helpers import compose_cfg, run_train_cli

from tests.test_reid_data import _img, write_market
from tests.test_resume_exact import SHAPES, reid
from visionzoo.datamodules import DigitsDataModule, samplers
from visionzoo.errors import ConfigError
from visionzoo.train import run


def _digits_test_of_181() -> str:
    """181 test images (3 batches of 64: 2 + 1 on two ranks), whether test is its own part of the digits or val."""
    own_part = "test_fraction" in inspect.signature(DigitsDataModule).parameters
    return f"data.{'test' if own_part else 'val'}_fraction=0.1005"


DIGITS = [
    "trainer=cpu",
    "logger=csv",
    "data.image_size=16",
    _digits_test_of_181(),
    "+trainer.limit_train_batches=3",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
]


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(samplers, "process_share", lambda: (rank, world))


@pytest.mark.parametrize(("n", "batch", "world"), [(181, 64, 2), (7, 2, 2), (7, 4, 3), (3, 8, 3), (10, 3, 4)])
def test_eval_shards_are_whole_batches_each_sample_once(monkeypatch, n: int, batch: int, world: int) -> None:
    shards = []
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        shards.append(list(samplers.EvalShardSampler(n, batch)))
    assert sum(shards, []) == list(range(n))  # concatenated in rank order: file order, nothing twice
    assert all(shards)  # every process has something to evaluate
    if -(-n // batch) >= world:  # enough batches: every shard starts on a single-process batch boundary
        assert all(s[0] % batch == 0 for s in shards)


def test_eval_shards_refuse_fewer_samples_than_processes(monkeypatch) -> None:
    _as_rank(monkeypatch, 0, 4)
    with pytest.raises(ConfigError, match="fewer devices"):
        samplers.EvalShardSampler(3, 1)


def test_train_shares_are_disjoint_and_equal_length(monkeypatch) -> None:
    shares = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        s = samplers.EpochShuffleSampler(11, seed=3)
        s.set_epoch(1)
        shares.append([int(i) for i in s])
        assert len(shares[-1]) == len(s) == 6
    assert set(shares[0]) | set(shares[1]) == set(range(11))


def _compare(single: dict[str, float], ddp: dict[str, float], prefix: str = "test/") -> None:
    keys = sorted(k for k in single if k.startswith(prefix))
    assert keys and keys == sorted(k for k in ddp if k.startswith(prefix))
    for key in keys:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6, nan_ok=True), (key, single[key], ddp[key])


def _single_and_ddp(tmp_path: Path, common: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Train briefly in one process, then test its last.ckpt in one process and on two gloo ranks."""
    run(compose_cfg([*common, "test=false"], tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    single = run(compose_cfg([*common, "train=false", f"ckpt_path={ckpt}"], tmp_path / "single"))
    proc = run_train_cli(
        [*common, "trainer=ddp_cpu", "train=false", f"ckpt_path={ckpt}"], cwd=tmp_path / "ddp", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # really two processes
    ddp = json.loads(next((tmp_path / "ddp" / "logs").rglob("metrics.json")).read_text())
    counted = json.loads((tmp_path / "single" / "metrics.json").read_text()).get("_metrics_from", {})
    for prefix, info in counted.items():  # images evaluated (summed over ranks): each once, none repeated
        if isinstance(info, dict) and "evaluated" in info:
            assert ddp["_metrics_from"][prefix]["evaluated"] == info["evaluated"], prefix
    return single, ddp


@pytest.mark.slow
def test_classification_ddp_equals_one_process(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    single, ddp = _single_and_ddp(tmp_path, DIGITS)
    _compare(single, ddp)
    correct = single["test/acc1"] * 181
    assert abs(correct - round(correct)) < 1e-4 and round(correct) == round(ddp["test/acc1"] * 181)


@pytest.mark.slow
def test_segmentation_ddp_equals_one_process(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    common = [*SHAPES, "data.num_val_samples=7", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"]
    common = [c for c in common if c != "test=false"]
    single, ddp = _single_and_ddp(tmp_path, common)
    _compare(single, ddp)


@pytest.mark.slow
def test_reid_ddp_equals_one_process(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    base = write_market(tmp_path / "data")
    _img(
        base / "bounding_box_test" / "0003_c1s1_000501_01.jpg", 7
    )  # 2 queries + 5 gallery: 4 + 3 on two ranks
    common = [c for c in reid(tmp_path / "data") if c != "test=false"]
    common = [*common, "data.eval_batch_size=2", "trainer.max_epochs=1", "data.num_workers=0"]
    single, ddp = _single_and_ddp(tmp_path, common)
    _compare(single, ddp)
