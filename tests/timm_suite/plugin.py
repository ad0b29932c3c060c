"""pytest plugin for timm's ``tests/test_models.py`` run over the zoo (``-p tests.timm_suite.plugin``).

* imports visionzoo before timm's file is collected, so its module-level ``list_models`` calls see the zoo;
* keeps only the cases parametrised with a zoo model name (timm's own models are timm's business);
* runs the two tests that would download weights (``test_model_load_pretrained``, ``test_model_features_pretrained``)
  offline: before each, a weight file for the tag is made from a freshly built model (the zoo's own key names) and
  put where ``visionzoo.hub`` caches that tag's URL (a zip holding it for zip assets), with
  ``VISIONZOO_OFFLINE=1`` and ``VISIONZOO_CACHE`` pointing at a temporary folder; so timm's real pretrained path
  runs (file read, checkpoint filter, ``in_chans=1`` stem adaptation, classifier reset), only the bytes are local;
* turns exactly these failures into ``xfailed``, everything else counts:
  - a segmenter's ``test_model_backward`` / ``test_model_backward_fx`` failing only at the final classifier-shape
    assertion (a ``(B, num_classes, H, W)`` output has no ``num_classes`` on the last axis), i.e. after every
    parameter got a gradient;
  - "No gradient for <p>" where ``<p>`` is one of the model's ``auxiliary_only`` weights (trained by the paper
    only through an auxiliary loss, e.g. Sparsifiner's mask predictor);
  - ``test_model_forward_torchscript`` / ``test_model_forward_fx_torchscript`` for a model whose family says why it is not scriptable (strict: a pass
    then fails, so the record stays true);
* prints one line per zoo model: passed / failed / allowed.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
import timm
import torch

import visionzoo
from visionzoo.models import model_info

NETWORK_TESTS = {"test_model_load_pretrained", "test_model_features_pretrained"}
BACKWARD_TESTS = {"test_model_backward", "test_model_backward_fx"}
# the last shape assertion of each backward test, as written in timm's file
CLASSIFIER_SHAPE_ASSERTS = (
    "assert outputs.shape[-1] == 42",
    "assert outputs.shape[feat_axis] == output_features",
)
TORCHSCRIPT_TESTS = {"test_model_forward_torchscript", "test_model_forward_fx_torchscript"}
NO_GRAD = re.compile(r"No gradient for (\S+)")

_ZOO = set(visionzoo.list_models())
_outcomes: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))


def _model_name(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("model_name") if callspec else None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = _model_name(item)
        if name is None or name.split(".")[0] not in _ZOO:
            drop.append(item)
            continue
        info = model_info(name)
        if item.originalname in TORCHSCRIPT_TESTS and not info.scriptable:
            item.add_marker(pytest.mark.xfail(reason=f"not scriptable: {info.not_scriptable}", strict=True))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_configure(config):
    cache = Path(tempfile.mkdtemp(prefix="visionzoo-timm-suite-weights-"))
    os.environ["VISIONZOO_CACHE"] = str(cache)
    os.environ["VISIONZOO_OFFLINE"] = "1"


def _make_local_weights(tag: str) -> None:
    """A weight file for pretrained ``tag`` at the exact place the hub looks for its URL's download."""
    from visionzoo import hub

    cfg = timm.get_pretrained_cfg(tag).to_dict()
    if not cfg.get("url"):
        raise AssertionError(f"{tag}: pretrained without a url; the offline stand-in covers url weights only")
    source = hub.weights_source(cfg)
    if hub.cached_file(source) is not None:
        return
    torch.manual_seed(0)
    state = timm.create_model(tag, pretrained=False).state_dict()
    source.cache_path.parent.mkdir(parents=True, exist_ok=True)
    if source.member:
        staged = source.cache_path.with_suffix(".member")
        torch.save(state, staged)
        with zipfile.ZipFile(source.cache_path, "w") as zf:
            zf.write(staged, source.member)
        staged.unlink()
    else:
        torch.save(state, source.cache_path)


def pytest_runtest_setup(item):
    name = _model_name(item)
    if name is not None and item.originalname in NETWORK_TESTS:
        _make_local_weights(name)


def _allowed_failure(item, excinfo) -> str | None:
    """The documented reason this failure is allowed, or None when it counts."""
    info = model_info(_model_name(item))
    if item.originalname not in BACKWARD_TESTS or not excinfo.errisinstance(AssertionError):
        return None
    message = str(excinfo.value)
    missing = NO_GRAD.search(message)
    if missing and info.auxiliary_only:
        param = missing.group(1)
        if any(param.startswith(p) or f".{p}" in f".{param}" for p in info.auxiliary_only):
            return f"{param} is trained only by the paper's auxiliary loss (no gradient from the task output)"
    if info.task == "segmentation":
        failing_line = str(excinfo.traceback[-1].statement).strip()
        if failing_line in CLASSIFIER_SHAPE_ASSERTS:
            return "segmenter output is (B, num_classes, H, W): only the classifier-shape assertion failed"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    name = _model_name(item)
    if name is not None:
        name = name.split(".")[0]  # one summary line per architecture, its pretrained tags included
    if name is None or report.when != "call":
        if report.failed and name is not None:
            _outcomes[name]["failed"].append(f"{item.originalname} ({report.when})")
        return
    if report.failed and call.excinfo is not None:
        reason = _allowed_failure(item, call.excinfo)
        if reason:
            report.outcome = "skipped"
            report.wasxfail = reason
    if report.failed:
        _outcomes[name]["failed"].append(item.originalname)
    elif hasattr(report, "wasxfail"):
        _outcomes[name]["allowed"].append(item.originalname)
    elif report.skipped:
        _outcomes[name]["skipped"].append(item.originalname)
    else:
        _outcomes[name]["passed"].append(item.originalname)


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    tr = terminalreporter
    tr.section("timm test_models.py per zoo model")
    for name in sorted(_outcomes):
        o = _outcomes[name]
        line = f"{name:26s} passed {len(o['passed']):2d}  failed {len(o['failed']):2d}  allowed {len(o['allowed']):2d}"
        if o["skipped"]:
            line += f"  skipped {len(o['skipped'])}"
        if o["failed"]:
            line += "  | failed: " + ", ".join(o["failed"])
        tr.write_line(line)
