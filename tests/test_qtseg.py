"""QTSeg: equality with the official outputs, checkpoint formats, sizes, parameter count, timm API."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from zoo_models import perturb_zero_init

from visionzoo.errors import CheckpointError, InputSizeError
from visionzoo.models.qtseg import (
    ChannelAttention,
    QTSeg,
    TokenAttention,
    checkpoint_filter_fn,
    load_official_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "reference" / "qtseg" / "isic_512"
STATE_DICT = FIXTURE / "state_dict.safetensors"
SMALL = dict(width=8, mlp_dim=64)  # 32/64/128 channels, every code path

pytestmark = pytest.mark.timeout(180)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _official(**kwargs) -> QTSeg:
    """The fixture model, loaded the documented way."""
    overlay = dict(file=str(STATE_DICT))
    return timm.create_model("qtseg", pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def _fp32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def model() -> QTSeg:
    return _official()


@pytest.fixture(scope="module")
def outputs(model, io) -> dict:
    with torch.no_grad():
        return model.forward_all(io["x"])


# ----------------------------------------------------------------------------------------------- numerics
def test_matches_official_outputs(outputs, io):
    assert outputs["masks"].shape == (1, 2, 512, 512)
    for key in ("masks", "low_res_masks"):
        assert _rel(outputs[key], io[key]) <= 1e-4, key
        assert (outputs[key] - io[key]).abs().max() <= 1e-5, key
    for i, feat in enumerate(outputs["encoder_features"]):
        ref = io[f"enc{i}"]
        assert feat.shape == ref.shape
        assert _rel(feat, ref) <= 1e-4 and (feat - ref).abs().max() <= 1e-5, f"enc{i}"


def test_mask_embeddings_match_official(outputs):
    """The shared fixture omits mask_embeddings; EXTRA.md: a stride-4 sample + norm/sum from the official code."""
    ref = load_file(str(FIXTURE / "mask_embeddings_stride4.safetensors"))
    emb = outputs["mask_embeddings"]
    assert emb.shape == (1, 64, 256, 256)
    sample = emb[:, :, ::4, ::4]
    assert _rel(sample, ref["mask_embeddings_stride4"]) <= 1e-4
    assert (sample - ref["mask_embeddings_stride4"]).abs().max() <= 1e-4
    assert abs(emb.double().norm().item() / ref["mask_embeddings_norm"].item() - 1) <= 1e-5
    total = ref["mask_embeddings_sum"].item()  # stored as float32 (ulp 0.125 at 1.2e6)
    assert abs(emb.double().sum().item() / total - 1) <= 1e-6


def test_forward_is_forward_all_masks(model, io, outputs):
    with torch.no_grad():
        assert torch.equal(model(io["x"]), outputs["masks"])
        assert torch.equal(model.forward_features(io["x"]), outputs["mask_embeddings"])


def test_explicit_attention_path_matches(io):
    """fused_attn=False (explicit softmax, what FLOP counters see) gives the same outputs."""
    model = _official()
    for m in model.modules():
        if isinstance(m, TokenAttention):
            m.fused_attn = False
    with torch.no_grad():
        out = model.forward_all(io["x"])
    assert _rel(out["masks"], io["masks"]) <= 1e-4
    assert _rel(out["low_res_masks"], io["low_res_masks"]) <= 1e-4


def test_positional_encoding_is_loaded_not_redrawn(model):
    sd = load_file(str(STATE_DICT))
    for i in range(3):
        key = f"mask_decoder.PE_s{i}.positional_encoding_gaussian_matrix"
        assert key in model.state_dict()  # a persistent buffer, like the official one
        torch.testing.assert_close(model.state_dict()[key], sd[key].float(), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_official_checkpoint_layouts(tmp_path, io, outputs):
    """weight_best_*.pt (bare state_dict) and weight_last.pt ({'state_dict_model', optimizer, ...}), float32."""
    sd = _fp32(load_file(str(STATE_DICT)))
    best = tmp_path / "weight_best_dice.pt"
    torch.save(sd, best)
    last = tmp_path / "weight_last.pt"
    torch.save(
        {
            "epoch": 350,
            "epoch_current_step": 29,
            "global_train_step": 10150,
            "global_val_step": 132650,
            "state_dict_model": sd,
            "state_dict_optim_model": {
                "state": {0: {"step": torch.tensor(10150.0), "exp_avg": torch.zeros(3)}},
                "param_groups": [{"lr": 1e-5, "weight_decay": 3e-5, "params": [0]}],
            },
            "state_dict_scheduler_model": {"step_size": 50, "gamma": 0.5, "last_epoch": 350},
            "loss": 0.12,
            "dice": 92.45,
            "iou": 86.92,
            "acc": 97.0,
            "mae": 2.99,
        },
        last,
    )
    for path in (best, last):
        model = timm.create_model(
            "qtseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        ).eval()
        with torch.no_grad():
            assert torch.equal(model(io["x"]), outputs["masks"]), path.name
        loaded = load_official_state_dict(str(path))
        assert set(loaded) == set(sd)
    direct = checkpoint_filter_fn(torch.load(last, weights_only=True), QTSeg())
    assert set(direct) == set(sd) and all(v.dtype != torch.float16 for v in direct.values())


def test_release_zip_through_the_hub(tmp_path):
    """The ISIC release asset is a zip of six checkpoints; the cfg URL's '#member=' picks weight_best_dice.pt."""
    import zipfile

    sd = _fp32(load_file(str(STATE_DICT)))
    url = timm.get_pretrained_cfg("qtseg.isic2016").url
    member = url.split("#member=", 1)[1]
    run = member.rsplit("/", 1)[0] + "/"
    archive = tmp_path / "ISIC2016_v1.0.0.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(run + "cfg.json", "{}")
        zf.writestr("ISIC2016A/mlruns/175423074185018539/meta.yaml", "name: ISIC2016A\n")
        for name in ("weight_best_loss.pt", "weight_best_dice.pt", "weight_last.pt"):
            path = tmp_path / name
            torch.save(sd if name == "weight_best_dice.pt" else {"state_dict_model": {}}, path)
            zf.write(path, run + name)
    overlay = dict(url=f"{archive.as_uri()}#member={member}")
    model = timm.create_model(
        "qtseg", pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=tmp_path / "cache"
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_prefixed_checkpoints_load():
    """``module.`` (DataParallel), ``_orig_mod.`` (torch.compile) and a Lightning task's ``model.`` prefix."""
    sd = load_file(str(STATE_DICT))
    model = QTSeg()
    for prefix in ("module.", "_orig_mod.", "model."):
        out = checkpoint_filter_fn({"state_dict": {prefix + k: v for k, v in sd.items()}}, model)
        assert set(out) == set(model.state_dict())


def test_encoder_only_checkpoint(tmp_path, io):
    """fpn-nano.pth layout: image_encoder keys without the prefix; bridge and decoder keep their fresh init."""
    sd = load_file(str(STATE_DICT))
    enc = {
        k[len("image_encoder.") :]: v.float() if v.is_floating_point() else v
        for k, v in sd.items()
        if k.startswith("image_encoder.")
    }
    path = tmp_path / "fpn-nano.pth"
    torch.save(enc, path)
    torch.manual_seed(3)
    fresh = timm.create_model("qtseg").eval()
    torch.manual_seed(3)
    model = timm.create_model(
        "qtseg.fpn_nano_coco", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    state, fresh_state = model.state_dict(), fresh.state_dict()
    for key, value in state.items():
        if key.startswith("image_encoder."):
            torch.testing.assert_close(value, sd[key].to(value.dtype), rtol=0, atol=0)
        else:
            assert torch.equal(value, fresh_state[key]), key
    with torch.no_grad():
        feats = model.forward_encoder(io["x"])
    for i, f in enumerate(feats):
        assert _rel(f, io[f"enc{i}"]) <= 1e-4
    # a file that is neither a whole model nor the whole encoder
    enc.pop("conv_0.conv.weight")
    with pytest.raises(CheckpointError, match="lacks"):
        checkpoint_filter_fn(enc, QTSeg())


def test_foreign_keys_raise_one_sentence():
    model = QTSeg()
    sd = load_file(str(STATE_DICT))
    sd["model.22.cv2.0.0.conv.weight"] = torch.zeros(3)  # a YOLOv8 detection-head key
    sd["mask_decoder.iou_token.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        checkpoint_filter_fn({"state_dict_model": sd}, model)
    msg = str(err.value)
    assert "'model.22.cv2.0.0.conv.weight'" in msg and "'mask_decoder.iou_token.weight'" in msg
    assert "\n" not in msg and msg.endswith(".") and msg.replace("e.g. ", "").count(". ") == 0


def test_wrong_configuration_raises():
    sd = load_file(str(STATE_DICT))
    with pytest.raises(CheckpointError, match="lacks") as err:
        checkpoint_filter_fn(sd, QTSeg(mask_depths=(1, 2, 4)))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="shapes") as err:
        checkpoint_filter_fn(sd, QTSeg(mlp_dim=1024))
    assert "\n" not in str(err.value)


def test_other_num_classes_and_in_chans(io):
    """num_classes=3: fresh query tokens + token MLPs, everything else loaded; in_chans=1: timm sums the stem."""
    sd = load_file(str(STATE_DICT))
    model = _official(num_classes=3, in_chans=1)
    state = model.state_dict()
    assert state["mask_decoder.mask_tokens.weight"].shape == (3, 256)
    assert len(model.mask_decoder.MLP_s0) == 3
    torch.testing.assert_close(
        state["image_encoder.conv_0.conv.weight"],
        sd["image_encoder.conv_0.conv.weight"].float().sum(1, keepdim=True),
    )
    for key in (
        "mask_decoder.DMAB_s2.layers.0.token_mlp.lin1.weight",
        "bridge.neck_0_1.conv_transpose.weight",
    ):
        torch.testing.assert_close(state[key], sd[key].float(), rtol=0, atol=0)
    with torch.no_grad():
        assert model(io["x"][:, :1]).shape == (1, 3, 512, 512)


def test_same_num_classes_keeps_tokens_when_cfg_differs():
    """A 3-class checkpoint into a 3-class model: timm would drop the cfg's classifier keys (cfg says 2 classes);
    the filter keeps them."""
    torch.manual_seed(0)
    src = QTSeg(num_classes=3, **SMALL)
    model = timm.create_model(
        "qtseg",
        pretrained=True,
        pretrained_cfg_overlay=dict(state_dict=src.state_dict()),
        num_classes=3,
        **SMALL,
    )
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------------- model facts
def test_param_count():
    with torch.device("meta"):
        model = timm.create_model("qtseg")
    count = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("image_encoder", "bridge", "mask_decoder")
    }
    assert count == {"image_encoder": 2_259_536, "bridge": 279_424, "mask_decoder": 6_675_890}
    assert sum(p.numel() for p in model.parameters()) == 9_214_850
    assert len(model.state_dict()) == 614


def test_input_sizes():
    torch.manual_seed(0)
    model = QTSeg(num_classes=2, **SMALL).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, 96, 160))
    assert out["masks"].shape == (2, 2, 96, 160)
    assert out["low_res_masks"].shape == (2, 2, 48, 80)
    assert out["mask_embeddings"].shape == (2, 32, 48, 80)
    assert [tuple(f.shape[1:]) for f in out["encoder_features"]] == [(32, 12, 20), (64, 6, 10), (128, 3, 5)]
    with pytest.raises(InputSizeError) as err:
        model(torch.randn(1, 3, 500, 512))
    msg = str(err.value)
    assert "500x512" in msg and "multiples of 32" in msg and "\n" not in msg
    with pytest.raises(InputSizeError):
        model.forward_intermediates(torch.randn(1, 3, 64, 48), intermediates_only=True)


def test_features_and_intermediates(io):
    model = timm.create_model(
        "qtseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(STATE_DICT)), features_only=True
    ).eval()
    assert model.feature_info.channels() == [64, 128, 256]
    assert model.feature_info.reduction() == [8, 16, 32]
    assert model.feature_info.module_name() == [
        "image_encoder.c2f_15",
        "image_encoder.c2f_18",
        "image_encoder.c2f_21",
    ]
    assert not any(k.startswith(("mask_decoder.", "bridge.")) for k in model.state_dict())
    with torch.no_grad():
        feats = model(io["x"])
    for i, f in enumerate(feats):
        assert _rel(f, io[f"enc{i}"]) <= 1e-4
    sub = timm.create_model("qtseg", features_only=True, out_indices=(0,), **SMALL)
    assert sub.feature_info.channels() == [32] and sub.model.image_encoder.c2f_21 is None
    with torch.no_grad():
        assert [f.shape for f in sub(torch.randn(1, 3, 64, 64))] == [torch.Size([1, 32, 8, 8])]


def test_group_matcher_and_freeze():
    from timm.models import group_parameters

    model = QTSeg(**SMALL)
    names = [n for n, _ in model.named_parameters()]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 4  # stem, encoder, bridge, decoder
    assert sorted(n for g in coarse.values() for n in g) == sorted(names)
    groups = list(coarse.values())
    assert all(n.startswith("image_encoder.") for n in groups[0] + groups[1])
    assert all(n.startswith("bridge.") for n in groups[2]) and all(
        n.startswith("mask_decoder.") for n in groups[3]
    )
    fine = group_parameters(model, model.group_matcher(coarse=False))
    assert sorted(n for g in fine.values() for n in g) == sorted(names)
    assert len(fine) == 1 + 15 + 1 + 4  # stem, 15 encoder layers, bridge, tokens + 3 decoder levels
    last = list(fine.values())[-1]
    assert last and all("_s0." in n for n in last)
    model.freeze_encoder()
    assert all(p.requires_grad == (not n.startswith("image_encoder.")) for n, p in model.named_parameters())
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.parameters())
    assert model.no_weight_decay() == {"mask_decoder.mask_tokens.weight"}


def test_grad_checkpointing_train_step_equal():
    torch.manual_seed(0)
    model = QTSeg(**SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert grads[0]["mask_decoder.DMAB_s0.layers.0.dm_attention.channel_attention.gamma"].abs().item() > 0


def test_reset_classifier():
    """reset_classifier(n): n fresh queries + token MLPs + classifier (MLP_s0), on the model's device / dtype and
    in its train / eval mode."""
    model = QTSeg(**SMALL).eval()
    model.reset_classifier(4)
    classifier = model.get_classifier()
    assert classifier is model.mask_decoder.MLP_s0 and len(classifier) == 4
    assert model.num_classes == 4 and model.mask_decoder.mask_tokens.weight.shape == (4, 128)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    model.to(device="meta", dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    params = list(model.get_classifier().parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.float64 for p in params)
    assert not any(m.training for m in model.modules())


def test_num_classes_zero_gives_features():
    """timm's convention: no classifier -> pooled forward_head(forward_features(x), pre_logits=True); with
    global_pool='' the map. reset_classifier(0) keeps the features bit-identical (the queries stay)."""
    torch.manual_seed(0)
    model = QTSeg(**SMALL).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape == (2, model.num_features, 32, 48) and pre_logits.shape == (2, 32)
        torch.testing.assert_close(pre_logits, features.mean((2, 3)), rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="query tokens"):
            model.forward_head(features)
        model.reset_classifier(0)
        assert model.num_classes == 0 and len(model.get_classifier()) == 0
        assert torch.equal(model(x), pre_logits) and torch.equal(model.forward_features(x), features)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
    for kwargs, shape in ((dict(), (2, 32)), (dict(global_pool=""), (2, 32, 32, 48))):
        headless = timm.create_model("qtseg", num_classes=0, **kwargs, **SMALL).eval()
        assert headless.num_features == headless.head_hidden_size == 32
        assert "mask_decoder.MLP_s0.0.layers.2.weight" not in headless.state_dict()
        with torch.no_grad():
            assert headless(x).shape == shape
    with pytest.raises(ValueError, match="global_pool"):
        QTSeg(global_pool="catavgmax", **SMALL)


def test_num_classes_zero_loads_the_official_decoder(model):
    """create_model(num_classes=0, pretrained) keeps the released queries and decoder: its features are the
    2-class model's; the cfg's classifier keys are the mask classifier's last layers."""
    headless = _official(num_classes=0, global_pool="")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(headless(x), model.forward_features(x))
    for name in timm.get_pretrained_cfg("qtseg").classifier:
        assert name + ".weight" in model.state_dict()


def test_channel_attention_autocast_is_float32():
    """Energies ~1e4 (as with trained-like weights): the autocast path equals the float32 path."""
    torch.manual_seed(0)
    cab = ChannelAttention()
    with torch.no_grad():
        cab.gamma.fill_(0.7)
    x = torch.randn(1, 64, 32, 32) * 3
    ref = cab(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cab(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_pretrained_cfg():
    model = timm.create_model("qtseg", **SMALL)
    cfg = model.pretrained_cfg
    assert cfg["url"].startswith(
        "https://github.com/tpnam0901/QTSeg/releases/download/assets/ISIC2016_v1.0.0.zip"
    )
    assert cfg["paper_ids"] == "arXiv:2412.17241" and cfg["num_classes"] == 2
    assert cfg["first_conv"] == "image_encoder.conv_0.conv"
    assert tuple(cfg["classifier"]) == ("mask_decoder.MLP_s0.0.layers.2", "mask_decoder.MLP_s0.1.layers.2")
    assert tuple(cfg["pool_size"]) == (256, 256) and "min_input_size" not in cfg
    assert tuple(cfg["input_size"]) == (3, 512, 512) and tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    # timm re-validates this dict on reload (local-dir: / hf-hub:) and rejects unknown keys such as 'task'
    assert "task" not in cfg
    assert timm.get_pretrained_cfg("qtseg").task == "segmentation"
    nano = timm.get_pretrained_cfg("qtseg.fpn_nano_coco")
    assert nano.url.endswith("/fpn-nano.pth") and nano.license == "agpl-3.0"
    assert {"qtseg.isic2016", "qtseg.fpn_nano_coco"} <= set(timm.list_pretrained("qtseg*"))


# ----------------------------------------------------------------------------------------------- FX and pruning
def test_fx_tracing_with_timm_tracer():
    """timm's notrace registry + torchvision's extractor: the graph equals eager, its size check runs as a
    torch._assert node; feature_cls='fx' equals the getter; eager keeps the one-sentence InputSizeError."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = QTSeg(**SMALL).eval()
    x = torch.randn(1, 3, 64, 96)
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    graph = create_feature_extractor(
        model,
        return_nodes={"image_encoder.c2f_21": "enc2", "interpolate": "out"},
        tracer_kwargs=tracer_kwargs,
    )
    with torch.no_grad():
        out = graph(x)
        assert torch.equal(out["out"], model(x))
        assert torch.equal(out["enc2"], model.forward_encoder(x)[2])
        with pytest.raises(AssertionError, match="multiples of 32"):
            graph(torch.randn(1, 3, 64, 80))
        with pytest.raises(InputSizeError, match="64x80"):
            model(torch.randn(1, 3, 64, 80))
    torch.manual_seed(0)
    fx_features = timm.create_model("qtseg", features_only=True, feature_cls="fx", **SMALL).eval()
    with torch.no_grad():
        for a, b in zip(fx_features(x), model.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_prune_intermediate_layers(index):
    """Pruning to level i drops the bridge, decoder and classifier (they need every level): forward_features ends
    at tap i, no module after it is called, reset_classifier accepts only 0 and pooling follows timm."""
    torch.manual_seed(0)
    model = QTSeg(**SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tap = model.forward_intermediates(x, indices=[index], intermediates_only=True)[0]
    assert model.prune_intermediate_layers([index]) == [index]
    assert model.bridge is None and model.mask_decoder is None and model.num_classes == 0
    assert model.num_features == model.head_hidden_size == tap.shape[1]
    assert model.image_encoder.num_levels == index + 1
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), tap) and torch.equal(model(x), tap)
        final, taps = model.forward_intermediates(x, indices=[index])
        assert torch.equal(final, tap) and torch.equal(taps[0], tap)
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), tap.mean((2, 3)))
    with pytest.raises(RuntimeError, match="pruned"):
        model.reset_classifier(2)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_prune_last_level_without_head_keeps_output():
    torch.manual_seed(0)
    model = QTSeg(**SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.prune_intermediate_layers([2], prune_head=False)
        assert torch.equal(model(x), expected)


def test_torchscript_matches_eager():
    """Scriptable (timm's set_scriptable): the scripted model equals eager, with and without the classifier; its
    size check is the torch._assert."""
    from timm.layers import set_scriptable

    torch.manual_seed(0)
    with set_scriptable(True):
        model = timm.create_model("qtseg", **SMALL).eval()
    assert any("gamma" in n for n in perturb_zero_init(model))  # the ChannelAttention branches count
    x = torch.randn(1, 3, 64, 96)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))
        with pytest.raises(Exception, match="multiples of 32"):
            scripted(torch.randn(1, 3, 64, 80))
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(model)(x), model(x))
