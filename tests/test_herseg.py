"""HER-Seg: equality with the official outputs, checkpoint loading, sizes, unused official weights, timm API."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from visionzoo.errors import CheckpointError, InputSizeError
from visionzoo.models.herseg import _UNUSED_OFFICIAL, HERSeg, checkpoint_filter_fn
from visionzoo.models.layers.linear_attention import LinearAttention
from visionzoo.models.layers.rope import apply_rope_2d, rope_2d_rotations, rope_2d_tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

FIXTURE = ROOT / "tests" / "fixtures" / "reference" / "herseg" / "default_1024"
STATE_DICT = FIXTURE / "state_dict.safetensors"
SMALL = dict(img_size=128)  # the released architecture on an 8x8 token grid

pytestmark = pytest.mark.timeout(180)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _official_sd() -> dict[str, torch.Tensor]:
    return load_file(str(STATE_DICT))


def _not_built(key: str) -> bool:
    """Official keys this model does not have: RoPE tables (recomputed), weights the released forward never uses
    (the prompt encoder's point / mask-prompt weights, hypernetwork MLPs 1-2)."""
    return (
        key.endswith("attn.rope.rotations")
        or bool(_UNUSED_OFFICIAL.match(key))
        or key.startswith(
            ("mask_decoder.output_hypernetworks_mlps.1.", "mask_decoder.output_hypernetworks_mlps.2.")
        )
    )


def _small(seed: int = 0, **kwargs) -> HERSeg:
    torch.manual_seed(seed)
    return timm.create_model("herseg", **{**SMALL, **kwargs})


# ----------------------------------------------------------------------------------------------- numerics
def test_matches_official_outputs():
    """One forward at 1024 (the fixture): masks, low-res masks and encoder tokens equal the official ones."""
    io = load_file(str(FIXTURE / "io.safetensors"))
    model = timm.create_model(
        "herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(STATE_DICT))
    ).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.forward_all(io["x"])
    print(f"herseg 1024 forward: {time.perf_counter() - t0:.2f} s")
    for key in ("masks", "low_res_masks", "enc0"):
        assert out[key].shape == io[key].shape, key
        assert _rel(out[key], io[key]) <= 1e-4, key
    assert (out["masks"] - io["masks"]).abs().max() <= 1e-4
    assert (out["enc0"] - io["enc0"]).abs().max() <= 3e-4


def test_forward_is_forward_all_masks():
    model = _small().eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = model.forward_all(x)
        assert torch.equal(model(x), out["masks"])
        assert torch.equal(model.forward_features(x), out["image_embeddings"])
    assert out["masks"].shape == (2, 1, 128, 128) and out["low_res_masks"].shape == (2, 1, 32, 32)
    assert out["enc0"].shape == (2, 64, 96) and out["image_embeddings"].shape == (2, 256, 8, 8)


def test_rope_tables_equal_official_buffers():
    sd = _official_sd()
    cos, sin = rope_2d_tables(64, 64, 96)
    tables = [v for k, v in sd.items() if k.endswith("attn.rope.rotations")]
    assert len(tables) == 10
    for rot in tables:
        assert torch.equal(cos, rot[..., 0].reshape(4096, 48)) and torch.equal(
            sin, rot[..., 1].reshape(4096, 48)
        )


def _reference_linear_attention(attn: LinearAttention, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The DLA math written out with complex RoPE over an (h, w, C/2) table (the official formulation)."""
    b, n, c = x.shape
    m, d = attn.num_heads, c // attn.num_heads
    q, k = attn.qk(x).chunk(2, -1)
    v = attn.down_proj(torch.nn.functional.silu(attn.up_proj(x)))
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    kk = c // 4
    theta = 1 / (10000 ** (torch.arange(kk) / kk))
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    angles = torch.cat([ii[..., None] * theta, jj[..., None] * theta], -1)  # (h, w, C/2)
    rot = torch.polar(torch.ones_like(angles), angles)

    def rope(t):
        z = torch.view_as_complex(t.reshape(b, h, w, c // 2, 2).contiguous()) * rot
        return torch.view_as_real(z).reshape(b, n, c)

    def heads(t):
        return t.reshape(b, n, m, d).permute(0, 2, 1, 3)

    qr, kr, qh, kh, vh = heads(rope(q)), heads(rope(k)), heads(q), heads(k), heads(v)
    z = 1 / (qh @ kh.mean(-2, keepdim=True).transpose(-2, -1) + 1e-6)
    out = (qr @ ((kr.transpose(-2, -1) * n**-0.5) @ (vh * n**-0.5))) * z
    out = out.transpose(1, 2).reshape(b, n, c)
    return out + attn.lepe(v.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("hw, dim, heads", [((8, 8), 96, 6), ((6, 10), 32, 4)])
def test_linear_attention_matches_complex_reference(hw, dim, heads):
    torch.manual_seed(0)
    attn = LinearAttention(dim, heads)
    x = torch.randn(2, hw[0] * hw[1], dim)
    out = attn(x, hw, rope_2d_rotations(*hw, dim))
    assert _rel(out, _reference_linear_attention(attn, x, *hw)) <= 1e-6


def test_apply_rope_2d_rotates_pairs():
    x = torch.randn(3, 4 * 5, 8)
    cos, sin = rope_2d_tables(4, 5, 8)
    y = apply_rope_2d(x, rope_2d_rotations(4, 5, 8))
    pairs = x.reshape(3, 20, 4, 2)
    real = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 0] * sin + pairs[..., 1] * cos], -1
    )
    torch.testing.assert_close(y, real.reshape(3, 20, 8))
    y_bf16 = apply_rope_2d(x.bfloat16(), rope_2d_rotations(4, 5, 8))  # rotated in float32, cast back
    assert y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf16.float(), y, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(y.reshape(3, 20, 4, 2).norm(dim=-1), x.reshape(3, 20, 4, 2).norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position (0, 0) is not rotated


# ----------------------------------------------------------------------------------------------- sizes
def test_param_count_matches_official():
    """The official count (3.53M) minus the weights its forward never uses (5,964 prompt + 2 x 139,808 MLP)."""
    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["state_dict"]["n_parameters"] == 3_526_364
    with torch.device("meta"):
        model = timm.create_model("herseg")
    n = sum(p.numel() for p in model.parameters())
    unused = sum(
        v.numel() for k, v in _official_sd().items() if _not_built(k) and not k.endswith("rope.rotations")
    )
    assert unused == 5_964 + 2 * 139_808
    assert n == 3_526_364 - unused == 3_240_784
    parts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("image_encoder", "neck", "prompt_encoder", "mask_decoder")
    }
    assert parts == {
        "image_encoder": 957_648,
        "neck": 615_424,
        "prompt_encoder": 256,  # the no-mask embedding (the positional-encoding matrix is a buffer)
        "mask_decoder": 1_947_072 - 2 * 139_808,
    }


@pytest.mark.parametrize("img_size, shape", [(256, (256, 256)), (256, (128, 192)), (1024, (64, 32))])
def test_other_sizes(img_size, shape):
    model = _small(img_size=img_size).eval()
    assert model.pretrained_cfg["input_size"] == (3, img_size, img_size)
    with torch.no_grad():
        out = model.forward_all(torch.randn(1, 3, *shape))
    h, w = shape
    assert out["masks"].shape == (1, 1, h, w) and out["low_res_masks"].shape == (1, 1, h // 4, w // 4)
    assert out["enc0"].shape == (1, h // 16 * w // 16, 96)


def test_save_pretrained_roundtrip(tmp_path):
    """visionzoo.hub's local-dir export (timm records img_size as a pair) rebuilds and reloads the model."""
    from visionzoo import hub

    model = _small(num_classes=2, img_size=(128, 96)).eval()
    assert model.img_size == (128, 96) and model.pretrained_cfg["input_size"] == (3, 128, 96)
    hub.save_pretrained(model, tmp_path)
    again = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert again.img_size == (128, 96) and again.num_classes == 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_bad_input_size_raises():
    model = _small().eval()
    with pytest.raises(InputSizeError) as err:
        model(torch.randn(1, 3, 120, 128))
    msg = str(err.value)
    assert "120x128" in msg and "multiples of 16" in msg and "\n" not in msg


def test_batched_equals_per_sample():
    model = _small().eval()
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_dataparallel_pth_checkpoint(tmp_path):
    """train.py's format: torch.save(model.state_dict()), 'module.'-prefixed after nn.DataParallel."""
    sd = _official_sd()
    path = tmp_path / "modelvab_isic_epoch_7.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = timm.create_model("herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    ours = model.state_dict()
    expected = {k: v for k, v in sd.items() if not _not_built(k)}
    assert sorted(ours) == sorted(expected)
    assert all(torch.equal(ours[k], v.to(ours[k].dtype)) for k, v in expected.items())


def test_bare_state_dict_and_back():
    model = _small(seed=3)
    ours = model.state_dict()
    again = _small(seed=4)
    again.load_state_dict(checkpoint_filter_fn(ours, again))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.items())
    assert len(ours) == 379 - 10 - 15 - 12  # official keys minus RoPE tables, unused prompt weights, MLPs 1-2


def test_foreign_keys_raise_one_sentence():
    model = _small()
    sd = dict(_official_sd())
    sd["image_encoder.extra.weight"] = torch.zeros(1)
    sd["mask_decoder.iou_prediction_head.layers.0.weight"] = torch.zeros(1)  # a SAM decoder has one
    with pytest.raises(CheckpointError) as err:
        checkpoint_filter_fn(sd, model)
    msg = str(err.value)
    assert "'image_encoder.extra.weight'" in msg and "iou_prediction_head" in msg
    assert "\n" not in msg and msg.endswith(".")


def test_missing_and_wrong_shape_raise():
    sd = dict(_official_sd())
    del sd["mask_decoder.transformer.norm_final_attn.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 keys"):
        checkpoint_filter_fn(sd, _small())
    with pytest.raises(CheckpointError, match="shapes"):
        checkpoint_filter_fn(_official_sd(), _small(embed_dim=48))


def test_encoder_only_checkpoint(tmp_path):
    """SAM_PFD_10K.pth layout (image_encoder.* + neck.*, possibly 'module.'): loads under herseg.sam_pfd_10k."""
    sd = _official_sd()
    enc = {f"module.{k}": v for k, v in sd.items() if k.startswith(("image_encoder.", "neck."))}
    path = tmp_path / "SAM_PFD_10K.pth"
    torch.save(enc, path)
    init = _small(seed=5).state_dict()
    torch.manual_seed(5)
    model = timm.create_model(
        "herseg.sam_pfd_10k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL
    )
    assert model.pretrained_cfg["tag"] == "sam_pfd_10k"
    ours = model.state_dict()
    for k, v in ours.items():
        if k.startswith(("image_encoder.", "neck.")):
            assert torch.equal(v, sd[k].float()), k
        else:
            assert torch.equal(v, init[k]), k  # decoder and prompt encoder keep their initialisation
    untagged = HERSeg(img_size=128)  # no encoder-only tag: an encoder-only file is an error, with a hint
    with pytest.raises(CheckpointError, match="herseg.sam_pfd_10k"):
        checkpoint_filter_fn(enc, untagged)
    partial = {k: v for k, v in enc.items() if "layers.3." not in k}  # a truncated encoder still fails
    with pytest.raises(CheckpointError, match="lacks"):
        checkpoint_filter_fn(partial, model)


def test_pretrained_in_chans_and_num_classes():
    """Fine-tuning for 5 classes: everything but the classifier (the per-class hypernetwork MLPs) is loaded; the
    MLPs keep the model's initialisation (timm drops the cfg's classifier, the filter the unused official MLPs)."""
    sd = _official_sd()
    kwargs = dict(in_chans=1, num_classes=5, **SMALL)
    init = _small(seed=7, **kwargs).state_dict()
    torch.manual_seed(7)
    model = timm.create_model(
        "herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(STATE_DICT)), **kwargs
    )
    ours = model.state_dict()
    w = ours["image_encoder.patch_embed.proj.weight"]
    assert w.shape == (96, 1, 16, 16)
    torch.testing.assert_close(w, sd["image_encoder.patch_embed.proj.weight"].float().sum(1, keepdim=True))
    assert len(model.mask_decoder.output_hypernetworks_mlps) == 5
    for k, v in ours.items():
        if k.startswith("mask_decoder.output_hypernetworks_mlps."):
            assert torch.equal(v, init[k]), k
        elif k != "image_encoder.patch_embed.proj.weight":
            assert torch.equal(v, sd[k].float()), k
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5, 64, 64)


def test_pretrained_features_only_num_classes_0():
    """num_classes=0 builds no decoder: an official file loads its encoder + neck, the decoder keys are dropped."""
    sd = _official_sd()
    model = timm.create_model(
        "herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(STATE_DICT)), num_classes=0, **SMALL
    )
    ours = model.state_dict()
    assert model.mask_decoder is None and model.prompt_encoder is None
    assert sorted(ours) == sorted(
        k for k in sd if k.startswith(("image_encoder.", "neck.")) and not _not_built(k)
    )
    assert all(torch.equal(v, sd[k].float()) for k, v in ours.items())


def test_pretrained_cfg():
    model = _small()
    cfg = model.pretrained_cfg
    assert cfg["tag"] == "sam_pfd_10k" and cfg["url"].endswith("/pretrain_weights/SAM_PFD_10K.pth")
    assert cfg["license"] == "apache-2.0" and cfg["paper_ids"] == "arXiv:2504.06205"
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["std"]) == (0.229, 0.224, 0.225)
    assert cfg["num_classes"] == 1 and cfg["first_conv"] == "image_encoder.patch_embed.proj"
    assert timm.list_pretrained("herseg*") == ["herseg.sam_pfd_10k"]
    assert HERSeg.task == "segmentation" and "task" not in cfg
    assert timm.get_pretrained_cfg("herseg").task == "segmentation"
    from visionzoo.train import model_task

    assert model_task("herseg") == "segmentation"


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("num_classes", [1, 3])
def test_every_parameter_gets_a_gradient(num_classes):
    """Only weights the forward uses are built: all trainable, all reached by the output (DDP without
    find_unused_parameters, timm's backward test)."""
    model = _small(num_classes=num_classes).train()
    assert all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 3, 128, 128)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ----------------------------------------------------------------------------------------------- timm API
def test_grad_checkpointing_equal():
    model = _small(drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 128, 128)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_a, grads_a = run()
    model.set_grad_checkpointing(True)
    out_b, grads_b = run()
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    assert sorted(grads_a) == sorted(grads_b)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)


def test_group_matcher_and_no_weight_decay():
    from timm.models import group_parameters
    from timm.optim import create_optimizer_v2

    model = _small()
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert sorted(n for g in groups.values() for n in g) == sorted(names)
    assert sorted(groups[0]) == sorted(n for n in names if n.startswith("image_encoder.patch_embed."))
    last = groups[max(groups)]
    assert sorted(last) == sorted(n for n in names if not n.startswith("image_encoder."))
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # patch embedding, 4 encoder stages, neck + prompt encoder + decoder
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_features_and_intermediates():
    model = _small().eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final)  # the neck on the last stage = the image embedding
    assert [tuple(t.shape) for t in inters] == [(1, 96, 8, 8)] * 4
    feats = timm.create_model("herseg", features_only=True, out_indices=(1, 3), **SMALL)
    assert feats.feature_info.channels() == [96, 96] and feats.feature_info.reduction() == [16, 16]
    assert feats.model.mask_decoder is None and len(feats.model.image_encoder.layers) == 4
    with torch.no_grad():
        assert [tuple(t.shape) for t in feats(x)] == [(1, 96, 8, 8)] * 2


def test_num_classes_0_is_features():
    """timm's convention: num_classes=0 -> pooled (B, num_features) = forward_head(..., pre_logits=True);
    global_pool='' -> the unpooled image embedding at the cfg's pool_size."""
    model = _small().eval()
    x = torch.randn(2, 3, 128, 128)
    cfg = model.pretrained_cfg
    assert cfg["pool_size"] == (8, 8) and model.num_features == model.head_hidden_size == 256
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (2, 256, *cfg["pool_size"])
        torch.testing.assert_close(pre, feats.mean((2, 3)))
        for kwargs in (dict(num_classes=0), dict(num_classes=0, global_pool="")):
            features_only = _small(**kwargs).eval()
            features_only.load_state_dict(checkpoint_filter_fn(model.state_dict(), features_only))
            out = features_only(x)
            assert (
                features_only.mask_decoder is None
                and features_only.get_classifier().__class__.__name__ == "Identity"
            )
            torch.testing.assert_close(
                out, pre if kwargs.get("global_pool") is None else feats, rtol=0, atol=0
            )
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.mask_decoder is None and model.prompt_encoder is None
        torch.testing.assert_close(model(x), pre, rtol=0, atol=0)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), feats, rtol=0, atol=0)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "token")
    with pytest.raises(ValueError, match="num_classes=0"):
        model.forward_all(x)


def test_reset_classifier_device_dtype_mode_and_cfg_classifier():
    with torch.device("meta"):
        model = timm.create_model("herseg").eval()
    sd = model.state_dict()
    classifier = model.pretrained_cfg["classifier"]
    assert classifier and all(f"{c}.weight" in sd for c in classifier)
    assert {f"{c}.{t}" for c in classifier for t in ("weight", "bias")} == {
        k for k in sd if k.startswith("mask_decoder.output_hypernetworks_mlps.")
    }
    model.to(device="meta", dtype=torch.float64)
    trunk = model.mask_decoder.transformer
    model.reset_classifier(3)  # new MLPs, the decoder trunk is kept
    assert model.mask_decoder.transformer is trunk and len(model.get_classifier()) == 3
    model.reset_classifier(0)
    model.reset_classifier(2)  # a fresh decoder
    params = list(model.get_classifier().parameters()) + list(model.mask_decoder.parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.float64 for p in params)
    assert all(not m.training for m in model.modules())
    assert model.num_classes == 2 and model.mask_decoder.num_classes == 2


def _fx_kwargs():
    from timm.layers import get_notrace_functions, get_notrace_modules

    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def test_fx_trace_matches_eager_and_feature_extractors():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _small(num_classes=2).eval()
    x = torch.randn(1, 3, 128, 96)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=_fx_kwargs())
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=_fx_kwargs())
    # torchvision's default tracer (no timm registry): the stage modules feature_info names, NCHW
    plain = create_feature_extractor(
        model, return_nodes={"image_encoder.layers.1": "s1", "mask_decoder": "low"}
    )
    fx_feats = timm.create_model("herseg", features_only=True, feature_cls="fx", **SMALL).eval()
    fx_feats.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        expected = model.forward_all(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        assert torch.equal(next(iter(traced(x).values())), expected["masks"])
        out = plain(x)
        assert torch.equal(out["s1"], taps[1]) and torch.equal(out["low"], expected["low_res_masks"])
        assert [tuple(t.shape) for t in fx_feats(x)] == [(1, 96, 8, 6)] * 4
        with pytest.raises(
            AssertionError, match="multiples of 16"
        ):  # the traced size check stays in the graph
            plain(torch.randn(1, 3, 120, 96))


def test_fx_backward_every_parameter():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _small(num_classes=3).train()
    train_nodes, _ = get_graph_node_names(model, tracer_kwargs=_fx_kwargs())
    traced = create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[train_nodes[-1]],
        tracer_kwargs=_fx_kwargs(),
    )
    next(iter(traced(torch.randn(2, 3, 64, 64)).values())).mean().backward()
    assert [n for n, p in traced.named_parameters() if p.grad is None] == []


def test_not_scriptable_reason_is_true():
    """The recorded reason names what fails: the variadic checkpointing helper / the RoPE rotation (eager), the
    RoPE rotation (the FX graph, where the encoder loop is unrolled)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    from visionzoo.models import model_info

    reason = model_info("herseg").not_scriptable
    assert "TODO" not in reason and "apply_rope_2d" in reason and "gradient-checkpointing" in reason
    model = _small().eval()
    with pytest.raises(
        Exception, match="variable number of arguments|cannot statically infer the expected size"
    ):
        torch.jit.script(model)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=_fx_kwargs())
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=_fx_kwargs())
    with pytest.raises(Exception, match="(?s)cannot statically infer the expected size.*apply_rope_2d"):
        torch.jit.script(traced)


def test_torch_compile_matches_eager():
    model = _small().eval()
    x = torch.randn(1, 3, 64, 96)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(model), backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_benchmark_official_key_mapping_roundtrip():
    """benchmarks/herseg.py hands our weights to the official model under its key names (RoPE tables added)."""
    import importlib

    bench = importlib.import_module("herseg")  # benchmarks/herseg.py (benchmarks/ is on sys.path)
    model = timm.create_model("herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(STATE_DICT)))
    official = {k: v for k, v in _official_sd().items() if not _not_built(k) or k.endswith("rope.rotations")}
    mapped = bench.to_official_state_dict(model)
    assert sorted(mapped) == sorted(
        official
    )  # the official weights its forward never uses are not built here
    assert all(torch.equal(mapped[k], official[k].to(mapped[k].dtype)) for k in official)
