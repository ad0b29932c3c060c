"""ViT + frozen LLM layer (visionzoo/models/vit_llm.py, visionzoo/models/layers/llm_block.py).

A tiny random LLaMA (hidden 64, 2 layers, 4 heads) is saved locally as sharded safetensors; no hub access.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra_helpers import compose_cfg
from torch import nn

from visionzoo.models.layers import llm_block
from visionzoo.models.layers.llm_block import FrozenLLMBlock, load_llm_layer, read_layer_state_dict
from visionzoo.tasks.optim import build_optimizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.timeout(300)

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
TINY_LLM = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        rms_norm_eps=1e-6,
        vocab_size=32,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norm weights so a wrong load shows
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
            layer.self_attn.q_proj.weight.mul_(15.0)  # peaky attention: token order and positions matter
            layer.self_attn.k_proj.weight.mul_(15.0)
            layer.self_attn.v_proj.weight.mul_(10.0)  # and an attention branch that is not negligible
            layer.self_attn.o_proj.weight.mul_(10.0)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, max_shard_size="20KB", safe_serialization=True)
    return path


def _hf_layer(path: Path, index: int) -> nn.Module:
    model = transformers.LlamaForCausalLM.from_pretrained(path)
    return model.model.layers[index]


def _model(path: Path | None = None, **kwargs) -> nn.Module:
    extra = {"llm_path": str(path)} if path else {"llm_config": TINY_LLM}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model("vit_tiny_llm", **TINY_VIT, **extra, **kwargs)


# --------------------------------------------------------------------------------------------- loading
def test_checkpoint_is_sharded(tiny_llama):
    index = json.loads((tiny_llama / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3


class _Spy:
    """Wraps safetensors.safe_open: records opened files and every key read."""

    def __init__(self, real):
        self.real, self.files, self.keys = real, [], []

    def __call__(self, filename, *args, **kwargs):
        self.files.append(Path(filename).name)
        handle = self.real(filename, *args, **kwargs)
        spy = self

        class _Handle:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, key):
                spy.keys.append(key)
                return self.f.get_tensor(key)

        return _Handle()


@pytest.mark.parametrize("layer", [None, 0])
def test_reads_only_the_chosen_layer(tiny_llama, monkeypatch, layer):
    spy = _Spy(llm_block.safe_open)
    monkeypatch.setattr(llm_block, "safe_open", spy)
    model = _model(tiny_llama, llm_layer=layer)
    index = 1 if layer is None else layer  # default: the last layer
    weight_map = json.loads((tiny_llama / "model.safetensors.index.json").read_text())["weight_map"]
    wanted = sorted(k for k in weight_map if k.startswith(f"model.layers.{index}."))
    assert sorted(spy.keys) == wanted  # every key of that layer, once, and nothing else
    assert sorted(set(spy.files)) == sorted({weight_map[k] for k in wanted})  # only its shards
    assert len(set(spy.files)) < len(set(weight_map.values()))
    ref = _hf_layer(tiny_llama, index).state_dict()
    got = model.llm.frozen_state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


def test_llm_dtype_and_single_file(tiny_llama, tmp_path):
    state = read_layer_state_dict(tiny_llama, 1, torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    model = _model(tiny_llama, llm_dtype="bfloat16").eval()
    assert all(b.dtype == torch.bfloat16 for b in model.llm.buffers())
    assert model.llm_proj_in.weight.dtype == torch.float32
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # an unsharded checkpoint works the same way
    transformers.LlamaForCausalLM.from_pretrained(tiny_llama).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    single = read_layer_state_dict(tmp_path, 0)
    assert set(single) == set(read_layer_state_dict(tiny_llama, 0))


def test_bad_layer_index_is_one_sentence(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        load_llm_layer(tiny_llama, 5)


def test_random_layer_warns():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        timm.create_model("vit_tiny_llm", **TINY_VIT, llm_config=TINY_LLM)


# --------------------------------------------------------------------------------------------- frozen
def test_llm_layer_is_frozen_and_not_optimized(tiny_llama):
    model = _model(tiny_llama).train()
    assert not list(model.llm.parameters())  # the frozen weights are buffers, not parameters
    llm_params = list(model.llm.buffers())
    assert len(llm_params) == 9 and all(not p.requires_grad for p in llm_params)
    assert not model.llm.layer.training and all(not m.training for m in model.llm.layer.modules())
    assert model.blocks.training and model.llm.training  # the wrapper follows; the layer does not
    optimizer = build_optimizer(model, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in llm_params}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable
    assert id(model.llm_proj_in.weight) in in_opt and id(model.llm_proj_out.weight) in in_opt
    # gradients pass through the frozen layer to the ViT; the layer itself gets none
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert model.llm_proj_in.weight.grad is not None and model.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in llm_params)
    assert all(p.grad is not None for p in model.parameters())  # every parameter gets a gradient
    before = {k: v.clone() for k, v in model.llm.frozen_state_dict().items()}
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.llm.frozen_state_dict().items())
    model.requires_grad_(True)  # cannot unfreeze buffers
    assert not any(b.requires_grad for b in model.llm.buffers())


# --------------------------------------------------------------------------------------------- attention
def _block(path: Path, **kwargs) -> FrozenLLMBlock:
    layer, config = load_llm_layer(path)
    return FrozenLLMBlock(layer, head_dim=config.hidden_size // config.num_attention_heads, **kwargs)


def test_attention_is_bidirectional(tiny_llama):
    block = _block(tiny_llama)
    torch.manual_seed(0)
    x = torch.randn(1, 10, 64)
    y = x.clone()
    y[:, -1] = 3 * torch.randn(64)  # change only the LAST token
    with torch.no_grad():
        a, b = block(x), block(y)
    # under a causal mask the first token could not see the last one
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3
    block.layer.self_attn.is_causal = True  # control: the check above fails with the causal mask
    with torch.no_grad():
        a, b = block(x), block(y)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)


def test_rotary_is_off(tiny_llama):
    """Permuting tokens permutes the outputs (no position information inside the layer)."""
    block = _block(tiny_llama)
    torch.manual_seed(0)
    x = torch.randn(2, 12, 64)
    perm = torch.randperm(12)
    with torch.no_grad():
        out, out_perm = block(x), block(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)
    # the same check fails when the layer gets real rotary embeddings (the test is sensitive to RoPE)
    config = transformers.AutoConfig.from_pretrained(tiny_llama)
    rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    pos = torch.arange(12)[None]
    with torch.no_grad():
        r = block.layer(x, attention_mask=None, position_embeddings=rope(x, pos))
        r_perm = block.layer(x[:, perm], attention_mask=None, position_embeddings=rope(x, pos))
    assert (r_perm - r[:, perm]).abs().max() > 1e-2


def test_matches_a_hand_written_bidirectional_llama_layer(tiny_llama):
    block = _block(tiny_llama, out_norm=True)
    p = block.frozen_state_dict()
    eps, heads = 1e-6, 4

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * (w if w is not None else 1)

    torch.manual_seed(1)
    x = torch.randn(2, 9, 64)
    B, N, C = x.shape
    h = rms(x, p["input_layernorm.weight"])
    q, k, v = (
        (h @ p[f"self_attn.{n}_proj.weight"].T).view(B, N, heads, C // heads).transpose(1, 2) for n in "qkv"
    )
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
    x1 = x + a @ p["self_attn.o_proj.weight"].T
    h = rms(x1, p["post_attention_layernorm.weight"])
    ffn = (F.silu(h @ p["mlp.gate_proj.weight"].T) * (h @ p["mlp.up_proj.weight"].T)) @ p[
        "mlp.down_proj.weight"
    ].T
    ref = rms(x1 + ffn, None)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- ViT equivalence
def test_identity_llm_and_inverse_projections_equal_timm_vit(tiny_llama):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY_VIT, num_classes=10).eval()
    model = _model(tiny_llama, num_classes=10).eval()
    missing, unexpected = model.load_state_dict(vit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("llm.", "llm_proj_")) for k in missing)  # timm's key names
    w = torch.randn(64, 32)
    with torch.no_grad():
        model.llm_proj_in.weight.copy_(w)
        model.llm_proj_out.weight.copy_(torch.linalg.pinv(w))
    model.llm = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), atol=1e-5, rtol=1e-4)


def test_deit_weights_load_through_timm(tiny_llama):
    torch.manual_seed(0)
    vit = timm.create_model("deit_tiny_patch16_224", **TINY_VIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(
            "vit_tiny_llm",
            pretrained=True,
            pretrained_cfg_overlay=dict(state_dict=vit.state_dict()),
            **TINY_VIT,
            llm_path=str(tiny_llama),
        )
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    ref = _hf_layer(tiny_llama, 1).state_dict()
    got = model.llm.frozen_state_dict()
    assert got.keys() == ref.keys()
    for k, v in got.items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_names_do_not_collide_and_full_size_builds_on_meta():
    import visionzoo

    names = {"vit_tiny_llm", "vit_small_llm", "vit_base_llm"}
    assert names <= set(visionzoo.list_models())
    model = timm.create_model("vit_small_llm", device="meta")
    assert model.llm_dim == 4096 and model.embed_dim == 384
    assert sum(b.numel() for b in model.llm.buffers()) == 202_383_360  # LLaMA-7B layer (paper)
    assert not any(k.startswith("llm.") for k in model.state_dict())  # checkpoints hold no frozen weights
    assert model.llm_proj_in.weight.shape == (4096, 384) and model.llm_proj_out.weight.shape == (384, 4096)


# --------------------------------------------------------------------------------------------- training
def test_train_cli_with_tiny_llm(tiny_llama, tmp_path):
    from visionzoo.train import run

    cfg = compose_cfg(
        [
            "model=vit_llm",
            "data=digits",
            "trainer=cpu",
            "logger=csv",
            "callbacks=none",
            "trainer.max_steps=2",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "data.batch_size=8",
            "model.name=vit_tiny_llm",
            f"model.kwargs.llm_path={tiny_llama}",
            "+model.kwargs.depth=2",
            "+model.kwargs.patch_size=8",
        ],
        tmp_path,
    )
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc1"] <= 1.0


def test_experiment_config_composes(tmp_path):
    cfg = compose_cfg(
        ["experiment=vit_small_llama_in1k", "model.kwargs.llm_path=/models/llama-7b-hf"], tmp_path
    )
    assert cfg.model.name == "vit_small_llm" and cfg.model.kwargs.llm_layer == 31
    assert cfg.model.kwargs.llm_dtype == "bfloat16" and cfg.model.kwargs.drop_path_rate == 0.1
    assert cfg.model.optimizer.lr_base == 5e-4 and cfg.model.optimizer.weight_decay == 0.05
    assert cfg.model.scheduler.warmup_epochs == 20 and cfg.model.scheduler.min_lr == 1e-5
    assert cfg.model.mixup.mixup_alpha == 0.8 and cfg.model.mixup.cutmix_alpha == 1.0
    assert cfg.data.train_transform.re_prob == 0.25 and cfg.callbacks.ema.decay == 0.99996


def test_opt_layer_loads_and_is_bidirectional(tmp_path):
    cfg = transformers.OPTConfig(
        hidden_size=64,
        ffn_dim=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=32,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    torch.manual_seed(0)
    transformers.OPTForCausalLM(cfg).save_pretrained(tmp_path, max_shard_size="20KB")
    model = _model(tmp_path, llm_layer=-1).eval()
    assert type(model.llm.layer).__name__ == "OPTDecoderLayer"
    assert not list(model.llm.parameters()) and list(model.llm.buffers())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    x = torch.randn(1, 10, 64)
    y = x.clone()
    y[:, -1] = 3 * torch.randn(64)
    with torch.no_grad():
        assert (model.llm(x)[:, 0] - model.llm(y)[:, 0]).abs().max() > 1e-4


def test_frozen_layer_has_no_dropout_in_train_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(
            "vit_tiny_llm", **TINY_VIT, llm_config={**TINY_LLM, "attention_dropout": 0.5}
        )
    model.train()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.llm(x), model.llm(x), rtol=0, atol=0)
    model.llm.layer.train()  # control: with the layer in train mode the dropout would fire
    with torch.no_grad():
        assert not torch.equal(model.llm(x), model.llm(x))


# --------------------------------------------------------------------------------------------- frozen buffers
def _old_frozen_forward(layer: nn.Module, x: torch.Tensor, head_dim: int, eps: float = 1e-6) -> torch.Tensor:
    """The earlier FrozenLLMBlock.forward, on a transformers layer that still holds ``nn.Parameter`` weights."""
    for module in layer.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    cos = torch.ones(1, x.shape[1], head_dim)
    out = layer(x, attention_mask=None, position_embeddings=(cos, torch.zeros_like(cos)))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + eps)


def test_buffer_layer_equals_the_parameter_layer_exactly(tiny_llama):
    model = _model(tiny_llama).eval()
    hf = _hf_layer(tiny_llama, 1).eval()
    assert list(hf.parameters())  # the reference keeps transformers' parameters
    torch.manual_seed(0)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.llm(x), _old_frozen_forward(hf, x, 16), rtol=0, atol=0)


def test_checkpoint_holds_only_trainable_weights_and_old_files_load(tiny_llama, tmp_path):
    model = _model(tiny_llama).eval()
    state = model.state_dict()
    assert set(state) == {n for n, _ in model.named_parameters()}  # no frozen LLM weights saved
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    # the earlier format held the layer as parameters: 'llm.layer.*' entries
    old = {**state, **{f"llm.layer.{k}": v.clone() for k, v in model.llm.frozen_state_dict().items()}}
    fresh = _model(tiny_llama, pretrained=False).eval()
    fresh.load_state_dict(old, strict=True)  # plain torch load: the entries go into the buffers
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)
    torch.save(old, tmp_path / "old.pth")  # through timm / the zoo's filter: dropped, the layer is llm_path's
    loaded = _model(tiny_llama, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "old.pth")))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), ref, rtol=0, atol=0)


def test_missing_or_unreadable_llm_path_is_one_sentence(tiny_llama, tmp_path):
    from visionzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist or is not a folder") as e:
        _model(tmp_path / "nope")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no readable config.json") as e:
        _model(tmp_path / "empty")
    assert "\n" not in str(e.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama.iterdir():
        (broken / f.name).write_bytes(f.read_bytes()[:64] if f.suffix == ".safetensors" else f.read_bytes())
    with pytest.raises(CheckpointError, match="could not be read") as e:
        _model(broken)
    assert "\n" not in str(e.value)


def test_fx_keeps_the_frozen_block_as_one_leaf(tiny_llama):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _model(tiny_llama).eval()
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    fx = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=tracer)
    called = [n.target for n in fx.graph.nodes if n.op == "call_module"]
    assert "llm" in called and not any(t.startswith("llm.") for t in called)  # nothing traced inside it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fx(x)["head"], model(x), rtol=0, atol=0)


def test_input_size_is_fixed_in_the_cfg_and_dynamic_img_size_works():
    model = _model(dynamic_img_size=True).eval()
    assert model.pretrained_cfg["fixed_input_size"] is True
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 1000)


def test_ddp_skips_broadcasting_the_frozen_layer():
    """DDP would copy the ~200 M frozen values from rank 0 at every forward; they are excluded, nothing else is."""
    from zoo_models import create_small

    from visionzoo.tasks import ClassificationTask
    from visionzoo.tasks.ddp import ignore_static_buffers

    task = ClassificationTask(create_small("vit_tiny_llm"), num_classes=5)
    ignored = ignore_static_buffers(task)
    frozen = {f"model.llm.{n}" for n, _ in task.model.llm.named_buffers()}
    assert ignored and set(ignored) == frozen
    assert set(task._ddp_params_and_buffers_to_ignore) == frozen
    assert not frozen & {n for n, _ in task.named_parameters()}
