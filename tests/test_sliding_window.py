"""Sliding-window inference equals whole-image inference for a pointwise model; config errors in one sentence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionzoo.errors import ConfigError
from visionzoo.inference import SegInferer, build_inferer
from visionzoo.tasks import SegmentationTask


def pointwise_model(num_classes: int = 4) -> nn.Module:
    """1x1 convs only: each output pixel depends on its own input pixel, so window borders change nothing."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)).eval()


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (12, 10)])  # the last is smaller than the window (padded)
def test_slide_equals_whole_for_a_pointwise_model(blend: str, overlap: float, hw: tuple[int, int]) -> None:
    model = pointwise_model()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        whole = build_inferer(None)(model, x)
        slide = build_inferer(
            {"mode": "slide", "roi_size": [16, 24], "overlap": overlap, "blend": blend, "sw_batch_size": 3}
        )(model, x)
    assert slide.shape == whole.shape == (2, 4, *hw)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_differs_for_a_model_with_context() -> None:
    """Sanity check of the test above: with 3x3 zero-padded convs the window borders do matter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        diff = (SegInferer("slide", (16, 16), 0.25, "constant")(model, x) - model(x)).abs().max()
    assert diff > 1e-3


def test_inference_config_errors() -> None:
    with pytest.raises(ConfigError, match="roi_size"):
        build_inferer({"mode": "slide"})
    with pytest.raises(ConfigError, match="mode"):
        build_inferer({"mode": "tiles"})
    with pytest.raises(ConfigError, match="blend"):
        build_inferer({"mode": "slide", "roi_size": 8, "blend": "max"})
    with pytest.raises(ConfigError, match="overlap"):
        build_inferer({"mode": "slide", "roi_size": 8, "overlap": 1.0})
    with pytest.raises(ConfigError, match="stride"):
        build_inferer({"mode": "slide", "stride": 8})
    assert build_inferer({"mode": "slide", "roi_size": 8}).roi_size == (8, 8)


def test_task_metrics_are_the_same_with_slide_and_whole_inference() -> None:
    model = pointwise_model(3)
    torch.manual_seed(1)
    batch = {
        "image": torch.randn(2, 3, 24, 24),
        "mask": torch.randint(0, 3, (2, 24, 24)),
        "orig_mask": [torch.randint(0, 3, (30, 28)), torch.randint(0, 3, (24, 24))],
        "name": ["a", "b"],
    }
    results = []
    for inference in (None, {"mode": "slide", "roi_size": [8, 8], "overlap": 0.5}):
        task = SegmentationTask(model, num_classes=3, inference=inference).eval()
        with torch.no_grad():
            task.validation_step(batch, 0)
        results.append(task.val_cm.compute())
    assert torch.equal(results[0], results[1])
