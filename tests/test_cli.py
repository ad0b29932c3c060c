"""The ``visionzoo`` command line: tables for people, JSON for scripts, one sentence and exit 2 for user errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from zoo_models import small

import visionzoo
from visionzoo import hub
from visionzoo.cli import main
from visionzoo.models import model_info

SMALL = ["depths=[1,1,1,1]", "embed_dims=[32,64,128,256]"]
SMALL_KW = dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 128, 256])

pytestmark = pytest.mark.timeout(240)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(hub.ENV_CACHE, str(directory))
    for var in (hub.ENV_OFFLINE, "HF_HUB_OFFLINE", hub.ENV_MIRROR):
        monkeypatch.delenv(var, raising=False)
    return directory


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------- list / info
def test_list_json_and_table(capsys):
    rows = run_json(capsys, "list")
    assert [r["name"] for r in rows] == visionzoo.list_models()
    assert {"biformer_tiny", "biformer_small", "biformer_base"} <= {r["name"] for r in rows}
    tiny = next(r for r in rows if r["name"] == "biformer_tiny")
    assert tiny["pretrained_tags"] == ["in1k"] and tiny["license"] == "mit"
    code, out, _ = run(capsys, "list", "biformer_*", "--pretrained")
    assert code == 0 and "biformer_base" in out and "in1k" in out


@pytest.mark.parametrize("name", visionzoo.list_models())
def test_info_for_every_zoo_model(capsys, name):
    info = run_json(capsys, "info", name)
    model = timm.create_model(name, device="meta")
    frozen = [b for m in model.modules() if getattr(m, "static_buffers", False) for b in m.buffers()]
    assert info["params"] == sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in frozen)
    if name.endswith("_llm"):  # the frozen LLM layer's weights are buffers, counted as the model's weights
        assert frozen
    assert info["gmacs"] > 0 and info["flops_input_size"] == list(model.pretrained_cfg["input_size"])
    assert info["mean"] and info["std"] and info["license"] and info["paper_ids"]
    weights = info["weights"]
    if weights.get("url"):
        assert weights["cached"] is False and weights["cache_path"].startswith(str(hub.cache_dir()))


def test_info_table(capsys):
    code, out, _ = run(capsys, "info", "biformer_tiny")
    assert code == 0
    for text in (
        "13,142,760",
        "GMACs @224x224",
        "2.216",
        "bicubic",
        "arXiv:2303.08810",
        "not pinned",
        "cached",
    ):
        assert text in out


def test_info_with_kwargs_and_size(capsys):
    info = run_json(capsys, "info", "biformer_tiny", "--size", "112", "--kwargs", *SMALL)
    assert info["flops_input_size"] == [3, 112, 112] and info["model_kwargs"] == SMALL_KW
    assert info["params"] < 2_000_000


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["info", "biformer_tin"], "unknown model 'biformer_tin' (did you mean biformer_tiny"),
        (["info", "biformer_tiny.nope"], "has no pretrained tag 'nope'"),
        (["info", "biformer_tiny", "--kwargs", "depths"], "--kwargs takes key=value pairs"),
        (["predict", "biformer_tiny", "x.png"], "predict needs weights"),
    ],
)
def test_user_errors_are_one_sentence(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- download
class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10

    def do_GET(self):  # noqa: N802
        self.server.requests[self.path] += 1
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.routes, srv.requests = {}, Counter()
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    monkeypatch.setenv(hub.ENV_MIRROR, f"http://127.0.0.1:{srv.server_address[1]}/weights")
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_download_through_mirror_then_cached(capsys, mirror, cache):
    buf = io.BytesIO()
    torch.save({"model": timm.create_model("biformer_tiny", **SMALL_KW).state_dict()}, buf)
    mirror.routes["/weights/biformer_tiny.in1k-content"] = buf.getvalue()
    first = run_json(capsys, "download", "biformer_tiny")
    assert first["was_cached"] is False and Path(first["path"]).parent == cache
    assert first["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest() and first["pinned"] is False
    second = run_json(capsys, "download", "biformer_tiny")
    assert second["was_cached"] is True and second["path"] == first["path"]
    assert mirror.requests == Counter({"/weights/biformer_tiny.in1k-content": 1})
    assert run_json(capsys, "info", "biformer_tiny")["weights"]["cached"] is True


def test_download_offline_names_the_path(capsys, monkeypatch, cache):
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    code, _, err = run(capsys, "download", "biformer_base")
    expected = hub.weights_source(timm.models.get_pretrained_cfg("biformer_base").to_dict()).cache_path
    assert code == 2 and str(expected) in err and "offline mode is on" in err


# ----------------------------------------------------------------------------------------------- benchmark
def test_benchmark_json(capsys):
    result = run_json(
        capsys, "benchmark", "biformer_tiny", "--kwargs", *SMALL, "--size", "112", "--batch", "2",
        "--steps", "2", "--warmup", "1",
    )  # fmt: skip
    assert result["input_size"] == [3, 112, 112] and result["batch"] == 2
    for phase in ("inference", "train"):
        assert result[phase]["img_per_s"] > 0
    assert result["inference"]["latency_ms_p95"] >= result["inference"]["latency_ms_p50"] > 0
    assert result["gflops_per_image"] > 0 and result["matmul_fp32_gflop_per_s"] > 0
    assert 0 < result["fraction_of_matmul_rate"] < 10


def test_benchmark_table(capsys):
    code, out, _ = run(
        capsys, "benchmark", "biformer_tiny", "--kwargs", *SMALL, "--size", "112", "--batch", "1",
        "--steps", "1", "--warmup", "0", "--no-train", "--channels-last",
    )  # fmt: skip
    assert code == 0
    for text in ("img/s", "p50 ms", "p95 ms", "peak MiB", "fraction of matmul rate", "channels_last"):
        assert text in out


# ----------------------------------------------------------------------------------------------- predict
def test_predict_state_dict_file(capsys, tmp_path, image):
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=7, **SMALL_KW)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    rows = run_json(
        capsys, "predict", "biformer_tiny", "--checkpoint", str(tmp_path / "w.pth"), "--kwargs", *SMALL,
        "--size", "112", str(image),
    )  # fmt: skip
    top = rows[0]["top"]
    assert len(top) == 5 and {t["class"] for t in top} <= set(range(7))  # 7 classes, read from the head
    assert all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:]))


def test_predict_saved_folder_uses_label_names(capsys, tmp_path, image):
    model = timm.create_model("biformer_tiny", num_classes=3, **SMALL_KW)
    visionzoo.save_pretrained(model, tmp_path / "mine", label_names=["cat", "dog", "eel"])
    code, out, _ = run(
        capsys,
        "predict",
        "biformer_tiny",
        "--checkpoint",
        str(tmp_path / "mine"),
        "--size",
        "112",
        str(image),
    )
    assert code == 0 and "probability" in out and {"cat", "dog", "eel"} <= set(out.split())


def test_predict_lightning_run_checkpoint(capsys, tmp_path, image):
    """A train.py run: the .ckpt holds the task's 'model.' state_dict; the run config gives kwargs and size."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    kwargs = dict(SMALL_KW, n_win=2, topks=[1, 2, 4, -2])
    (run_dir / ".hydra" / "config.yaml").write_text(
        "model:\n  name: biformer_tiny\n  kwargs:\n    pretrained: false\n"
        + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in kwargs.items())
        + "data:\n  image_size: 32\n"
    )
    model = timm.create_model("biformer_tiny", num_classes=10, **kwargs)
    ckpt = {
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"num_classes": 10},
    }
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    rows = run_json(
        capsys,
        "predict",
        "biformer_tiny",
        "--checkpoint",
        str(run_dir / "checkpoints" / "last.ckpt"),
        str(image),
    )
    assert len(rows[0]["top"]) == 5
    code, _, err = run(
        capsys,
        "predict",
        "biformer_small",
        "--checkpoint",
        str(run_dir / "checkpoints" / "last.ckpt"),
        str(image),
    )
    assert code == 2 and "was trained as biformer_tiny" in err


def test_predict_malformed_checkpoint_is_one_sentence(capsys, tmp_path, image):
    state = timm.create_model("biformer_tiny", num_classes=10, **SMALL_KW).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("stages.1.")}
    torch.save(state, tmp_path / "bad.pth")
    code, _, err = run(
        capsys,
        "predict",
        "biformer_tiny",
        "--checkpoint",
        str(tmp_path / "bad.pth"),
        "--kwargs",
        *SMALL,
        str(image),
    )
    assert code == 2 and err.count("\n") == 1 and "'stages.1.0." in err


def _segmenters() -> list[str]:
    return [n for n in visionzoo.list_models() if model_info(n).task == "segmentation"]


@pytest.mark.skipif(not _segmenters(), reason="no segmenter registered")
def test_predict_segmenter_writes_mask_and_overlay(capsys, tmp_path, image):
    name = _segmenters()[0]
    spec = small(name)
    model = timm.create_model(name, **spec.kwargs)
    torch.save(model.state_dict(), tmp_path / "seg.pth")
    side = str(spec.input_size[-1])
    kwargs = spec.kwargs
    argv = [
        "predict",
        name,
        "--checkpoint",
        str(tmp_path / "seg.pth"),
        "--size",
        side,
        "--output-dir",
        str(tmp_path / "out"),
    ]
    if kwargs:
        argv += ["--kwargs", *(f"{k}={json.dumps(v)}" for k, v in kwargs.items())]
    rows = run_json(capsys, *argv, str(image))
    mask = Image.open(rows[0]["mask"])
    assert mask.size == (80, 60) and Path(rows[0]["overlay"]).is_file()


def test_predict_segmentation_run_is_handed_to_visionzoo_predict(capsys, tmp_path, image, monkeypatch):
    """A segmentation run's .ckpt (backbone + head, stored model_spec) goes to visionzoo.predict.predict_folder."""
    import visionzoo.predict

    calls = []

    def fake_predict_folder(ckpt_path, images, out, device="auto", size=None, **kwargs):
        calls.append((Path(ckpt_path), Path(images), Path(out), size))
        mask = Path(out) / "masks" / f"{Path(images).stem}.png"
        return [mask]

    monkeypatch.setattr(visionzoo.predict, "predict_folder", fake_predict_folder)
    ckpt = tmp_path / "seg.ckpt"
    torch.save(
        {"pytorch-lightning_version": "2.6.0", "state_dict": {}, "hyper_parameters": {"model_spec": {}}}, ckpt
    )
    rows = run_json(
        capsys, "predict", "biformer_tiny", "--checkpoint", str(ckpt), "--size", "64", "--output-dir", str(tmp_path / "o"),
        str(image),
    )  # fmt: skip
    assert calls == [(ckpt, image, tmp_path / "o", (64, 64))]
    assert rows == [
        {
            "image": str(image),
            "mask": str(tmp_path / "o" / "masks" / "img.png"),
            "overlay": str(tmp_path / "o" / "overlays" / "img.png"),
        }
    ]
