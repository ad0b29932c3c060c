"""Every family, compared with itself run another way: inductor ``torch.compile``, ONNX in onnxruntime, batched vs
single. Each check runs on a model whose zero-initialised branches are switched on first (tests/zoo_models.py), so
a branch that the compiled / exported model computes wrongly changes the output the check compares."""

from __future__ import annotations

import pytest
import torch
from zoo_models import create_small, perturb_zero_init, relative_error, small, zoo_families

from visionzoo.export import ExportError, export_model
from visionzoo.models.dense import DenseSegmenter

FAMILIES = zoo_families()
RTOL = 1e-4  # relative error ||y - y_ref|| / ||y_ref||

pytestmark = pytest.mark.timeout(600)


def _perturbed(name: str, **kwargs) -> torch.nn.Module:
    model = create_small(name, **kwargs).eval()
    perturb_zero_init(model)
    return model


def _input(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *small(name).input_size, generator=torch.Generator().manual_seed(1))


# Parameters each family initialises to zero that switch a branch off; perturbing them must change the output.
ZERO_INIT_BRANCHES = {
    "qtseg": "gamma",  # ChannelAttention residual scale
    "reid_resnet50_lab": "gamma",  # lab block residual scale
}


@pytest.mark.parametrize("name", FAMILIES)
def test_perturbation_changes_the_output(name):
    fresh = create_small(name).eval()
    perturbed = _perturbed(name)
    changed = perturb_zero_init(create_small(name))
    if name in ZERO_INIT_BRANCHES:
        assert any(ZERO_INIT_BRANCHES[name] in n for n in changed), (
            f"{name}: no zero-init {ZERO_INIT_BRANCHES[name]}"
        )
    x = _input(name)
    with torch.no_grad():
        assert relative_error(perturbed(x), fresh(x)) > 1e-3, (
            f"{name}: perturbing {changed[:4]} changed nothing"
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_single_sample_equals_its_row_in_a_batch(name):
    """No op mixes samples (a batch-statistics bug or a reshape across the batch axis would)."""
    model = _perturbed(name)
    x = _input(name, batch=3)
    with torch.no_grad():
        batched, single = model(x), model(x[1:2])
    assert relative_error(single, batched[1:2]) <= RTOL


@pytest.mark.parametrize("name", FAMILIES)
def test_inductor_compile_equals_eager(name):
    torch._dynamo.reset()
    model = _perturbed(name)
    x = _input(name)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)  # the default backend: inductor, C++ on the CPU
    assert out.shape == ref.shape
    assert relative_error(out, ref) <= RTOL


@pytest.mark.parametrize("name", FAMILIES)
def test_torchscript_equals_eager(name):
    from timm.layers import set_scriptable

    from visionzoo.models import model_info

    reason = model_info(name).not_scriptable
    if reason is not None:
        # make test-timm holds the record true (strict xfail); scripting here would leave half-compiled classes
        # that break the family's own TorchScript test later in this process
        pytest.skip(f"registered not scriptable: {reason}")
    with set_scriptable(True):
        model = _perturbed(name)
    x = _input(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert relative_error(scripted(x), model(x)) <= RTOL


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_in_onnxruntime_equals_eager(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = _perturbed(name)
    result = export_model(
        model, "onnx", tmp_path / f"{name}.onnx", small(name).input_size, check=True, name=name
    )
    assert result["check"]["passed"] and result["check"]["rel_error"] <= RTOL


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_onnx_backbone_with_dense_head(head, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = DenseSegmenter(
        "biformer_tiny", head=head, num_classes=5, backbone_kwargs=small("biformer_tiny").kwargs
    ).eval()
    perturb_zero_init(model)
    try:
        result = export_model(model, "onnx", tmp_path / f"{head}.onnx", (3, 112, 112), check=True, name=head)
    except ExportError as e:
        pytest.fail(str(e))
    assert result["check"]["passed"]


TINY_RUN = [
    "trainer=cpu",
    "logger=csv",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
]


@pytest.mark.slow  # two inductor compilations of a training step: ~2-3 min on 2 cores
def test_compile_flag_trains_writes_plain_checkpoints_that_resume_and_predict(tmp_path):
    """``compile=true``: inductor-compiled training steps; the checkpoint has the plain ``model.*`` keys, so it
    resumes (compiled again) and loads for prediction into an uncompiled timm model."""
    from hydra_helpers import run_train_cli

    from visionzoo.hub import model_from_checkpoint

    first = run_train_cli([*TINY_RUN, "compile=true", "trainer.max_epochs=1", "hydra.run.dir=run"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    assert state and not [k for k in state if "_orig_mod" in k]
    assert all(k.startswith("model.") for k in state)

    resumed = run_train_cli(
        [*TINY_RUN, "compile=true", "trainer.max_epochs=2", f"ckpt_path={ckpt_path}", "hydra.run.dir=run2"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = torch.load(
        tmp_path / "run2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert after["global_step"] == 2 * 2  # two epochs of two steps: the first epoch was not repeated
    assert any(not torch.equal(after["state_dict"][k], v) for k, v in state.items() if v.is_floating_point())

    model = model_from_checkpoint("biformer_tiny", tmp_path / "run2" / "checkpoints" / "last.ckpt").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, after["state_dict"][f"model.{key}"]), key
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("pick", ["last", "first_and_last", "negative"])
def test_features_only_at_any_out_indices(name, pick):
    """timm's features_only with a chosen subset of levels returns exactly those levels (what necks rely on)."""
    full = create_small(name, features_only=True).eval()
    n = len(full.feature_info)
    indices = {"last": (n - 1,), "first_and_last": (0, n - 1), "negative": (-2, -1)}[pick]
    model = create_small(name, features_only=True, out_indices=indices).eval()
    want = [full.feature_info.channels()[i] for i in indices]
    assert model.feature_info.channels() == want
    with torch.no_grad():
        feats = model(_input(name, batch=1))
        ref = full(_input(name, batch=1))
    assert [f.shape[1] for f in feats] == want
    for f, i in zip(feats, indices):
        torch.testing.assert_close(f, ref[i])
