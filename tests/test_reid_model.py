"""reid_resnet50_lab: timm ResNet-50 keys, attention insertion, comparison blocks, last stride."""

from __future__ import annotations

import pytest
import timm
import torch
from zoo_models import perturb_zero_init

import visionzoo.models  # noqa: F401  (registers the zoo models)
from visionzoo.models.layers.reid_attention import LightweightAttentionBlock, create_reid_attn
from visionzoo.models.reid import parse_attn_positions

SMALL = {"layers": (1, 1, 1, 1)}


def test_resnet50_weights_load_and_lab_starts_as_identity():
    torch.manual_seed(0)
    ref = timm.create_model("resnet50").eval()
    sd = ref.state_dict()
    model = timm.create_model(
        "reid_resnet50_lab", pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd)
    ).eval()
    own = model.state_dict()
    assert {k for k in own if ".attn" not in k} == set(sd)  # timm's key names, plus only the attention blocks
    assert {k.split(".attn")[0] for k in own if ".attn" in k} == {"layer2", "layer3"}
    assert "layer2.attn3.gamma" in own and "layer3.attn5.gamma" in own
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_positions_parsing():
    layers = (3, 4, 6, 3)
    assert parse_attn_positions([(1, -1), "layer3.5", (2, 5)], layers) == [(1, 3), (2, 5)]
    assert parse_attn_positions([], layers) == []
    for bad in [(4, 0), (0, 3), "layer5.0", "stage1.0"]:
        with pytest.raises(ValueError):
            parse_attn_positions([bad], layers)


@pytest.mark.parametrize("block", ["lab", "se", "cbam", "eca", "nonlocal"])
def test_comparison_blocks_insert_and_train(block):
    model = timm.create_model(
        "reid_resnet50_lab", attn_block=block, attn_positions=[(0, 0), "layer3.0"], num_classes=5, **SMALL
    )
    names = [n for n, _ in model.named_children() if n.startswith("layer")]
    assert names == ["layer1", "layer2", "layer3", "layer4"]
    assert [n for n, _ in model.layer1.named_children()] == ["0", "attn0"]
    assert [n for n, _ in model.layer3.named_children()] == ["0", "attn0"]
    assert [n for n, _ in model.layer2.named_children()] == ["0"]
    out = model(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".attn" in n
    )


def test_last_stride_one():
    x = torch.randn(1, 3, 256, 128)
    m2 = timm.create_model("reid_resnet50_lab", num_classes=0, **SMALL).eval()
    m1 = timm.create_model("reid_resnet50_lab", num_classes=0, last_stride=1, **SMALL).eval()
    with torch.no_grad():
        assert m2.forward_features(x).shape[-2:] == (8, 4)
        assert m1.forward_features(x).shape[-2:] == (16, 8)
    assert m1.feature_info[-1]["reduction"] == 16
    feats = timm.create_model("reid_resnet50_lab", features_only=True, last_stride=1, **SMALL)
    assert [f.shape[-1] for f in feats(x)] == [64, 32, 16, 8, 8]  # stem, layer1..4


def test_lab_block_gate_and_cost():
    blk = create_reid_attn("lab", 64)
    assert isinstance(blk, LightweightAttentionBlock)
    x = torch.randn(2, 64, 8, 4)
    torch.testing.assert_close(blk(x), x)  # identity at init
    with torch.no_grad():
        blk.gamma.fill_(1.0)
    y = blk(x)
    assert not torch.allclose(y, x)
    assert torch.all(
        (y / x.where(x.abs() > 1e-6, torch.ones_like(x)) - 1).abs() <= 1 + 1e-5
    )  # gate in (0, 1)
    assert sum(p.numel() for p in blk.parameters()) == 3 + 2 * 49 + 1 + 64
    # against the formula of the module docstring, written out with plain ops
    with torch.no_grad():
        blk.gamma.copy_(torch.linspace(-1, 1, 64))
        c = torch.sigmoid(
            torch.nn.functional.conv1d(x.mean((2, 3))[:, None], blk.channel_conv.weight, padding=1)
        )
        stats = torch.stack([x.mean(1), x.max(1).values], 1)
        s = torch.sigmoid(
            torch.nn.functional.conv2d(stats, blk.spatial_conv.weight, blk.spatial_conv.bias, padding=3)
        )
        expected = x + blk.gamma.view(1, -1, 1, 1) * c.view(2, 64, 1, 1) * s * x
        torch.testing.assert_close(blk(x), expected)
    with pytest.raises(ValueError, match="attn_block"):
        create_reid_attn("foo", 8)


def test_torchscript_with_attention():
    model = timm.create_model("reid_resnet50_lab", num_classes=3, **SMALL).eval()
    assert any("gamma" in n for n in perturb_zero_init(model))  # the lab blocks change the output
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 32)
    torch.testing.assert_close(scripted(x), model(x))


def test_bnneck():
    torch.manual_seed(0)
    sd = timm.create_model("resnet50").state_dict()
    model = timm.create_model(
        "reid_resnet50_lab", pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd), bnneck=True
    )
    assert model.fc.bias is None and not model.neck.bias.requires_grad
    torch.testing.assert_close(model.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    model.reset_classifier(7)
    assert model.fc.bias is None and model.fc.out_features == 7
    x = torch.randn(4, 3, 64, 32)
    pre, post = model.forward_embeddings(x)
    assert pre.shape == post.shape == (4, 2048)
    model.eval()
    with torch.no_grad():
        pre, post = model.forward_embeddings(x)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), post)
        torch.testing.assert_close(post, model.neck(pre))
        assert model(x).shape == (4, 7)
    perturb_zero_init(model)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
    model.reset_classifier(0, "")
    assert isinstance(model.neck, torch.nn.Identity)


@pytest.mark.parametrize("experiment", ["reid_market1501_resnet50_lab", "reid_market1501_resnet50_baseline"])
def test_experiments_start_from_timm_resnet50_hub_weights_offline(tmp_path, monkeypatch, experiment):
    """The experiments start from `hf_hub_id: timm/resnet50.tv_in1k`: with that file in a (here: hand-made)
    Hugging Face cache and the hub offline, the runner's model gets exactly those weights, the attention blocks
    stay the identity and the 751-id classifier is new; without the file the error names the repository."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from tests.hydra_helpers import compose_cfg
    from visionzoo.train import build_model

    torch.manual_seed(3)
    sd = {k: v.contiguous() for k, v in timm.create_model("resnet50").state_dict().items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--resnet50.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(sd, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    cfg = compose_cfg([f"experiment={experiment}", "data.root=/nowhere"], tmp_path / "out")
    model = build_model(cfg, num_classes=751, data_task="reid")
    got = model.state_dict()
    for key, value in sd.items():
        if not key.startswith("fc."):
            assert torch.equal(got[key], value), key
    assert got["fc.weight"].shape == (751, 2048) and "fc.bias" not in got
    gammas = [v for k, v in got.items() if k.endswith(".gamma")]
    if experiment.endswith("_lab"):
        assert model.attn_positions == [(1, 3), (2, 5)] and len(gammas) == 2
        assert all(float(g.abs().max()) == 0.0 for g in gammas)
    else:
        assert model.attn_positions == [] and gammas == []

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(Exception, match="resnet50.tv_in1k"):
        build_model(cfg, num_classes=751, data_task="reid")
