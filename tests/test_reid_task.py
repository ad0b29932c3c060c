"""ReIDTask: the batch-hard triplet loss by hand, the multi-step schedule, and a 1-epoch run on a tiny Market layout."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

from tests.hydra_helpers import compose_cfg
from tests.test_reid_data import write_market
from visionzoo.errors import ConfigError
from visionzoo.tasks.reid import WarmupMultiStep, batch_hard_triplet_loss


def test_batch_hard_triplet_loss_hand_computed():
    # 1-D features: ids 0 at {0, 1}, ids 1 at {3, 7}
    feats = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap 1, d_an 3 -> relu(1 - 3 + 0.3) = 0
    # anchor 1: d_ap 1, d_an 2 -> 0
    # anchor 3 (x=3): d_ap 4, d_an 2 -> 2.3 ; anchor 7: d_ap 4, d_an 6 -> 0
    loss = batch_hard_triplet_loss(feats, pids, margin=0.3)
    assert loss.item() == pytest.approx(2.3 / 4, abs=1e-5)
    # margin 2: 1-3+2=0, 1-2+2=1, 4-2+2=4, 4-6+2=0
    assert batch_hard_triplet_loss(feats, pids, margin=2.0).item() == pytest.approx(5.0 / 4, abs=1e-5)
    # soft margin: mean softplus(d_ap - d_an)
    soft = sum(math.log1p(math.exp(d)) for d in (-2.0, -1.0, 2.0, -2.0)) / 4
    assert batch_hard_triplet_loss(feats, pids, margin=0.0).item() == pytest.approx(soft, abs=1e-5)


def test_batch_hard_triplet_loss_skips_anchors_without_positive_and_has_grad():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], requires_grad=True)
    pids = torch.tensor([0, 0, 1])  # anchor 2 has no positive: skipped
    loss = batch_hard_triplet_loss(feats, pids, margin=4.5)  # anchors 0, 1: 1-5+4.5=0.5, 1-4+4.5=1.5
    assert loss.item() == pytest.approx(1.0, abs=1e-5)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    assert batch_hard_triplet_loss(feats, torch.tensor([0, 1, 2])).item() == 0.0


def test_warmup_multistep():
    fn = WarmupMultiStep(steps_per_epoch=10, milestones=(4, 7), gamma=0.1, warmup_steps=20, warmup_ratio=0.01)
    assert fn(0) == pytest.approx(0.01)
    assert fn(10) == pytest.approx(0.01 + 0.99 * 0.5)
    assert fn(20) == pytest.approx(1.0)
    assert fn(39) == pytest.approx(1.0)
    assert fn(40) == pytest.approx(0.1)
    assert fn(70) == pytest.approx(0.01)


def _tiny_overrides(root) -> list[str]:
    return [
        "model=reid_resnet50",
        "data=market1501",
        f"data.root={root}",
        "trainer=cpu",
        "logger=csv",
        "trainer.max_epochs=1",
        "data.batch_size=8",
        "data.num_instances=2",
        "data.eval_batch_size=8",
        "data.num_workers=0",
        "data.image_size=[64,32]",
        "+model.kwargs.layers=[1,1,1,1]",
        "model.attn_positions=[[1,0]]",
        "model.scheduler.warmup_epochs=1",
    ]


def test_reid_run_tiny_market(tmp_path):
    from visionzoo.train import run

    write_market(tmp_path / "data")
    cfg = compose_cfg([*_tiny_overrides(tmp_path / "data"), "model.reid.flip_eval=true"], tmp_path / "out")
    assert cfg.optimized_metric == "val/mAP"
    metrics = run(cfg)
    for key in ("test/mAP", "test/rank1", "test/rank5", "test/rank10", "val/mAP", "val/rank1"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert math.isfinite(metrics["train/loss_epoch"])


def test_reid_run_center_loss_plain_classifier_backbone(tmp_path):
    from visionzoo.train import run

    write_market(tmp_path / "data")
    cfg = compose_cfg(
        [
            *_tiny_overrides(tmp_path / "data"),
            "model.reid.center_loss_weight=0.0005",
            "model.scheduler.name=cosine",
            "test=false",
        ],
        tmp_path / "out",
    )
    with open_dict(cfg):  # a plain timm classifier as the Re-ID backbone
        cfg.model.name = "resnet18"
        cfg.model.kwargs = {"pretrained": False}
    metrics = run(cfg)
    assert 0.0 <= metrics["val/mAP"] <= 1.0


def test_reid_rejects_segmentation_model(tmp_path):
    from visionzoo.train import check_model_data_pairing

    cfg = compose_cfg(["model=herseg", "data=market1501", f"data.root={tmp_path}"], tmp_path / "out")
    with pytest.raises(ConfigError, match="Re-ID dataset"):
        check_model_data_pairing(cfg)


class _FeaturesAsImages(torch.nn.Module):
    """A stand-in Re-ID model whose "images" already are the embeddings."""

    def forward_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def _task_eval_metrics(**task_kwargs) -> dict[str, float]:
    from test_reid_rerank import _hub_example  # tests/ is on sys.path (rootdir conftest)

    from visionzoo.tasks.reid import ReIDTask

    qf, gf, qp, gp, qc, gc = _hub_example()
    task = ReIDTask(_FeaturesAsImages(), num_classes=2, normalize_eval=False, **task_kwargs)
    logged: dict[str, float] = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, value)
    batch = {
        "image": torch.cat([gf[:5], qf, gf[5:]]),  # query in the middle of the gallery
        "pid": torch.tensor([*gp[:5], *qp, *gp[5:]]),
        "camid": torch.tensor([*gc[:5], *qc, *gc[5:]]),
        "is_query": torch.tensor([False] * 5 + [True] + [False] * 5),
    }
    task.validation_step(batch, 0)
    task.on_validation_epoch_end()
    return logged


def test_reid_task_rerank_metrics():
    plain = _task_eval_metrics()
    assert set(plain) == {"val/mAP", "val/rank1", "val/rank5", "val/rank10"}
    assert plain["val/rank1"] == 0.0 and plain["val/mAP"] < 0.7  # wrong nearest neighbour (see _hub_example)
    reranked = _task_eval_metrics(rerank=True, rerank_k1=4, rerank_k2=1, rerank_lambda=0.3)
    assert set(reranked) == set(plain)
    assert reranked["val/rank1"] == 1.0 and reranked["val/mAP"] == pytest.approx(1.0)
    # lambda 1: the original distance alone, same ranking as without re-ranking
    assert _task_eval_metrics(rerank=True, rerank_k1=4, rerank_k2=1, rerank_lambda=1.0) == plain


def test_reid_task_rerank_rejects_bad_settings():
    from visionzoo.tasks.reid import ReIDTask

    with pytest.raises(ConfigError, match="rerank_k1 >= 1"):
        ReIDTask(_FeaturesAsImages(), num_classes=2, rerank=True, rerank_k1=0)
    with pytest.raises(ConfigError, match=r"rerank_lambda in \[0, 1\]"):
        ReIDTask(_FeaturesAsImages(), num_classes=2, rerank=True, rerank_lambda=2.0)


def test_reid_run_tiny_market_rerank(tmp_path):
    from visionzoo.train import run

    write_market(tmp_path / "data")
    cfg = compose_cfg(
        [
            *_tiny_overrides(tmp_path / "data"),
            "model.reid.rerank=true",
            "model.reid.rerank_k1=3",
            "test=false",
        ],
        tmp_path / "out",
    )
    assert cfg.model.reid.rerank_k2 == 6 and cfg.model.reid.rerank_lambda == 0.3
    metrics = run(cfg)
    for key in ("val/mAP", "val/rank1", "val/rank5", "val/rank10"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("model.attn_positions=[layer9.1]", "attention position 'layer9.1' is not of the form 'layerN.j'"),
        ("model.attn_block=foo", "attn_block must be one of lab, se, cbam, eca, nonlocal"),
        ("+model.kwargs.qk_dims=[1,2]", "unexpected keyword argument 'qk_dims'"),
    ],
)
def test_bad_model_kwargs_are_one_config_error(tmp_path, override, says):
    from visionzoo.train import build_model

    cfg = compose_cfg(["model=reid_resnet50", "data=market1501", override], tmp_path / "out")
    with pytest.raises(
        ConfigError, match="model 'reid_resnet50_lab' could not be built from model.kwargs: "
    ) as err:
        build_model(cfg, num_classes=5, data_task="reid")
    assert says in str(err.value)


def test_rerank_of_a_too_large_eval_set_stops_before_training(tmp_path):
    """The tiny layout has more query + gallery images than rerank_max_items=5: the run stops at set-up with one
    sentence (naming the size and the memory), before an epoch of training is spent."""
    from visionzoo.train import run

    write_market(tmp_path / "data")
    cfg = compose_cfg(
        [*_tiny_overrides(tmp_path / "data"), "model.reid.rerank=true", "model.reid.rerank_max_items=5"],
        tmp_path / "out",
    )
    with pytest.raises(
        ConfigError, match=r"re-ranking of the \d+ query \+ gallery images of (val|test)_dataset"
    ) as err:
        run(cfg)
    assert "model.reid.rerank_max_items=5" in str(err.value)
    assert not list((tmp_path / "out").rglob("*.ckpt"))  # nothing was trained
