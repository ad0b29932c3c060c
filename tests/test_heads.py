"""Dense heads (UPerNet, semantic FPN) and the backbone + head segmenter."""

from __future__ import annotations

import pytest
import timm
import torch

from visionzoo.errors import ConfigError
from visionzoo.heads import FCNHead, FPNHead, UPerHead, build_head
from visionzoo.models.dense import DenseSegmenter, build_from_spec
from visionzoo.tasks.optim import build_optimizer

CHANNELS = [8, 16, 24, 32]
TINY_BIFORMER = dict(
    depths=(1, 1, 1, 1),
    embed_dims=(16, 32, 64, 128),
    head_dim=16,
    n_win=2,
    topks=(1, 2, 4, -2),
    auto_pad=True,
    out_norm=True,
    mhsa_heads=2,
)
TINY_DAVIT = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))


def pyramid(h: int, w: int, batch: int = 2) -> list[torch.Tensor]:
    """Feature maps at strides 4..32 of an ``h×w`` input (ceil division, as strided convs give)."""
    return [torch.randn(batch, c, -(-h // s), -(-w // s)) for c, s in zip(CHANNELS, (4, 8, 16, 32))]


@pytest.mark.parametrize("head_cls", [UPerHead, FPNHead])
@pytest.mark.parametrize("hw", [(64, 64), (72, 40), (36, 52)])
def test_heads_give_logits_at_stride_4(head_cls, hw) -> None:
    head = head_cls(CHANNELS, num_classes=5, channels=16)
    feats = pyramid(*hw)
    out = head(feats)
    assert out.shape == (2, 5, *feats[0].shape[-2:])
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_upernet_structure_follows_the_paper() -> None:
    head = UPerHead(CHANNELS, num_classes=3)  # mmseg defaults: 512 channels, PPM scales 1/2/3/6
    assert head.channels == 512
    assert [s[0].output_size for s in head.ppm.stages] == [1, 2, 3, 6]
    assert len(head.lateral_convs) == len(head.fpn_convs) == 3
    assert head.fpn_bottleneck[0].in_channels == 4 * 512
    assert head.classifier.conv_seg.out_channels == 3


def test_fpn_upsampling_branches_per_level() -> None:
    head = FPNHead(CHANNELS, num_classes=3)
    assert [len(b) for b in head.scale_heads] == [1, 1, 2, 3]  # stride 4, 8, 16, 32 -> 4
    assert head.lateral_convs[0].out_channels == 256 and head.scale_heads[0][0][0].out_channels == 128


def test_fcn_aux_head_and_build_head_errors() -> None:
    aux = FCNHead(CHANNELS, num_classes=4, in_index=2, channels=8)
    assert aux(pyramid(64, 64)).shape == (2, 4, 4, 4)
    with pytest.raises(ConfigError, match="unknown"):
        build_head("deeplab", CHANNELS, 3)
    with pytest.raises(ConfigError, match="upernet"):
        build_head("upernet", CHANNELS, 3, channel=8)
    assert isinstance(build_head("fpn", CHANNELS, 3, channels=None), FPNHead)  # None: the head's default


@pytest.mark.parametrize(
    "backbone,kwargs,feature_cls",
    [("biformer_tiny", TINY_BIFORMER, "FeatureGetterNet"), ("davit_tiny", TINY_DAVIT, "FeatureListNet")],
)
@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_dense_segmenter_returns_logits_at_input_size(backbone, kwargs, feature_cls, head) -> None:
    torch.manual_seed(0)
    model = DenseSegmenter(
        backbone,
        head,
        num_classes=4,
        backbone_kwargs=kwargs,
        head_kwargs={"channels": 16},
        aux_head={"channels": 8},
    )
    assert type(model.backbone).__name__ == feature_cls
    assert model.pretrained_cfg["task"] == "segmentation" and model.num_classes == 4
    x = torch.randn(2, 3, 48, 80)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == aux.shape == (2, 4, 48, 80)
    (logits.mean() + aux.mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    model.eval()
    assert model(x).shape == (2, 4, 48, 80)
    assert timm.data.resolve_model_data_config(model)["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_biformer_dense_kwargs_reach_the_backbone() -> None:
    model = DenseSegmenter(
        "biformer_tiny",
        "upernet",
        3,
        backbone_kwargs={**TINY_BIFORMER, "n_win": 4},
        head_kwargs={"channels": 8},
        aux_head=None,
    )
    inner = model.backbone.model
    assert inner.n_win == 4 and inner.auto_pad and inner.extra_norms is not None
    assert model.aux_head is None
    with pytest.raises(ValueError, match="auxiliary"):
        model.eval()(torch.randn(1, 3, 64, 64), return_aux=True)


def test_upernet_batch_of_one_in_training() -> None:
    with pytest.raises(ValueError, match="groupnorm"):
        UPerHead(CHANNELS, 3, channels=16).train()(pyramid(64, 64, batch=1))
    head = UPerHead(CHANNELS, 3, channels=16, norm_layer="groupnorm").train()
    assert head(pyramid(64, 64, batch=1)).shape == (1, 3, 16, 16)


def test_layer_decay_groups_backbone_and_puts_head_last() -> None:
    model = DenseSegmenter(
        "biformer_tiny", "upernet", 3, backbone_kwargs=TINY_BIFORMER, head_kwargs={"channels": 8}
    )
    opt = build_optimizer(model, {"opt": "adamw", "lr": 1e-3, "layer_decay": 0.5})
    by_param = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    stem = by_param[id(names["backbone.model.downsample_layers.0.0.weight"])]
    head = by_param[id(names["decode_head.classifier.conv_seg.weight"])]
    assert stem < head == 1.0
    # a FeatureListNet backbone hides the classifier's layer groups: one sentence, with the fix
    davit = DenseSegmenter("davit_tiny", "fpn", 3, backbone_kwargs=TINY_DAVIT, head_kwargs={"channels": 8})
    with pytest.raises(ConfigError, match="feature_cls=getter"):
        build_optimizer(davit, {"lr": 1e-3, "layer_decay": 0.5})
    davit = DenseSegmenter(
        "davit_tiny",
        "fpn",
        3,
        backbone_kwargs={**TINY_DAVIT, "feature_cls": "getter"},
        head_kwargs={"channels": 8},
    )
    assert build_optimizer(davit, {"lr": 1e-3, "layer_decay": 0.5}).param_groups


def test_build_from_spec_rebuilds_the_same_architecture() -> None:
    spec = {
        "type": "dense",
        "backbone": "davit_tiny",
        "head": "fpn",
        "num_classes": 3,
        "backbone_kwargs": TINY_DAVIT,
        "head_kwargs": {"channels": 8, "head_channels": 8},
        "aux_head": None,
        "pretrained": False,
    }
    a, b = build_from_spec(spec), build_from_spec(spec)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ConfigError):
        build_from_spec({"type": "onnx"})


def test_non_feature_backbone_fails_in_one_sentence() -> None:
    with pytest.raises((ConfigError, RuntimeError)):
        DenseSegmenter("not_a_model_name", "upernet", 3)


@pytest.mark.parametrize("height,width", [(7, 10), (13, 3), (5, 2), (16, 16), (1, 9)])
def test_export_form_of_adaptive_pooling_equals_the_kernel(height, width):
    """The averaging-matrix form UPerNet's PPM uses while ONNX export traces (dynamic sizes) has torch's bins."""
    import torch.nn.functional as F

    from visionzoo.heads._common import _bin_matrix

    x = torch.randn(2, 3, height, width)
    for s in (1, 2, 3, 6):
        pooled = _bin_matrix(height, s, x) @ x @ _bin_matrix(width, s, x).transpose(0, 1)
        torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, s), rtol=1e-6, atol=1e-6)
