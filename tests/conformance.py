"""Reusable timm-contract checks for zoo models (used by ``tests/test_conformance.py``).

Each ``check_*`` function takes a registered model name, builds the model itself with
``pretrained=False`` and small construction kwargs, and raises ``AssertionError`` (with the
model name in the message) when the model breaks timm's contract, or calls ``pytest.skip``
when a check does not apply.  They mirror what timm's own ``tests/test_models.py`` asserts
(forward, backward, default cfg, features_only, forward_intermediates, torchscript), at small
inputs so that one model runs all checks in well under a minute on 2 CPU cores.

How a model family declares its test settings
---------------------------------------------
Put a plain dict named ``CONFORMANCE`` at the top level of the family module (the module that
holds the ``@register_zoo_model`` entrypoints, e.g. ``visionzoo/models/biformer.py``).  Keys are
model names or ``fnmatch`` patterns; values are dicts with any of these keys::

    CONFORMANCE = {
        "biformer_*": {                                   # every model of the family
            "kwargs": {"depths": [1, 1, 1, 1]},           # small-construct kwargs for create_model
            "input_size": (3, 112, 112),                  # small (C, H, W) test input
        },
        "biformer_base": {"torchscript": False},          # not scriptable: use torch.compile instead
        "biformer_upernet_*": {"task": "segmentation"},   # a segmenter: cfg/features checks skip
    }

* ``kwargs``      -- passed to every ``timm.create_model`` call of the suite.  Use it to shrink
  depth/width so the checks run fast; it must keep the architecture's code paths (e.g. keep at
  least one block per stage).  Default ``{}``.
* ``input_size``  -- the (C, H, W) test input.  Default: the pretrained cfg's ``input_size`` when
  ``fixed_input_size`` is set, else its ``min_input_size`` when given, else ``input_size`` with
  each side clamped to ``DEFAULT_TARGET_SIZE`` (96) px.
* ``task``        -- ``"classification"`` (default) or ``"segmentation"``.  A model is also treated
  as a segmenter when its ``pretrained_cfg`` dict has ``task == "segmentation"`` (timm's
  ``PretrainedCfg`` dataclass rejects unknown fields, so the ``CONFORMANCE`` entry is the
  dependable way).  Segmenters skip the default-cfg and features_only checks with a reason, and
  their backward check looks for ``num_classes`` on dim 1 instead of the last dim.
* ``torchscript`` -- ``True`` (default): ``torch.jit.script`` under ``set_scriptable(True)`` must
  work and match eager.  ``False``: check ``torch.compile(backend="eager")`` instead.

Entries are merged in this order, later winning key by key: ``OVERRIDES`` below (test-side
declarations for models whose module we do not own, such as timm's ``davit_tiny`` sanity model,
or stop-gaps until a family declares its own), then the family module's ``CONFORMANCE``; in each,
pattern entries first, then the exact-name entry.  Unknown keys raise, so typos do not silently
fall back to the defaults.
"""

from __future__ import annotations

import fnmatch
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import timm
import torch
from timm.layers import set_scriptable

__all__ = [
    "DEFAULT_TARGET_SIZE",
    "OVERRIDES",
    "Declaration",
    "check_backward",
    "check_default_cfg",
    "check_features_only",
    "check_forward",
    "check_forward_intermediates",
    "check_pretrained_metadata",
    "check_scriptable",
    "declaration",
    "resolve_input_size",
]

DECLARATION_ATTR = "CONFORMANCE"
DEFAULT_TARGET_SIZE = 96  # px, per side, when a model declares nothing smaller
FWD_BATCH = 2
BWD_BATCH = 2  # >1 so BatchNorm in train mode works at tiny spatial sizes
BWD_NUM_CLASSES = 42
ATOL, RTOL = 1e-5, 1e-4  # timm's tolerance for grad-checkpointing / intermediates equality
BATCH_ATOL, BATCH_RTOL = 1e-4, 1e-4  # per-sample vs batched forward (different GEMM blocking)
SEGMENTATION = "segmentation"

# Test-side declarations, same schema as a family module's ``CONFORMANCE`` dict (which wins over them).
OVERRIDES: dict[str, dict[str, Any]] = {
    # timm's own DaViT at reduced size: the "sanity" model that keeps the suite honest while the
    # zoo is empty.
    "davit_tiny": {
        "kwargs": {"depths": (1, 1, 1, 1), "embed_dims": (32, 64, 128, 256), "num_heads": (1, 2, 4, 8)},
        "input_size": (3, 64, 64),
    },
    # BiFormer (n_win=7, auto_pad=False) needs sides that are multiples of 16 * 7 = 112.  A stop-gap:
    # a CONFORMANCE dict in visionzoo/models/biformer.py overrides it key by key.
    "biformer_*": {"kwargs": {"depths": (1, 1, 1, 1)}, "input_size": (3, 112, 112)},
}

_KNOWN_KEYS = {"kwargs", "input_size", "task", "torchscript"}


@dataclass(frozen=True)
class Declaration:
    """The merged per-model test settings (see the module docstring)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] | None = None
    task: str = "classification"
    torchscript: bool = True

    @property
    def is_segmenter(self) -> bool:
        return self.task == SEGMENTATION


def _family_module(name: str):
    fn = timm.models._registry._model_entrypoints.get(name)
    if fn is None:
        raise AssertionError(f"{name}: not registered with timm")
    return sys.modules.get(fn.__module__)


def _matching_entries(table: dict[str, dict[str, Any]], name: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(table, dict):
        raise AssertionError(f"{where}: {DECLARATION_ATTR} must be a dict, got {type(table).__name__}")
    patterns = [v for k, v in table.items() if k != name and fnmatch.fnmatchcase(name, k)]
    exact = [table[name]] if name in table else []
    entries = patterns + exact
    for entry in entries:
        unknown = set(entry) - _KNOWN_KEYS
        if unknown:
            raise AssertionError(f"{where}: unknown {DECLARATION_ATTR} keys {sorted(unknown)} for {name}")
    return entries


def declaration(name: str) -> Declaration:
    """Merge the family module's ``CONFORMANCE`` entries and ``OVERRIDES`` for ``name``."""
    module = _family_module(name)
    entries = _matching_entries(OVERRIDES, name, "tests/conformance.py OVERRIDES")
    if module is not None:
        entries += _matching_entries(getattr(module, DECLARATION_ATTR, {}), name, module.__name__)
    merged: dict[str, Any] = {}
    for entry in entries:
        merged.update(entry)
    if merged.get("input_size") is not None:
        merged["input_size"] = tuple(merged["input_size"])
        assert len(merged["input_size"]) == 3, f"{name}: input_size must be (C, H, W)"
    assert merged.get("task", "classification") in ("classification", SEGMENTATION), (
        f"{name}: task must be 'classification' or '{SEGMENTATION}', got {merged['task']!r}"
    )
    merged["kwargs"] = dict(merged.get("kwargs") or {})
    return Declaration(name=name, **merged)


def create(decl: Declaration, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model`` with the declared small kwargs (explicit ``kwargs`` win)."""
    return timm.create_model(decl.name, pretrained=False, **{**decl.kwargs, **kwargs})


def resolve_input_size(decl: Declaration, model: torch.nn.Module) -> tuple[int, int, int]:
    """The small (C, H, W) test input for ``model`` (see the module docstring for the order)."""
    if decl.input_size is not None:
        return decl.input_size
    cfg = model.pretrained_cfg
    input_size = tuple(cfg["input_size"])
    if cfg.get("fixed_input_size"):
        return input_size
    if cfg.get("min_input_size"):
        return tuple(cfg["min_input_size"])
    return (input_size[0], *(min(s, DEFAULT_TARGET_SIZE) for s in input_size[1:]))


def _is_segmenter(decl: Declaration, model: torch.nn.Module | None = None) -> bool:
    if decl.is_segmenter:
        return True
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("task") == SEGMENTATION


def _skip_segmenter(decl: Declaration, model: torch.nn.Module | None, what: str) -> None:
    if _is_segmenter(decl, model):
        pytest.skip(f"{decl.name} declares task='{SEGMENTATION}': {what} check does not apply yet")


def _inputs(size: tuple[int, int, int], batch: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, *size)


def _fmt(obj: Any) -> str:
    fmt = getattr(obj, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt))


def _channels(t: torch.Tensor, fmt: str) -> int:
    return t.shape[-1] if (fmt == "NHWC" or t.ndim == 3) else t.shape[1]


def _assert_close(a: torch.Tensor, b: torch.Tensor, msg: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    assert a.shape == b.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        diff = (a - b).abs().max().item()
        raise AssertionError(f"{msg}: max abs diff {diff:.3e} (atol {atol}, rtol {rtol})")


def _no_nan(t: torch.Tensor, msg: str) -> None:
    assert not torch.isnan(t).any(), f"{msg}: output has NaN"
    assert torch.isfinite(t).all(), f"{msg}: output has inf"


def _new_model(decl: Declaration, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return create(decl, **kwargs)


# ----------------------------------------------------------------------------------------------
# 1. forward
def check_forward(name: str) -> None:
    """Eval forward: batch dim, no NaN, per-sample == batched, grad checkpointing leaves it unchanged."""
    decl = declaration(name)
    model = _new_model(decl).eval()
    size = resolve_input_size(decl, model)
    x = _inputs(size, FWD_BATCH)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor), f"{name}: forward returned {type(out).__name__}, not a Tensor"
        assert out.shape[0] == FWD_BATCH, f"{name}: batch dim {out.shape[0]} != {FWD_BATCH}"
        _no_nan(out, name)
        single = model(x[:1])
    _assert_close(single, out[:1], f"{name}: sample 0 alone != sample 0 in a batch", BATCH_ATOL, BATCH_RTOL)

    assert hasattr(model, "set_grad_checkpointing"), f"{name}: no set_grad_checkpointing()"
    with torch.enable_grad():  # checkpointing only engages when autograd records
        ref = model(x).detach()
        model.set_grad_checkpointing()
        ckpt = model(x).detach()
    _assert_close(ckpt, ref, f"{name}: set_grad_checkpointing() changed the output")


# ----------------------------------------------------------------------------------------------
# 2. backward
def check_backward(name: str) -> None:
    """num_classes=42, train mode, mean().backward(): every trainable parameter gets a grad."""
    decl = declaration(name)
    model = _new_model(decl, num_classes=BWD_NUM_CLASSES).train()
    size = resolve_input_size(decl, model)
    out = model(_inputs(size, BWD_BATCH))
    if isinstance(out, (tuple, list)):
        out = torch.cat(list(out))
    class_dim = 1 if _is_segmenter(decl, model) else -1
    assert out.shape[class_dim] == BWD_NUM_CLASSES, (
        f"{name}: output shape {tuple(out.shape)}, expected {BWD_NUM_CLASSES} classes on dim {class_dim}"
    )
    _no_nan(out, name)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: {len(missing)} trainable parameters got no gradient: {missing}"
    nan_grads = [
        n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert not nan_grads, f"{name}: non-finite gradients in {nan_grads}"


# ----------------------------------------------------------------------------------------------
# 3. default cfg / head contract
def check_default_cfg(name: str) -> None:
    """num_features / head_hidden_size / reset_classifier / create_model(num_classes=0, global_pool='')."""
    decl = declaration(name)
    _skip_segmenter(decl, None, "default-cfg")
    model = _new_model(decl).eval()
    _skip_segmenter(decl, model, "default-cfg")
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()  # before reset_classifier() replaces the head

    for attr, minimum in (("num_classes", 0), ("num_features", 1), ("head_hidden_size", 1)):
        value = getattr(model, attr, None)
        assert isinstance(value, int) and not isinstance(value, bool), (
            f"{name}: model.{attr} must be an int, got {type(value).__name__} ({value!r})"
        )
        assert value >= minimum, f"{name}: model.{attr}={value} must be >= {minimum}"
    assert model.num_classes == cfg["num_classes"], f"{name}: num_classes != pretrained_cfg['num_classes']"

    size = resolve_input_size(decl, model)
    x = _inputs(size, 1)
    fmt = _fmt(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim in (3, 4), (
            f"{name}: forward_features gave a {feats.ndim}D tensor (want unpooled 3D/4D)"
        )
        assert _channels(feats, fmt) == model.num_features, (
            f"{name}: forward_features has {_channels(feats, fmt)} channels ({fmt}), num_features={model.num_features}"
        )
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.ndim == 2 and pre.shape[-1] == model.head_hidden_size, (
            f"{name}: forward_head(pre_logits=True) shape {tuple(pre.shape)}, "
            f"head_hidden_size={model.head_hidden_size}"
        )
        logits = model.forward_head(feats)
        assert logits.shape == (1, model.num_classes), f"{name}: forward_head shape {tuple(logits.shape)}"

        model.reset_classifier(7)
        assert model.num_classes == 7, f"{name}: reset_classifier(7) did not update num_classes"
        assert model(x).shape == (1, 7), f"{name}: reset_classifier(7) output shape {tuple(model(x).shape)}"

        model.reset_classifier(0)
        assert model.num_classes == 0, f"{name}: reset_classifier(0) did not update num_classes"
        pooled = model(x)
        assert pooled.ndim == 2 and pooled.shape == pre.shape, (
            f"{name}: reset_classifier(0) output {tuple(pooled.shape)} != pre_logits {tuple(pre.shape)}"
        )

        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.ndim == feats.ndim and unpooled.shape == feats.shape, (
            f"{name}: reset_classifier(0, '') output {tuple(unpooled.shape)} != "
            f"forward_features {tuple(feats.shape)}"
        )

    no_head = _new_model(decl, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        unpooled = no_head(x)
    assert unpooled.shape == feats.shape, (
        f"{name}: create_model(num_classes=0, global_pool='') output {tuple(unpooled.shape)} != "
        f"forward_features {tuple(feats.shape)}"
    )

    for key in ("classifier", "first_conv"):
        names = cfg.get(key)
        assert names, f"{name}: pretrained_cfg['{key}'] is empty"
        for module_name in (names,) if isinstance(names, str) else names:
            assert f"{module_name}.weight" in state_dict, (
                f"{name}: pretrained_cfg['{key}']={module_name!r} but '{module_name}.weight' is not in the state_dict"
            )

    pool_size = cfg.get("pool_size")
    feature_info = getattr(model, "feature_info", None)
    if pool_size and feature_info and not cfg.get("fixed_input_size"):
        reduction = feature_info[-1]["reduction"]
        hw = cfg["input_size"][-2:]
        allowed = {tuple(s // reduction for s in hw), tuple(math.ceil(s / reduction) for s in hw)}
        assert tuple(pool_size) in allowed, (
            f"{name}: pool_size {tuple(pool_size)} does not match input_size {tuple(hw)} / reduction {reduction}"
        )


def check_pretrained_metadata(name: str) -> None:
    """The zoo's provenance rules: license, paper_ids or origin_url, mean/std, input_size, own hub org."""
    decl = declaration(name)
    cfg = _new_model(decl).pretrained_cfg
    problems = []
    if not cfg.get("license"):
        problems.append("license")
    if not (cfg.get("paper_ids") or cfg.get("origin_url")):
        problems.append("paper_ids or origin_url")
    input_size = cfg.get("input_size")
    if not (input_size and len(input_size) == 3):
        problems.append("input_size (C, H, W)")
    for key in ("mean", "std"):
        value = cfg.get(key)
        if not value or (input_size and len(value) != input_size[0]):
            problems.append(f"{key} (one value per input channel)")
    assert not problems, f"{name}: pretrained_cfg lacks {', '.join(problems)}"
    hub_id = cfg.get("hf_hub_id") or ""
    assert not hub_id.startswith("timm/"), f"{name}: hf_hub_id {hub_id!r} points at timm's org, use ours"


# ----------------------------------------------------------------------------------------------
# 4. features_only
def check_features_only(name: str) -> None:
    """features_only=True: >=3 levels (4 expected), channels/reductions match feature_info, sane sizes."""
    decl = declaration(name)
    _skip_segmenter(decl, None, "features_only")
    model = _new_model(decl, features_only=True).eval()
    _skip_segmenter(decl, model, "features_only")
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    assert len(channels) >= 3, f"{name}: features_only gives {len(channels)} levels, need >= 3 (4 expected)"
    if len(channels) < 4:
        warnings.warn(f"{name}: only {len(channels)} feature levels, timm expects 4", stacklevel=2)
    for r in reductions:
        assert r >= 1 and (r & (r - 1)) == 0, f"{name}: feature reductions {reductions} are not powers of two"
    assert reductions == sorted(reductions), f"{name}: feature reductions {reductions} are not increasing"

    size = resolve_input_size(decl, model)
    fmt = _fmt(model)
    with torch.no_grad():
        outs = model(_inputs(size, 1))
    assert len(outs) == len(channels), f"{name}: {len(outs)} feature maps, feature_info has {len(channels)}"
    for i, (o, c, r) in enumerate(zip(outs, channels, reductions)):
        assert o.ndim == 4 and o.shape[0] == 1, f"{name}: level {i} shape {tuple(o.shape)}"
        assert _channels(o, fmt) == c, (
            f"{name}: level {i} has {_channels(o, fmt)} channels, feature_info says {c}"
        )
        spatial = o.shape[1:3] if fmt == "NHWC" else o.shape[2:]
        for s, full in zip(spatial, size[1:]):
            assert 1 <= s <= math.ceil(full / r) + 1, (
                f"{name}: level {i} spatial {tuple(spatial)} too large for input {size[1:]} at reduction {r}"
            )
        _no_nan(o, f"{name} level {i}")

    if len(channels) >= 2:  # out_indices selects levels (what segmentation necks rely on)
        n = len(channels)
        sub = _new_model(decl, features_only=True, out_indices=(n - 2, n - 1))
        assert sub.feature_info.channels() == channels[-2:], (
            f"{name}: out_indices=({n - 2}, {n - 1}) gives channels {sub.feature_info.channels()}, want {channels[-2:]}"
        )


# ----------------------------------------------------------------------------------------------
# 5. forward_intermediates
def check_forward_intermediates(name: str) -> None:
    """forward_intermediates final == forward_features; one map per feature_info entry; ckpt equality."""
    decl = declaration(name)
    model = _new_model(decl).eval()
    assert hasattr(model, "forward_intermediates"), f"{name}: no forward_intermediates()"
    size = resolve_input_size(decl, model)
    x = _inputs(size, 1)
    n_info = len(model.feature_info)
    with torch.enable_grad():
        feats = model.forward_features(x).detach()
        result = model.forward_intermediates(x)
        assert isinstance(result, (tuple, list)) and len(result) == 2, (
            f"{name}: forward_intermediates(x) must return (final, intermediates)"
        )
        final, inters = result
        final, inters = final.detach(), [t.detach() for t in inters]
        only = [t.detach() for t in model.forward_intermediates(x, intermediates_only=True)]
        last = [t.detach() for t in model.forward_intermediates(x, indices=1, intermediates_only=True)]
        model.set_grad_checkpointing()
        ckpt_final, ckpt_inters = model.forward_intermediates(x)

    _assert_close(final, feats, f"{name}: forward_intermediates final output != forward_features")
    assert len(inters) == n_info, f"{name}: {len(inters)} intermediates, feature_info has {n_info}"
    assert len(only) == n_info, f"{name}: intermediates_only=True gave {len(only)}, feature_info has {n_info}"
    for i, (a, b, info) in enumerate(zip(inters, only, model.feature_info)):
        assert a.shape[1] == info["num_chs"], (
            f"{name}: intermediate {i} has {a.shape[1]} channels, want {info['num_chs']}"
        )
        _assert_close(b, a, f"{name}: intermediates_only intermediate {i}")
    assert len(last) == 1, f"{name}: indices=1 gave {len(last)} intermediates"
    _assert_close(last[0], inters[-1], f"{name}: indices=1 intermediate != last intermediate")
    _assert_close(
        ckpt_final.detach(), final, f"{name}: grad checkpointing changed forward_intermediates final"
    )
    for i, (a, b) in enumerate(zip(ckpt_inters, inters)):
        _assert_close(a.detach(), b, f"{name}: grad checkpointing changed intermediate {i}")

    getter = _new_model(decl, features_only=True, feature_cls="getter").eval()
    with torch.no_grad():
        got = getter(x)
    assert [t.shape for t in got] == [t.shape for t in inters], (
        f"{name}: feature_cls='getter' shapes {[tuple(t.shape) for t in got]} != "
        f"intermediates {[tuple(t.shape) for t in inters]}"
    )


# ----------------------------------------------------------------------------------------------
# 6. torchscript / torch.compile
def _jit_error_summary(e: Exception) -> str:
    """First line of a TorchScript error plus the source location it names."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    summary = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
    where = next((ln for ln in lines if ln.startswith('File "')), None)
    if where:
        summary += f" at {where}"
    if "Can't redefine method" in summary:
        summary += " -- an earlier scripting failure of this class in the same process; run this test alone"
    return summary


def check_scriptable(name: str) -> None:
    """torch.jit.script under set_scriptable(True) (or torch.compile(backend='eager')) == eager."""
    decl = declaration(name)
    if decl.torchscript:
        with set_scriptable(True):
            model = _new_model(decl).eval()
        size = resolve_input_size(decl, model)
        x = _inputs(size, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.script is deprecated in torch >= 2.9
            try:
                compiled = torch.jit.script(model)
            except Exception as e:  # noqa: BLE001 - report any scripting failure the same way
                raise AssertionError(
                    f"{name}: torch.jit.script failed ({_jit_error_summary(e)}); "
                    f"fix it or declare {{'torchscript': False}} in the family's {DECLARATION_ATTR}"
                ) from None
        how = "torch.jit.script"
    else:
        model = _new_model(decl).eval()
        size = resolve_input_size(decl, model)
        x = _inputs(size, 1)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager")
        how = "torch.compile(backend='eager')"
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    assert out.shape[0] == 1, f"{name}: {how} batch dim {out.shape[0]}"
    _no_nan(out, f"{name} {how}")
    _assert_close(out, ref, f"{name}: {how} output != eager")
