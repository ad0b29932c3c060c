"""``visionzoo export``: ONNX (checked in onnxruntime), torch.export, TorchScript where a model supports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visionzoo.cli import main
from visionzoo.export import scriptable

SMALL = ["depths=[1,1,1,1]", "embed_dims=[32,64,128,256]", "num_classes=10"]

pytestmark = pytest.mark.timeout(240)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_biformer_onnx_checked_in_onnxruntime(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "biformer.onnx"
    code, stdout, err = run(
        capsys, "export", "biformer_tiny", "--format", "onnx", "--check", "--size", "224", "--kwargs", *SMALL,
        "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert out.is_file() and result["bytes"] == out.stat().st_size
    # checked on a batch of 2 although exported with batch 1: the batch axis is dynamic
    assert result["check"]["passed"] and result["check"]["rel_error"] < 1e-4

    import onnx

    graph = onnx.load(str(out)).graph
    ops = {n.op_type for n in graph.node}
    assert {"TopK", "Gather"} <= ops  # routing: top-k regions, index_select of their keys/values


def test_biformer_onnx_table(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    code, stdout, _ = run(
        capsys, "export", "biformer_tiny", "--format", "onnx", "--check", "--size", "112", "--kwargs", *SMALL,
        "--output", str(tmp_path / "m.onnx"),
    )  # fmt: skip
    assert code == 0 and "passed (onnxruntime vs eager" in stdout


def test_biformer_torch_export(capsys, tmp_path):
    out = tmp_path / "biformer.pt2"
    code, stdout, err = run(
        capsys, "export", "biformer_tiny", "--format", "torch_export", "--check", "--size", "112", "--kwargs",
        *SMALL, "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["check"]["passed"] and result["dynamic_batch"]
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(3, 3, 112, 112)).shape == (3, 10)


def test_torchscript_refused_in_one_sentence_naming_why(capsys, tmp_path):
    from visionzoo.models import model_info

    assert not scriptable("herseg")
    code, stdout, err = run(
        capsys, "export", "herseg", "--format", "torchscript", "--output", str(tmp_path / "x.pt")
    )
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "cannot be exported to TorchScript" in err and "onnx" in err
    assert model_info("herseg").not_scriptable in err
    assert not (tmp_path / "x.pt").exists()


def test_biformer_torchscript_checked(capsys, tmp_path):
    """BiFormer scripts (see its model file): the exported file runs and equals eager."""
    out = tmp_path / "b.pt"
    code, stdout, err = run(
        capsys, "export", "biformer_tiny", "--format", "torchscript", "--check", "--size", "112",
        "--kwargs", *SMALL, "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["check"]["passed"]
    assert torch.jit.load(str(out))(torch.randn(1, 3, 112, 112)).shape == (1, 10)


def test_torchscript_for_a_scriptable_model(capsys, tmp_path):
    """The TorchScript path itself, on a timm model that scripts (the CLI takes timm's names too)."""
    out = tmp_path / "r.pt"
    code, stdout, err = run(
        capsys, "export", "resnet10t", "--format", "torchscript", "--check", "--size", "64",
        "--kwargs", "num_classes=5", "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["check"]["passed"]
    assert torch.jit.load(str(out))(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_export_with_checkpoint(capsys, tmp_path):
    import timm

    model = timm.create_model(
        "biformer_tiny", depths=[1, 1, 1, 1], embed_dims=[32, 64, 128, 256], num_classes=10
    )
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "w.pt2"
    code, _, err = run(
        capsys, "export", "biformer_tiny", "--format", "torch_export", "--checkpoint", str(tmp_path / "w.pth"),
        "--kwargs", "depths=[1,1,1,1]", "embed_dims=[32,64,128,256]", "--size", "112", "--output", str(out),
    )  # fmt: skip
    assert code == 0, err
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(str(out)).module()(x), model.eval()(x), atol=1e-5)


def test_default_output_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(
        capsys, "export", "biformer_tiny", "--format", "torch_export", "--size", "112", "--kwargs", *SMALL
    )
    assert code == 0, err
    assert Path(tmp_path / "biformer_tiny.pt2").is_file()


def test_qtseg_onnx_checked_in_onnxruntime(capsys, tmp_path):
    """Exported from weights whose ChannelAttention residual scales are non-zero, so the check sees them."""
    pytest.importorskip("onnxruntime")
    import timm
    from zoo_models import perturb_zero_init

    model = timm.create_model("qtseg")
    assert any("gamma" in n for n in perturb_zero_init(model))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "qtseg.onnx"
    code, stdout, err = run(
        capsys, "export", "qtseg", "--format", "onnx", "--check", "--size", "64", "--checkpoint",
        str(tmp_path / "w.pth"), "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["check"]["passed"] and result["check"]["rel_error"] < 1e-4


def test_reid_backbone_onnx_embedding_checked_in_onnxruntime(capsys, tmp_path):
    """The Re-ID embedding network (BNNeck, last stride 1, two lab blocks with trained-like non-zero residual
    scales, so the check sees their gates) at its 256x128 input size: the deployment form a robot would run."""
    pytest.importorskip("onnxruntime")
    import onnx
    import timm

    spec = dict(
        layers=[1, 1, 1, 1], attn_positions=[[1, 0], [2, 0]], num_classes=0, last_stride=1, bnneck=True
    )
    model = timm.create_model("reid_resnet50_lab", **spec)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):
                param.fill_(0.5)
    torch.save(model.state_dict(), tmp_path / "reid.pth")
    kwargs = [
        "layers=[1,1,1,1]",
        "attn_positions=[[1,0],[2,0]]",
        "num_classes=0",
        "last_stride=1",
        "bnneck=true",
    ]
    out = tmp_path / "reid.onnx"
    code, stdout, err = run(
        capsys, "export", "reid_resnet50_lab", "--format", "onnx", "--check", "--kwargs", *kwargs,
        "--checkpoint", str(tmp_path / "reid.pth"), "--output", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["check"]["passed"] and result["check"]["rel_error"] < 1e-4
    assert result["input_size"] == [3, 256, 128]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"ReduceMax", "ReduceMean", "Sigmoid", "BatchNormalization"} <= ops  # lab gates and the BNNeck
    # the exported file holds the checkpoint's gates: it matches the gamma=0.5 model, not the identity-init one
    import onnxruntime as ort

    x = torch.randn(2, 3, 256, 128)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model.eval()(x), atol=1e-4, rtol=1e-4)
        identity = {
            k: (torch.zeros_like(v) if k.endswith(".gamma") else v) for k, v in model.state_dict().items()
        }
        same_weights_no_gates = timm.create_model("reid_resnet50_lab", **spec).eval()
        same_weights_no_gates.load_state_dict(identity)
        assert (got - same_weights_no_gates(x)).abs().max() > 1e-4
