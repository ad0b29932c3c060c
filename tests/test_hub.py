"""visionzoo.hub: download into the cache through a loopback HTTP server, verify, convert, fail clearly.

Every URL here is 127.0.0.1 (a ``http.server`` in a thread, bounded by socket timeouts) or an unresolvable
``.invalid`` host that the tests never let the code contact; the cache is a per-test temporary directory.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import visionzoo
from visionzoo import hub
from visionzoo.errors import CheckpointError, ConfigError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference" / "biformer" / "reduced_224"
REDUCED = dict(depths=[1, 1, 2, 1], embed_dims=[32, 64, 128, 256], num_classes=10)
SMALL = dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 128, 256], num_classes=10)

pytestmark = pytest.mark.timeout(120)


# ----------------------------------------------------------------------------------------------- server
class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # seconds per connection: a stuck client cannot hang the server thread

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests[self.path] += 1
        route = srv.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route
        self.send_response(200)
        self.send_header(
            "Content-Type", "text/html; charset=utf-8" if mode == "html" else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # announce the full length, send half, close the connection
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.routes = {}
    srv.requests = Counter()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache, online, no mirror, no progress bar, for every test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(hub.ENV_CACHE, str(directory))
    for var in (hub.ENV_OFFLINE, "HF_HUB_OFFLINE", hub.ENV_MIRROR):
        monkeypatch.delenv(var, raising=False)
    return directory


# ----------------------------------------------------------------------------------------------- helpers
def _official_checkpoint() -> bytes:
    """The golden reference weights (official key names) in the official file layout."""
    buf = io.BytesIO()
    torch.save({"model": load_file(str(FIXTURE / "state_dict.safetensors")), "epoch": 299}, buf)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def _create(url: str, **kwargs):
    overlay = dict(url=url, num_classes=10)
    return timm.create_model(
        "biformer_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **{**REDUCED, **kwargs}
    ).eval()


@pytest.fixture(scope="module")
def official() -> bytes:
    return _official_checkpoint()


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


# ----------------------------------------------------------------------------------------------- download
def test_download_verify_convert_then_cache_hit(server, cache, official, golden):
    server.routes["/x/content"] = (official, "ok")
    url = f"{server.base}/x/content#sha256={_sha(official)}"
    model = _create(url)
    with torch.no_grad():
        logits = model(golden["x"])
    # official layout + official key names were converted on load: the official outputs come out
    assert ((logits - golden["logits"]).norm() / golden["logits"].norm()).item() < 1e-4
    assert server.requests["/x/content"] == 1
    source = hub.weights_source(model.pretrained_cfg)
    assert source.cache_path.parent == cache
    assert source.cache_path.name.startswith("biformer_tiny.in1k-") and source.cache_path.name.endswith(
        "-content"
    )
    assert _files(cache) == sorted([source.cache_path.name, source.cache_path.name + ".sha256"])
    assert (
        model.pretrained_cfg["url"] == url
    )  # the cfg keeps its URL; the state_dict is not kept on the model
    assert model.pretrained_cfg.get("state_dict") is None

    again = _create(url)
    assert server.requests["/x/content"] == 1  # served from the cache: no second request
    with torch.no_grad():
        assert torch.equal(again(golden["x"]), logits)


def test_official_urls_get_distinct_cache_names(cache):
    sources = [
        hub.weights_source(timm.models.get_pretrained_cfg(f"biformer_{v}.in1k"))
        for v in ("tiny", "small", "base")
    ]
    # all three published URLs end in '/content' ...
    assert all(s.url.endswith("/content") for s in sources)
    # ... yet they are cached, and looked up on a mirror, under different names
    assert len({s.cache_path for s in sources}) == 3
    assert [s.mirror_name for s in sources] == [
        f"biformer_{v}.in1k-content" for v in ("tiny", "small", "base")
    ]
    assert all(s.cache_path.parent == cache for s in sources)


def test_truncated_download_leaves_nothing(server, cache, official):
    server.routes["/x/content"] = (official, "truncate")
    with pytest.raises(CheckpointError, match=r"stopped after [\d,]+ of [\d,]+ bytes") as err:
        _create(f"{server.base}/x/content#sha256={_sha(official)}")
    assert "\n" not in str(err.value)
    assert _files(cache) == []


def test_truncated_download_without_hash_leaves_nothing(server, cache, official):
    server.routes["/x/content"] = (official, "truncate")
    with pytest.raises(CheckpointError, match="stopped after"):
        _create(f"{server.base}/x/content")
    assert _files(cache) == []


def test_hash_mismatch_deletes_and_raises(server, cache, official):
    corrupted = bytearray(official)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.routes["/x/content"] = (bytes(corrupted), "ok")
    with pytest.raises(CheckpointError, match="SHA-256 .* not the pinned") as err:
        _create(f"{server.base}/x/content#sha256={_sha(official)}")
    assert "\n" not in str(err.value)
    assert _files(cache) == []


def test_bad_hash_fragment_is_one_sentence(server):
    with pytest.raises(CheckpointError, match="64 hex digits"):
        _create(f"{server.base}/x/content#sha256=abc")


@pytest.mark.parametrize("var", [hub.ENV_OFFLINE, "HF_HUB_OFFLINE"])
def test_offline_names_the_file_to_place(server, cache, official, monkeypatch, var):
    server.routes["/x/content"] = (official, "ok")
    url = f"{server.base}/x/content#sha256={_sha(official)}"
    monkeypatch.setenv(var, "1")
    with pytest.raises(CheckpointError, match="offline mode is on") as err:
        _create(url)
    expected = hub.weights_source(dict(url=url, architecture="biformer_tiny", tag="in1k")).cache_path
    assert str(expected) in str(err.value) and _sha(official) in str(err.value)
    assert sum(server.requests.values()) == 0  # offline: not one request
    # placing the file there is enough (it is verified like a download)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(official)
    _create(url)
    assert sum(server.requests.values()) == 0
    assert _files(cache) == sorted([expected.name, expected.name + ".sha256"])


def test_offline_wrong_placed_file_is_deleted(cache, official, monkeypatch):
    url = f"http://127.0.0.1:9/x/content#sha256={_sha(official)}"
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    path = hub.weights_source(dict(url=url, architecture="biformer_tiny", tag="in1k")).cache_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the checkpoint")
    with pytest.raises(CheckpointError, match="not the pinned"):
        _create(url)
    assert _files(cache) == []


def test_mirror_redirects_downloads(server, cache, official, monkeypatch):
    server.routes["/mirror/biformer_tiny.in1k-content"] = (official, "ok")
    monkeypatch.setenv(hub.ENV_MIRROR, f"{server.base}/mirror/")
    # the published host is never contacted (.invalid cannot resolve): the mirror serves the file
    url = f"https://weights.invalid/v1.0/shares/abc/root/content#sha256={_sha(official)}"
    _create(url)
    assert server.requests == Counter({"/mirror/biformer_tiny.in1k-content": 1})
    source = hub.weights_source(dict(url=url, architecture="biformer_tiny", tag="in1k"))
    assert source.mirror_url == f"{server.base}/mirror/biformer_tiny.in1k-content"
    assert hub.cached_file(source) == source.cache_path


def test_zip_asset_is_extracted(server, cache, official, golden):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "weights")
        zf.writestr("biformer_tiny_best.pth", official)
    archive = buf.getvalue()
    server.routes["/x/weights.zip"] = (archive, "ok")
    url = f"{server.base}/x/weights.zip#sha256={_sha(archive)}"
    model = _create(url)
    names = _files(cache)
    assert (
        len(names) == 2 and names[0].endswith("-biformer_tiny_best.pth") and names[1].endswith(".pth.sha256")
    )
    with torch.no_grad():
        assert ((model(golden["x"]) - golden["logits"]).norm() / golden["logits"].norm()).item() < 1e-4
    _create(url)
    assert server.requests["/x/weights.zip"] == 1


def test_zip_member_fragment_picks_one_of_several(server, cache, official, golden):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("run/weight_last.pt", b"not this one")
        zf.writestr("run/weight_best_dice.pt", official)
    archive = buf.getvalue()
    server.routes["/x/run.zip"] = (archive, "ok")
    model = _create(f"{server.base}/x/run.zip#member=weight_best_dice.pt&sha256={_sha(archive)}")
    assert [n for n in _files(cache) if not n.endswith(".sha256")][0].endswith("-weight_best_dice.pt")
    with torch.no_grad():
        assert ((model(golden["x"]) - golden["logits"]).norm() / golden["logits"].norm()).item() < 1e-4
    # several checkpoints and no member named: one sentence that says how to choose
    with pytest.raises(CheckpointError, match="#member=") as err:
        _create(f"{server.base}/x/run.zip")
    assert "weight_last.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="no member 'nope.pt'"):
        _create(f"{server.base}/x/run.zip#member=nope.pt")


def test_unknown_fragment_key_is_refused():
    with pytest.raises(CheckpointError, match="unknown key 'md5'"):
        hub.parse_url("https://x/y.pth#md5=abc")


def test_torch_zip_format_is_not_extracted(server, cache, official):
    server.routes["/x/model.pth"] = (official, "ok")  # torch.save output is itself a zip archive
    _create(f"{server.base}/x/model.pth")
    assert [n for n in _files(cache) if not n.endswith(".sha256")][0].endswith("-model.pth")


def test_html_page_is_refused(server, cache):
    server.routes["/x/content"] = (b"<html><body>This link has expired</body></html>", "html")
    with pytest.raises(CheckpointError, match="HTML page"):
        _create(f"{server.base}/x/content")
    assert _files(cache) == []


def test_http_error_is_one_sentence(server, cache):
    with pytest.raises(CheckpointError, match="HTTP 404") as err:
        _create(f"{server.base}/missing/content")
    assert str(hub.cache_dir()) in str(err.value)
    assert _files(cache) == []


def test_unreadable_download_is_evicted(server, cache):
    server.routes["/x/content"] = (b"\x00garbage" * 100, "ok")
    with pytest.raises(CheckpointError, match="could not read the checkpoint .* cached file was deleted"):
        _create(f"{server.base}/x/content")
    assert _files(cache) == []


def test_model_without_weights_url_says_so():
    with pytest.raises(CheckpointError, match="has no pretrained weights"):
        timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=""), **SMALL)


def test_default_cache_is_torch_hub(monkeypatch, tmp_path):
    monkeypatch.delenv(hub.ENV_CACHE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"
    assert hub.cache_dir(tmp_path / "x") == tmp_path / "x"


# ----------------------------------------------------------------------------------------------- malformed
def _serve(server, state: dict, name: str = "/bad/content") -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    server.routes[name] = (buf.getvalue(), "ok")
    return server.base + name


def test_foreign_keys_give_one_sentence(server):
    state = load_file(str(FIXTURE / "state_dict.safetensors"))
    state = {("backbone." + k if i < 5 else k): v for i, (k, v) in enumerate(state.items())}
    with pytest.raises(CheckpointError) as err:
        _create(_serve(server, {"model": state}))
    msg = str(err.value)
    assert "\n" not in msg and "backbone.downsample_layers" in msg


def test_wrong_shapes_give_one_sentence(server):
    """A head of another size with matching num_classes passes the filter and reaches timm's strict load."""
    state = dict(load_file(str(FIXTURE / "state_dict.safetensors")))
    state["head.weight"] = torch.zeros(7, 256)
    state["head.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"cannot load the checkpoint .* into biformer_tiny") as err:
        _create(_serve(server, {"model": state}))
    msg = str(err.value)
    assert "\n" not in msg and "'head.weight' (7, 256) vs (10, 256)" in msg


def test_generic_strict_load_names_first_keys():
    """Any zoo model: timm's strict load_state_dict error becomes one sentence naming the first keys."""
    model = timm.create_model("biformer_tiny", **SMALL)
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["norm.weight"], state["stages.0.0.pos_embed.weight"]
    cfg = dict(model.pretrained_cfg, state_dict=state, num_classes=10)
    with pytest.raises(CheckpointError) as err:
        hub.load_pretrained(model, cfg, num_classes=10, filter_fn=None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "2 keys the model needs are missing" in msg and "'stages.0.0.pos_embed.weight'" in msg
    assert "1 keys are not in the model (first: 'extra.weight')" in msg


def test_failing_filter_gives_one_sentence():
    model = timm.create_model("biformer_tiny", **SMALL)

    def broken_filter(state_dict, model):
        return {k: state_dict[k + ".missing"] for k in state_dict}

    cfg = dict(model.pretrained_cfg, state_dict=model.state_dict(), num_classes=10)
    with pytest.raises(CheckpointError, match="checkpoint_filter_fn failed with KeyError"):
        hub.load_pretrained(model, cfg, num_classes=10, filter_fn=broken_filter)


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        timm.create_model(
            "biformer_tiny",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "no.pth")),
            **SMALL,
        )


def test_timm_models_are_untouched(tmp_path):
    """Non-zoo architectures go to timm's own loader (its errors, its behaviour)."""
    import timm.models._builder as builder

    assert getattr(builder.load_pretrained, "_visionzoo_hook", False)
    ref = timm.create_model("resnet10t", num_classes=3)
    torch.save(ref.state_dict(), tmp_path / "r.pth")
    model = timm.create_model(
        "resnet10t",
        pretrained=True,
        num_classes=3,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "r.pth"), num_classes=3),
    )
    assert torch.equal(model.fc.weight, ref.fc.weight)
    bad = {k: v for k, v in ref.state_dict().items() if not k.startswith("layer1")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError) as err:
        timm.create_model(
            "resnet10t",
            pretrained=True,
            num_classes=3,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.pth"), num_classes=3),
        )
    assert not isinstance(err.value, CheckpointError)


def test_install_is_idempotent():
    import timm.models._builder as builder

    before = builder.load_pretrained
    hub.install()
    assert builder.load_pretrained is before


# ----------------------------------------------------------------------------------------------- our weights
def test_save_pretrained_local_dir_round_trip(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", **SMALL).eval()
    labels = [f"class_{i}" for i in range(10)]
    out = visionzoo.save_pretrained(model, tmp_path / "mine", label_names=labels)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.num_classes == 10 and len(loaded.stages[2]) == 1
    assert loaded.pretrained_cfg["label_names"] == labels
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_pretrained_without_model_args_is_caught(tmp_path):
    model = timm.create_model("biformer_tiny", **SMALL)
    del model._model_args  # e.g. a model assembled by hand: the config would rebuild the default depths
    with pytest.raises(ConfigError, match="pass model_args"):
        visionzoo.save_pretrained(model, tmp_path / "x")
    visionzoo.save_pretrained(
        model, tmp_path / "y", model_args=dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 128, 256])
    )


def test_local_dir_with_broken_weights_is_one_sentence(tmp_path):
    model = timm.create_model("biformer_tiny", **SMALL)
    out = visionzoo.save_pretrained(model, tmp_path / "mine")
    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items() if not k.startswith("stages.3")}
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks .* keys") as err:
        timm.create_model(f"local-dir:{out}", pretrained=True)
    assert "\n" not in str(err.value)
