"""BiFormer: equality with the official outputs, checkpoint loading, sizes, dense use, efficient attention."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from visionzoo.errors import CheckpointError, InputSizeError
from visionzoo.models.biformer import BiFormer, checkpoint_filter_fn
from visionzoo.models.layers import BiLevelRoutingAttention

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_bra import ReferenceBiLevelRoutingAttention, use_reference  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "reference" / "biformer" / "reduced_224"
STATE_DICT = FIXTURE / "state_dict.safetensors"
REDUCED = dict(depths=[1, 1, 2, 1], embed_dims=[32, 64, 128, 256])
SMALL = dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 128, 256])  # fastest, still every code path

pytestmark = pytest.mark.timeout(120)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _reduced(**kwargs) -> BiFormer:
    """The fixture model, loaded the documented way (the overlay's num_classes keeps the 10-class head)."""
    kwargs = {**REDUCED, "num_classes": 10, **kwargs}
    overlay = dict(file=str(STATE_DICT), num_classes=10)
    return timm.create_model(
        "biformer_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
    ).eval()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def reduced() -> BiFormer:
    return _reduced()


# ----------------------------------------------------------------------------------------------- numerics
def test_matches_official_outputs(reduced, io):
    with torch.no_grad():
        final, stages = reduced.forward_intermediates(io["x"])
        pre_logits = reduced.forward_head(final, pre_logits=True)
        logits = reduced.forward_head(final)
        assert torch.equal(logits, reduced(io["x"]))
    for i, out in enumerate(stages):
        assert out.shape == io[f"stage{i}"].shape
        assert _rel(out, io[f"stage{i}"]) <= 1e-4, f"stage{i}"
    assert _rel(pre_logits, io["pre_logits"]) <= 1e-4
    assert _rel(logits, io["logits"]) <= 1e-4


def test_routing_matches_official(reduced, io):
    from visionzoo.viz import capture_routing

    official = load_file(str(FIXTURE / "routing.safetensors"))
    ours = capture_routing(reduced, io["x"])
    assert sorted(ours) == sorted(k[: -len(".topk_index")] for k in official if k.endswith(".topk_index"))
    for block, idx in ours.items():
        ref = official[f"{block}.topk_index"]
        assert torch.equal(idx.sort(-1).values, ref.sort(-1).values), block


def test_official_checkpoint_file_layout(tmp_path, reduced, io):
    """A file laid out like an official checkpoint ({'model': fp16 official keys, 'epoch', 'optimizer', ...})."""
    sd = load_file(str(STATE_DICT))
    path = tmp_path / "biformer_reduced_best.pth"
    torch.save(
        {
            "model": sd,
            "epoch": 3,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "lr_scheduler": {"last_epoch": 3},
            "max_accuracy": 12.5,
        },
        path,
    )
    overlay = dict(file=str(path), num_classes=10)  # the cfg-correct way (timm keeps the head itself)
    model = timm.create_model(
        "biformer_tiny", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, **REDUCED
    )
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(io["x"]), reduced(io["x"]))
    # the filter also takes the whole dict itself (e.g. from load_state_dict_from_url)
    direct = checkpoint_filter_fn(torch.load(path, weights_only=True), model)
    assert all(v.dtype != torch.float16 for v in direct.values())
    assert "stages.0.0.attn.qkv.weight" in direct and "stages.0.0.attn.proj.weight" in direct
    assert "stages.0.0.mlp.fc1.weight" in direct and "stages.3.0.attn.qkv.weight" in direct


def test_foreign_keys_raise_one_sentence():
    model = BiFormer(num_classes=10, **REDUCED)
    sd = load_file(str(STATE_DICT))
    sd["backbone.extra.weight"] = torch.zeros(3)
    sd["stages.0.0.attn.kv_proj.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        checkpoint_filter_fn({"model": sd}, model)
    msg = str(err.value)
    assert "'backbone.extra.weight'" in msg and "'stages.0.0.attn.kv_proj.weight'" in msg
    assert "\n" not in msg and msg.endswith(".") and msg.replace("e.g. ", "").count(". ") == 0


def test_wrong_variant_checkpoint_raises():
    with pytest.raises(CheckpointError, match="lacks"):
        checkpoint_filter_fn(
            load_file(str(STATE_DICT)),
            BiFormer(num_classes=10, depths=[1, 1, 3, 1], embed_dims=[32, 64, 128, 256]),
        )
    with pytest.raises(CheckpointError, match="shapes"):
        checkpoint_filter_fn(
            load_file(str(STATE_DICT)),
            BiFormer(num_classes=10, depths=[1, 1, 2, 1], embed_dims=[32, 64, 128, 512]),
        )


def test_pretrained_overlay_in_chans_1_num_classes_5():
    sd = load_file(str(STATE_DICT))
    model = timm.create_model(
        "biformer_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(STATE_DICT)),
        in_chans=1,
        num_classes=5,
        **REDUCED,
    )
    stem = model.state_dict()["downsample_layers.0.0.weight"]
    assert stem.shape == (16, 1, 3, 3)
    torch.testing.assert_close(stem, sd["downsample_layers.0.0.weight"].float().sum(1, keepdim=True))
    assert model.head.weight.shape == (5, 256)
    torch.testing.assert_close(
        model.state_dict()["stages.2.1.attn.qkv.weight"], sd["stages.2.1.attn.qkv.qkv.weight"].float()
    )
    with torch.no_grad():
        assert model(torch.randn(1, 1, 112, 112)).shape == (1, 5)


def test_pretrained_cfg():
    model = timm.create_model("biformer_tiny", **SMALL)
    cfg = model.pretrained_cfg
    assert cfg["license"] == "mit" and cfg["paper_ids"] == "arXiv:2303.08810"
    assert cfg["url"].startswith("https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM")
    assert cfg["first_conv"] == "downsample_layers.0.0" and cfg["classifier"] == "head"
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic" and cfg["num_classes"] == 1000
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["input_size"]) == (3, 224, 224)
    assert {"biformer_tiny.in1k", "biformer_small.in1k", "biformer_base.in1k"} <= set(
        timm.list_pretrained("biformer_*")
    )


@pytest.mark.parametrize(
    "name, expected",
    [("biformer_tiny", 13_142_760), ("biformer_small", 25_536_232), ("biformer_base", 56_804_968)],
)
def test_param_counts(name, expected):
    with torch.device("meta"):
        model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected
    assert round(n / 1e6, 1) == {"biformer_tiny": 13.1, "biformer_small": 25.5, "biformer_base": 56.8}[name]


# ----------------------------------------------------------------------------------------------- sizes
def test_auto_pad_leaves_divisible_sizes_unchanged(reduced, io):
    strict = _reduced(auto_pad=False)
    assert reduced.auto_pad, "auto_pad is on by default"
    with torch.no_grad():
        assert torch.equal(reduced(io["x"]), strict(io["x"]))
        _, ours = reduced.forward_intermediates(io["x"])
        _, theirs = strict.forward_intermediates(io["x"])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_default_is_bit_identical_to_no_padding_at_divisible_sizes():
    """The new default (auto_pad=True) at 224 (n_win 7 divides every routing stage) == the old auto_pad=False,
    in eval and in a train-mode forward + backward (same outputs, same gradients)."""
    torch.manual_seed(0)
    default = timm.create_model("biformer_tiny", num_classes=3, **SMALL)
    strict = timm.create_model("biformer_tiny", num_classes=3, auto_pad=False, **SMALL)
    strict.load_state_dict(default.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(default.eval()(x), strict.eval()(x))
    default.train(), strict.train()
    out_d, out_s = default(x), strict(x)
    assert torch.equal(out_d, out_s)
    out_d.sum().backward()
    out_s.sum().backward()
    for (name, p), q in zip(default.named_parameters(), strict.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_non_divisible_size_error_and_auto_pad():
    torch.manual_seed(0)
    model = BiFormer(num_classes=5, auto_pad=False, **SMALL).eval()
    x = torch.randn(1, 3, 250, 300)
    with pytest.raises(InputSizeError) as err:
        model(x)
    msg = str(err.value)
    assert "250x300" in msg and "n_win=7" in msg and "multiples of 112" in msg and "auto_pad=True" in msg
    assert "\n" not in msg
    with pytest.raises(InputSizeError):
        model.forward_intermediates(x)
    padded = BiFormer(num_classes=5, **SMALL).eval()  # the default: auto_pad=True
    padded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert padded(x).shape == (1, 5)
        final, stages = padded.forward_intermediates(x)
    assert [tuple(s.shape[-2:]) for s in stages] == [(63, 75), (32, 38), (16, 19), (8, 10)]


def test_auto_pad_legacy_semantics_match_reference():
    """auto_pad pads the LN1 output with zeros before the projection (legacy), same in both implementations."""
    torch.manual_seed(0)
    eff = BiLevelRoutingAttention(32, num_heads=2, n_win=7, topk=4, auto_pad=True)
    ref = copy.deepcopy(eff)
    ref.__class__ = ReferenceBiLevelRoutingAttention
    x = torch.randn(2, 15, 20, 32)
    torch.testing.assert_close(eff(x), ref(x), rtol=1e-5, atol=1e-6)
    manual = eff.__class__(32, num_heads=2, n_win=7, topk=4)
    manual.load_state_dict(eff.state_dict())
    expected = manual(torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 6)))[:, :15, :20]
    torch.testing.assert_close(eff(x), expected, rtol=1e-5, atol=1e-6)


def test_n_win_kwarg():
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", n_win=4, num_classes=3, auto_pad=False, **SMALL).eval()
    bras = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert len(bras) == 3 and all(m.n_win == 4 for m in bras)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 64)).shape == (1, 3)  # stage maps 32x16, 16x8, 8x4
    with pytest.raises(InputSizeError, match="multiples of 64"):
        model(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="topk"):
        timm.create_model("biformer_tiny", n_win=2, **SMALL)  # 16 routed regions > 2x2


# ----------------------------------------------------------------------------------------------- dense use
def test_features_only_levels_and_strides(io):
    model = timm.create_model(
        "biformer_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(STATE_DICT)),
        features_only=True,
        **REDUCED,
    ).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.module_name() == ["stages.0", "stages.1", "stages.2", "stages.3"]
    with torch.no_grad():
        feats = model(io["x"])
    assert [tuple(f.shape[-2:]) for f in feats] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    for i, f in enumerate(feats):
        assert _rel(f, io[f"stage{i}"]) <= 1e-4
    sub = timm.create_model("biformer_tiny", features_only=True, out_indices=(1, 2), **SMALL)
    assert sub.feature_info.channels() == [64, 128] and len(sub.model.stages) == 3


def test_out_norm_extra_norms(io):
    model = timm.create_model(
        "biformer_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(STATE_DICT)),
        features_only=True,
        out_norm=True,
        **REDUCED,
    ).eval()  # the official checkpoint has no extra_norms: they keep their init (weight 1, bias 0)
    assert len(model.model.extra_norms) == 4
    with torch.no_grad():
        feats = model(io["x"])
    for i, f in enumerate(feats):
        ref = io[f"stage{i}"]
        expected = torch.nn.functional.layer_norm(ref.permute(0, 2, 3, 1), (ref.shape[1],), eps=1e-6).permute(
            0, 3, 1, 2
        )
        assert _rel(f, expected) <= 1e-4


def test_forward_intermediates_prune_and_head_api():
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=7, **SMALL).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inters = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], feats)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert [e.shape[1] for e in early] == [32, 64]
        assert isinstance(model.num_features, int) and model.num_features == model.head_hidden_size == 256
        assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
        model.reset_classifier(4)
        assert model(x).shape == (2, 4) and model.get_classifier().out_features == 4
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
    taken = model.prune_intermediate_layers([0, 1])
    assert taken == [0, 1] and len(model.stages) == 2 and isinstance(model.norm, torch.nn.Identity)
    assert model.num_features == 64


def test_reset_classifier_keeps_train_eval_mode_device_and_dtype():
    model = timm.create_model("biformer_tiny", **SMALL).eval().to(torch.float64)
    model.reset_classifier(3, "max")
    assert not model.head.training and not model.global_pool.training
    assert model.head.weight.dtype == torch.float64
    model.train().reset_classifier(2)
    assert model.head.training


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_prune_intermediate_layers_contract(index):
    """timm's contract: returned indices give the tap, later stages go, norm/head go, num_features follows."""
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    pruned = copy.deepcopy(model)
    take = pruned.prune_intermediate_layers([index], prune_norm=True)
    assert take == [index] and len(pruned.stages) == len(pruned.downsample_layers) == index + 1
    assert isinstance(pruned.norm, torch.nn.Identity) and isinstance(pruned.head, torch.nn.Identity)
    assert (
        pruned.num_classes == 0
        and pruned.num_features == pruned.head_hidden_size == SMALL["embed_dims"][index]
    )
    with torch.no_grad():
        torch.testing.assert_close(
            pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0], taps[index]
        )
        torch.testing.assert_close(pruned.forward_features(x), taps[index])
    pruned.train()
    pruned.forward_features(x).sum().backward()
    assert not [n for n, p in pruned.named_parameters() if p.grad is None]


def test_fx_feature_extraction_any_size_and_strict_mode():
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", **SMALL).eval()
    x = torch.randn(1, 3, 96, 128)  # no stage map divisible by n_win=7: padded inside each attention
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    plain = create_feature_extractor(model, return_nodes=["stages.1", "stages.3"])  # torchvision's own tracer
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    timm_traced = create_feature_extractor(
        model, return_nodes=["stages.1", "stages.3"], tracer_kwargs=tracer_kwargs
    )
    fx_net = timm.create_model(
        "biformer_tiny", features_only=True, feature_cls="fx", out_indices=(1, 3), **SMALL
    )
    with torch.no_grad():
        for extractor in (plain, timm_traced):
            out = extractor(x)
            assert torch.equal(out["stages.1"], taps[1]) and torch.equal(out["stages.3"], taps[3])
        assert [f.shape for f in fx_net.eval()(x)] == [taps[1].shape, taps[3].shape]
    strict = create_feature_extractor(
        timm.create_model("biformer_tiny", auto_pad=False, **SMALL).eval(), return_nodes=["stages.3"]
    )
    assert strict(torch.randn(1, 3, 112, 112))["stages.3"].shape == (1, 256, 4, 4)
    with pytest.raises(AssertionError, match="n_win=7"):  # traced: the size check is a torch._assert node
        strict(x)


@pytest.mark.parametrize("auto_pad", [True, False])
def test_torchscript_matches_eager(auto_pad):
    from timm.layers import set_scriptable

    torch.manual_seed(0)
    with set_scriptable(True):
        model = timm.create_model("biformer_tiny", num_classes=4, auto_pad=auto_pad, **SMALL).eval()
    scripted = torch.jit.script(model)
    sizes = [(112, 112), (96, 128)] if auto_pad else [(112, 112)]
    with torch.no_grad():
        for hw in sizes:
            x = torch.randn(2, 3, *hw)
            assert torch.equal(scripted(x), model(x))


def test_group_matcher_and_no_weight_decay():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("biformer_tiny", **SMALL)
    assert model.no_weight_decay() == set()
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=False))
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert groups[0] == [n for n, _ in model.named_parameters() if n.startswith("downsample_layers.0.")]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, 4 stages (+ their downsampling), norm + head
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert len(opt.param_groups) > 4


def test_grad_checkpointing_equal():
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 112, 112)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_a, grads_a = run()
    model.set_grad_checkpointing(True)
    out_b, grads_b = run()
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize(
    "shape, heads, n_win, topk, auto_pad, recompute, dense_ratio",
    [
        ((2, 14, 14, 32), 1, 7, 1, False, True, 4.0),  # gather, topk 1 (stage-1 like)
        ((2, 28, 21, 64), 2, 7, 4, False, True, 4.0),  # gather + recomputed K/V (stage-2 like, non-square)
        ((2, 14, 14, 64), 2, 7, 16, False, True, 4.0),  # dense masked form (stage-3 like: 49 <= 4 * 16)
        ((2, 14, 14, 64), 2, 7, 16, False, False, 0.0),  # forced gather, K/V kept
        ((2, 14, 14, 64), 2, 7, 16, False, True, 0.0),  # forced gather, K/V recomputed
        ((1, 16, 16, 32), 4, 4, 16, False, True, 0.0),  # every region routed, gather
        ((2, 13, 17, 32), 2, 4, 3, True, True, 4.0),  # auto_pad, gather
        ((2, 13, 17, 32), 2, 4, 8, True, True, 4.0),  # auto_pad, dense
    ],
)
def test_efficient_attention_matches_reference(shape, heads, n_win, topk, auto_pad, recompute, dense_ratio):
    torch.manual_seed(0)
    eff = BiLevelRoutingAttention(
        shape[-1],
        num_heads=heads,
        n_win=n_win,
        topk=topk,
        auto_pad=auto_pad,
        recompute_kv=recompute,
        dense_ratio=dense_ratio,
    )
    ref = copy.deepcopy(eff)
    ref.__class__ = ReferenceBiLevelRoutingAttention
    x = torch.randn(shape)
    x_eff, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_eff, out_ref = eff(x_eff), ref(x_ref)
    assert _rel(out_eff, out_ref) <= 1e-5
    grad = torch.randn_like(out_ref)
    out_eff.backward(grad)
    out_ref.backward(grad)
    assert _rel(x_eff.grad, x_ref.grad) <= 1e-5
    for (name, p_eff), p_ref in zip(eff.named_parameters(), ref.parameters()):
        assert _rel(p_eff.grad, p_ref.grad) <= 1e-5, name


def test_reference_swap_whole_model(reduced, io):
    model = use_reference(copy.deepcopy(reduced))
    with torch.no_grad():
        assert _rel(model(io["x"]), io["logits"]) <= 1e-4


def test_scale_is_full_width():
    bra = BiLevelRoutingAttention(256, num_heads=8, n_win=7, topk=16)
    assert bra.scale == 256**-0.5 and bra.router.scale == 256**-0.5


# ----------------------------------------------------------------------------------------------- viz
def test_draw_routing_writes_png(tmp_path):
    from visionzoo.viz import draw_routing

    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", **SMALL)
    image = torch.rand(3, 150, 200)
    path = tmp_path / "routing.png"
    heat = draw_routing(model, image, query_region=(2, 5), path=path, size=(112, 112))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(heat) == [0, 1, 2]
    assert [round(h.sum()) for h in heat.values()] == [1, 4, 16]


def test_benchmark_official_key_mapping_roundtrip(reduced):
    """benchmarks/biformer.py maps our weights back to official names (for timing the official code)."""
    import importlib

    bench = importlib.import_module("biformer")  # benchmarks/biformer.py (benchmarks/ is on sys.path)
    official = load_file(str(STATE_DICT))
    mapped = bench.to_official_state_dict(reduced)
    assert sorted(mapped) == sorted(official)
    assert all(torch.equal(mapped[k].float(), official[k].float()) for k in official)
