"""Sparsifiner: DeiT equivalence, sparse == dense_mask, key compatibility, FLOPs, two-phase distillation via train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra_helpers import compose_cfg

import visionzoo  # noqa: F401  (registers the zoo)
from visionzoo.models.layers.sparse_attention import dense_mask_attention, sparse_gather_attention
from visionzoo.models.sparsifiner import Sparsifiner, checkpoint_filter_fn, dense_teacher, sparsifiner_flops
from visionzoo.tasks.distillation import DistillationTask, _phase_lambda

pytestmark = pytest.mark.timeout(300)

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _pair(keep_rate: float = 0.25, num_classes: int = 10) -> tuple[Sparsifiner, torch.nn.Module]:
    torch.manual_seed(0)
    deit = timm.create_model(
        "deit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **SMALL
    ).eval()
    model = timm.create_model("sparsifiner_deit_tiny", num_classes=num_classes, keep_rate=keep_rate, **SMALL)
    model.load_state_dict(checkpoint_filter_fn({"model": deit.state_dict()}, model), strict=True)
    return model.eval(), deit


def test_keep_rate_one_equals_timm_deit():
    model, deit = _pair(keep_rate=1.0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = deit(x)
        for impl in ("sparse", "dense_mask", "dense"):
            model.set_attn_impl(impl)
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5, msg=impl)


def test_sparse_equals_dense_mask_at_quarter_keep():
    model, deit = _pair(keep_rate=0.25)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.set_attn_impl("sparse")
        sparse = model(x)
        model.set_attn_impl("dense_mask")
        masked = model(x)
        assert (sparse - deit(x)).abs().max() > 1e-4, "keep rate 0.25 should change the output"
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-5)


def test_sparse_kernel_matches_mask_forward_and_backward():
    torch.manual_seed(0)
    B, H, N, d, k = 2, 3, 17, 8, 5
    q, kk, v = (torch.randn(B, H, N, d, requires_grad=True) for _ in range(3))
    idx = torch.rand(B, H, N - 1, N).topk(k, dim=-1).indices
    a = sparse_gather_attention(q, kk, v, idx, d**-0.5)
    b = dense_mask_attention(q, kk, v, idx, d**-0.5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), (q, kk, v))
    gb = torch.autograd.grad(b.square().sum(), (q, kk, v))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_default_impl_sparse_in_eval_dense_mask_in_train():
    model, _ = _pair()
    attn = model.blocks[0].attn
    assert model.eval() and attn.resolved_impl() == "sparse"
    assert model.train() and attn.resolved_impl() == "dense_mask"
    model.set_recon(True)
    assert attn.resolved_impl() == "dense"


def test_state_dict_keys_are_deit_keys_plus_predictors():
    with torch.device("meta"):
        ours = timm.create_model("sparsifiner_deit_small").state_dict()
        deit = timm.create_model("deit_small_patch16_224").state_dict()
    extra = sorted(set(ours) - set(deit))
    assert set(deit) <= set(ours)
    assert all(".attn.mask_predictor." in k for k in extra)
    assert {k.rsplit("mask_predictor.", 1)[1] for k in extra} == {
        "proj_c_q.weight",
        "proj_c_q.bias",
        "proj_c_k.weight",
        "proj_c_k.bias",
        "proj_n",
        "proj_back_n",
    }
    per_layer = sum(ours[k].numel() for k in extra if k.startswith("blocks.0."))
    assert per_layer == 16_768  # research notes: 2 x (64*32+32) + 2 x 197*32
    assert tuple(ours["blocks.0.attn.mask_predictor.proj_n"].shape) == (197, 32)


def test_flops_at_official_default():
    with torch.device("meta"):
        model = timm.create_model("sparsifiner_deit_small")
    f = sparsifiner_flops(model)
    assert f["keep"] == 50
    assert f["attn_reduction"] == pytest.approx(1 - (197 + 196 * 50) / 197**2)
    assert 0 < f["attn_with_predictor_reduction"] < f["attn_reduction"]


def test_predictor_frozen_by_default_and_teacher_is_dense_deit():
    model, deit = _pair()
    assert not any(p.requires_grad for p in model.predictor_parameters())
    assert all(p.requires_grad for p in model.backbone_parameters())
    teacher = dense_teacher(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), deit(x))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_two_phases_through_train(tmp_path: Path, monkeypatch):
    from visionzoo.train import run

    seen: dict[str, set[str]] = {}
    losses: dict[str, list[float]] = {}
    original = DistillationTask.training_step

    def on_after_backward(self):
        names = {n for n, p in self.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        seen.setdefault(self.phase, set()).update(names)
        assert not any(p.grad is not None for p in self.teacher.parameters())

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        losses.setdefault(self.phase, []).append(float(loss.detach()))
        return loss

    monkeypatch.setattr(DistillationTask, "on_after_backward", on_after_backward)
    monkeypatch.setattr(DistillationTask, "training_step", training_step)
    kw = ",".join(f"{k}:{v}" for k, v in SMALL.items())
    cfg = compose_cfg(
        [
            "model=sparsifiner",
            "data=fake",
            "trainer=cpu",
            "logger=csv",
            "model.name=sparsifiner_deit_tiny",
            f"+model.kwargs={{{kw}}}",
            "trainer.max_epochs=2",
            "model.distill.recon_epochs=1",
            "model.distill.warmup_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
        ],
        tmp_path,
    )
    metrics = run(cfg)
    assert "test/acc1" in metrics
    pred = {n for n in seen["recon"] | seen["distill"] if ".mask_predictor." in n}
    assert seen["recon"] and seen["recon"] == pred, "phase 1 trains only the predictors"
    assert seen["distill"] and not (seen["distill"] & pred), "phase 2 trains only the backbone"
    assert {"blocks.0.attn.mask_predictor.proj_n", "blocks.1.attn.mask_predictor.proj_back_n"} <= seen[
        "recon"
    ]
    assert {"patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "head.weight"} <= seen["distill"]
    assert len(losses["recon"]) == 2 and len(losses["distill"]) == 2
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())


def test_experiment_config_holds_official_schedule(tmp_path: Path):
    cfg = compose_cfg(["experiment=sparsifiner_deit_small_in1k"], tmp_path)
    assert cfg.model.name == "sparsifiner_deit_small" and cfg.model.task == "distillation"
    assert cfg.trainer.max_epochs == 50 and cfg.model.distill.recon_epochs == 5
    d = cfg.model.distill
    assert (d.recon_lr, d.recon_min_lr, d.lr, d.min_lr, d.weight_decay) == (3e-4, 2e-4, 8e-5, 2e-6, 0.05)
    assert cfg.model.kwargs.keep_rate == 0.25 and cfg.model.mixup.mixup_alpha == 0.8


def test_phase_schedule_warmup_then_cosine_to_floor():
    fn = _phase_lambda(start=10, length=20, warmup=5, min_ratio=0.25)
    assert fn(0) == 0.0 and fn(9) == 0.0  # before its phase
    assert fn(10) == pytest.approx(0.2) and fn(14) == pytest.approx(1.0)  # linear warm-up
    assert fn(15) == pytest.approx(1.0) and fn(30) == pytest.approx(0.25)  # cosine to the floor
    assert all(fn(s) >= fn(s + 1) for s in range(15, 40))


def test_experiment_strategy_allows_phase_switches(tmp_path: Path):
    cfg = compose_cfg(["experiment=sparsifiner_deit_small_in1k"], tmp_path)
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"
    model, _ = _pair()
    task = DistillationTask(model, num_classes=10)
    task.setup("fit")  # before DDP wraps: every student parameter trainable, the teacher frozen
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in task.teacher.parameters())
    task.set_phase("recon")
    assert {id(p) for p in model.parameters() if p.requires_grad} == {
        id(p) for p in model.predictor_parameters()
    }


def test_pretrained_deit_file_loads(tmp_path: Path):
    """A DeiT checkpoint laid out like deit_*_patch16_224-*.pth ({'model': ...}, 'module.' prefixes) loads."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", **SMALL).eval()
    path = tmp_path / "deit_tiny_patch16_224.pth"
    torch.save({"model": {f"module.{k}": v for k, v in deit.state_dict().items()}}, path)
    model = timm.create_model(
        "sparsifiner_deit_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        keep_rate=1.0,
        **SMALL,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), deit(x), atol=1e-5, rtol=1e-5)


def test_csr_kernel_path_equals_gather_and_mask_and_is_used_without_grad(monkeypatch):
    """The inference form of ``sparse`` (CSR SDDMM + row softmax + SpMM) equals the gather form and the mask,
    float32 and float64; with autograd the differentiable gather form is used instead."""
    from visionzoo.models.layers import sparse_attention as sa

    torch.manual_seed(1)
    B, H, N, d, k = 2, 3, 17, 8, 5
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        q, kk, v = (torch.randn(B, H, N, d, dtype=dtype) for _ in range(3))
        idx = torch.rand(B, H, N - 1, N).topk(k, dim=-1).indices
        csr = sa.sparse_csr_attention(q, kk, v, idx, d**-0.5)
        torch.testing.assert_close(
            csr, sa.sparse_gather_attention(q, kk, v, idx, d**-0.5), atol=tol, rtol=tol
        )
        torch.testing.assert_close(csr, sa.dense_mask_attention(q, kk, v, idx, d**-0.5), atol=tol, rtol=tol)

    used = []
    monkeypatch.setattr(
        sa, "sparse_csr_attention", lambda *a: used.append("csr") or sa.sparse_gather_attention(*a)
    )
    q, kk, v = (torch.randn(B, H, N, d, requires_grad=True) for _ in range(3))
    sa.sparse_attention(q, kk, v, idx, 0.5).sum().backward()
    assert used == [] and q.grad is not None
    with torch.no_grad():
        sa.sparse_attention(q, kk, v, idx, 0.5)
    with torch.inference_mode():
        sa.sparse_attention(q.detach(), kk.detach(), v.detach(), idx, 0.5)
    assert used == ["csr", "csr"]


@pytest.mark.parametrize("impl", [None, "sparse", "dense_mask"])
def test_only_the_predictors_get_no_gradient_from_the_logits(impl):
    """timm's backward test stops at the first parameter without a gradient; check the whole set here: with every
    parameter trainable, exactly the mask predictors (detached top-k mask) get none from ``logits.mean()``."""
    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_tiny", num_classes=10, attn_impl=impl, **SMALL).train()
    model.requires_grad_(True)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None}
    predictors = {n for n, _ in model.named_parameters() if ".mask_predictor." in n}
    assert len(predictors) == 6 * len(model.blocks)
    assert missing == predictors
    if (
        impl is None
    ):  # the same through timm's FX tracer (its graph has no torch.no_grad around the predictor)
        from timm.models import get_notrace_functions, get_notrace_modules
        from torchvision.models.feature_extraction import create_feature_extractor

        tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
        fx = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=tracer).train()
        fx.zero_grad(set_to_none=True)
        fx(torch.randn(2, 3, 32, 32))["head"].mean().backward()
        assert {n for n, p in fx.named_parameters() if p.grad is None} == predictors


def test_attention_has_timm_signature_and_refuses_masks():
    model, _ = _pair()
    attn = model.blocks[0].attn
    x = torch.randn(2, model.num_tokens, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, attn_mask=None, is_causal=False), attn(x))
        with pytest.raises(ValueError, match="no attn_mask"):
            attn(x, attn_mask=torch.zeros(model.num_tokens, model.num_tokens))
        with pytest.raises(ValueError, match="no attn_mask"):
            attn(x, is_causal=True)
    with pytest.raises(TypeError):
        attn(x, not_an_arg=1)  # no **kwargs swallowed


@pytest.mark.parametrize("train", [False, True])
def test_torchscript_and_fx_equal_eager(train):
    from timm.layers import set_scriptable
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    with set_scriptable(True):
        model = timm.create_model("sparsifiner_deit_tiny", num_classes=10, **SMALL).train(train)
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    fx = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=tracer)
    with torch.no_grad():  # eval: the sparse path (CSR eagerly, gather form when scripted); train: dense_mask
        ref = model(x)
        torch.testing.assert_close(scripted(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fx(x)["head"], ref, atol=1e-5, rtol=1e-5)
