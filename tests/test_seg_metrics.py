"""Segmentation metrics against hand-computed confusion matrices, and the losses' ignore_index handling."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.metrics import compute_hausdorff_distance

from visionzoo.errors import ConfigError
from visionzoo.losses import build_loss
from visionzoo.tasks.seg_metrics import (
    HD95,
    ConfusionMetrics,
    VolumeDice,
    hd95_per_class,
    metrics_from_confusion,
    sanitize_class_names,
)

NAN = float("nan")


def assert_values(got: torch.Tensor, want: list[float]) -> None:
    got = got.tolist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, abs=1e-9), (got, want)


def test_metrics_from_a_hand_computed_confusion_matrix() -> None:
    # rows: ground truth, columns: prediction
    cm = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    res = metrics_from_confusion(cm)
    # class 0: TP 5, FP 2, FN 1; class 1: TP 3, FP 1, FN 3; class 2: TP 0, FP 1, FN 0 (predicted, never present)
    assert_values(res["IoU"], [5 / 8, 3 / 7, 0.0])
    assert_values(res["Dice"], [10 / 13, 6 / 10, 0.0])
    assert_values(res["Acc"], [5 / 6, 3 / 6, NAN])
    assert res["mIoU"].item() == pytest.approx((5 / 8 + 3 / 7 + 0) / 3)
    assert res["mDice"].item() == pytest.approx((10 / 13 + 6 / 10 + 0) / 3)
    assert res["mAcc"].item() == pytest.approx((5 / 6 + 3 / 6) / 2)
    assert res["aAcc"].item() == pytest.approx(8 / 12)


def test_class_absent_from_prediction_and_ground_truth_is_excluded_from_the_mean() -> None:
    cm = torch.tensor([[4, 0, 0], [0, 2, 0], [0, 0, 0]])
    res = metrics_from_confusion(cm)
    assert_values(res["IoU"], [1.0, 1.0, NAN])
    assert res["mIoU"].item() == 1.0 and res["mDice"].item() == 1.0
    empty = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert all(math.isnan(empty[k].item()) for k in ("mIoU", "mDice", "aAcc"))


def test_confusion_metric_accumulates_and_honours_ignore_index() -> None:
    metric = ConfusionMetrics(num_classes=3, ignore_index=255)
    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])  # the prediction under the ignored pixel does not count
    metric.update(pred, target)
    metric.update(torch.tensor([2, 2]), torch.tensor([2, 255]))  # a second image of another size
    cm = metric.compute()
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    res = metric.compute_metrics()
    assert_values(res["IoU"], [1 / 3, 2 / 3, 1 / 2])
    assert res["aAcc"].item() == pytest.approx(4 / 6)


def test_ignore_index_inside_the_class_range() -> None:
    metric = ConfusionMetrics(num_classes=3, ignore_index=0)  # e.g. "unlabelled" as class 0
    metric.update(torch.tensor([1, 2, 0, 2]), torch.tensor([0, 0, 2, 2]))
    assert metric.compute().tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 1]]


def test_volume_dice_equals_the_dice_of_the_stacked_volume() -> None:
    torch.manual_seed(0)
    vols = {name: (torch.randint(0, 3, (4, 6, 5)), torch.randint(0, 3, (4, 6, 5))) for name in ("a", "b")}
    metric = VolumeDice(num_classes=3)
    for z in (2, 0, 3, 1):  # slice order does not matter
        for name, (pred, target) in vols.items():
            metric.update(pred[z], target[z], name)
    expected = []
    for pred, target in vols.values():
        per_class = []
        for c in (1, 2):  # foreground only
            p, t = pred == c, target == c
            per_class.append(2 * (p & t).sum().item() / (p.sum() + t.sum()).item())
        expected.append(sum(per_class) / 2)
    assert metric.compute().item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_volume_dice_empty_class_conventions() -> None:
    metric = VolumeDice(num_classes=3, ignore_index=255)
    target = torch.tensor([[1, 1, 0], [0, 255, 0]])
    pred = torch.tensor(
        [[1, 0, 0], [0, 2, 0]]
    )  # class 2 only under the ignored pixel: absent in both -> excluded
    metric.update(pred, target, "v")
    assert metric.compute().item() == pytest.approx(2 / 3)  # class 1: 2*1 / (1 + 2)
    metric.reset()
    metric.update(torch.tensor([0, 2]), torch.tensor([0, 0]), "w")  # class 2 predicted, never present -> 0
    assert metric.compute().item() == 0.0


def test_hd95_matches_monai_and_empty_mask_conventions() -> None:
    target = torch.zeros(20, 24, dtype=torch.long)
    target[4:10, 5:12] = 1
    pred = torch.zeros_like(target)
    pred[5:11, 6:14] = 1
    pred[15, 20] = 2  # class 2: predicted, absent from the ground truth -> the image diagonal
    values = hd95_per_class(pred, target, num_classes=4)
    onehot = lambda m, c: (m == c)[None, None]  # noqa: E731
    want = compute_hausdorff_distance(
        onehot(pred, 1), onehot(target, 1), include_background=True, percentile=95
    )
    assert values[0].item() == pytest.approx(want.item())
    assert values[1].item() == pytest.approx(math.hypot(20, 24))
    assert values[2].item() == 0.0  # class 3: empty in both
    metric = HD95(num_classes=4)
    metric.update(pred, target)
    metric.update(target, target)  # perfect image: 0 for every class
    assert metric.compute().item() == pytest.approx((values.sum().item() + 0) / 6)


def test_hd95_on_volumes_is_computed_on_the_stacked_slices() -> None:
    torch.manual_seed(1)
    target = torch.zeros(5, 16, 16, dtype=torch.long)
    target[1:4, 3:9, 4:10] = 1
    pred = torch.zeros_like(target)
    pred[1:5, 4:10, 4:12] = 1
    metric = HD95(num_classes=2, ignore_index=255)
    for z in (4, 0, 2, 1, 3):
        metric.update(pred[z], target[z], volume_id="case_7", slice_index=z)
    want = compute_hausdorff_distance(
        (pred == 1)[None, None], (target == 1)[None, None], percentile=95, include_background=True
    )
    assert metric.compute().item() == pytest.approx(want.item())


def test_class_names_become_metric_keys() -> None:
    assert sanitize_class_names(["background", "car, auto", "a/b"], 3) == ["background", "car", "a_b"]
    assert sanitize_class_names(None, 2) == ["0", "1"]
    assert sanitize_class_names(["x", "x"], 2) == ["x", "x_1"]


# ------------------------------------------------------------------------------------------------- losses
def _logits_and_target(num_classes: int = 3, ignore: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, 8, 8, requires_grad=True)
    target = torch.randint(0, num_classes, (2, 8, 8))
    if ignore is not None:
        target[:, :3] = ignore
    return logits, target


def test_dice_ce_equals_monai_dice_ce_without_ignored_pixels() -> None:
    logits, target = _logits_and_target()
    ours = build_loss({"name": "dice_ce", "ce_weight": 0.7, "dice_weight": 1.3}, 3, None)(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.7, lambda_dice=1.3)(
        logits, target[:, None]
    )
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)


def test_dice_focal_equals_monai_dice_focal_without_ignored_pixels() -> None:
    logits, target = _logits_and_target()
    ours = build_loss({"name": "dice_focal", "gamma": 1.5, "focal_weight": 0.5}, 3, None)(logits, target)
    monai = DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=1.5, lambda_focal=0.5)(
        logits, target[:, None]
    )
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)
    soft = build_loss({"name": "focal", "focal_softmax": True}, 3, None)(logits, target)
    assert torch.isfinite(soft) and soft.item() != pytest.approx(
        build_loss("focal", 3, None)(logits, target).item()
    )


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "dice_ce", "dice_focal"])
@pytest.mark.parametrize("softmax", [False, True])
def test_every_loss_ignores_ignored_pixels(name: str, softmax: bool) -> None:
    logits, target = _logits_and_target(ignore=255)
    loss_fn = build_loss({"name": name, "focal_softmax": softmax}, 3, 255)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[:, :, :3].abs().max() == 0  # ignored rows get no gradient
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 10  # whatever the model says there
    assert loss_fn(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_all_pixels_ignored_gives_a_finite_zero_gradient_loss() -> None:
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = build_loss({"name": "dice_ce"}, 2, 255)(logits, target)
    assert torch.isfinite(loss)
    loss.backward()


def test_loss_config_errors_and_low_resolution_logits() -> None:
    with pytest.raises(ConfigError, match="lovasz"):
        build_loss({"name": "lovasz"}, 3, None)
    with pytest.raises(ConfigError, match="ce_weigth"):
        build_loss({"name": "ce", "ce_weigth": 1.0}, 3, None)
    with pytest.raises(ConfigError, match="class_weight"):
        build_loss({"name": "ce", "class_weight": [1.0, 2.0]}, 3, None)
    loss = build_loss("ce", 3, None)(
        torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 8, 8))
    )  # logits upsampled
    assert torch.isfinite(loss)
