"""timm's model checks, run over every model ``visionzoo.list_models()`` returns.

The model list is read at collection time, so a new family is checked the day it registers.
timm's ``davit_tiny`` (at reduced size) always runs as a sanity parameter, so the suite proves it
works even while the zoo is empty.  Per-model settings (small input, small-construct kwargs,
segmenter, not scriptable) are declared in the family module; see ``tests/conformance.py``.
"""

from __future__ import annotations

import copy
import sys
import types

import conformance
import pytest
import timm
import timm.models._registry as timm_registry
import torch

import visionzoo
import visionzoo.models._registry as zoo_registry
from visionzoo.models import NameCollisionError, register_zoo_model

ZOO_MODELS = visionzoo.list_models()
SANITY_MODELS = ["davit_tiny"]  # timm's own, small via conformance.OVERRIDES

MODELS = [pytest.param(n, id=f"sanity-{n}") for n in SANITY_MODELS] + [
    pytest.param(n, id=n) for n in ZOO_MODELS
]

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("model_name", MODELS)
def test_forward(model_name):
    conformance.check_forward(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_backward(model_name):
    conformance.check_backward(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_default_cfg(model_name):
    conformance.check_default_cfg(model_name)


@pytest.mark.parametrize("model_name", [pytest.param(n, id=n) for n in ZOO_MODELS])
def test_pretrained_metadata(model_name):
    conformance.check_pretrained_metadata(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_features_only(model_name):
    conformance.check_features_only(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_forward_intermediates(model_name):
    conformance.check_forward_intermediates(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_scriptable(model_name):
    conformance.check_scriptable(model_name)


# ----------------------------------------------------------------------------------------------
# 7. registry: the zoo never takes or shadows a name
@pytest.fixture
def scratch_registry(monkeypatch):
    """Run registrations against copies of timm's and the zoo's registry tables, restored afterwards.

    If the collision guard were broken, a failing test must not leave timm's own entries hijacked
    for the rest of the session.
    """
    for attr, value in list(vars(timm_registry).items()):
        if attr.startswith("_") and not attr.startswith("__") and isinstance(value, (dict, set)):
            monkeypatch.setattr(timm_registry, attr, copy.deepcopy(value))
    monkeypatch.setattr(zoo_registry, "_ZOO_MODELS", dict(zoo_registry._ZOO_MODELS))

    def fake_module(name):
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return fake_module


def _entrypoint(name, module_name):
    def fn(pretrained=False, **kwargs):
        raise NotImplementedError

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = module_name
    return fn


def test_registry_refuses_timm_name(scratch_registry):
    timm_fn = timm_registry._model_entrypoints["resnet18"]
    assert timm_fn.__module__ == "timm.models.resnet"
    scratch_registry("visionzoo.models.zz_conformance_fake")
    with pytest.raises(NameCollisionError):
        register_zoo_model(_entrypoint("resnet18", "visionzoo.models.zz_conformance_fake"))
    assert timm_registry._model_entrypoints["resnet18"] is timm_fn
    assert timm_registry._model_to_module["resnet18"] == "resnet"
    assert "resnet18" not in zoo_registry._ZOO_MODELS
    assert timm.models.get_pretrained_cfg("resnet18").hf_hub_id, "resnet18's pretrained tags were dropped"


def test_registry_refuses_zoo_vs_zoo_name(scratch_registry):
    name = "zz_conformance_dummy_model"
    assert not timm.is_model(name)
    for module_name in ("visionzoo.models.zz_fake_a", "visionzoo.models.zz_fake_b"):
        scratch_registry(module_name)
    register_zoo_model(_entrypoint(name, "visionzoo.models.zz_fake_a"))
    assert timm.is_model(name) and name in zoo_registry.zoo_model_names()
    with pytest.raises(NameCollisionError):
        register_zoo_model(_entrypoint(name, "visionzoo.models.zz_fake_b"))
    assert timm_registry._model_entrypoints[name].__module__ == "visionzoo.models.zz_fake_a"


def test_list_models_is_the_zoo_registry():
    assert visionzoo.list_models() == sorted(zoo_registry._ZOO_MODELS)
    missing = sorted(set(ZOO_MODELS) - set(visionzoo.list_models()))
    assert not missing, f"collected zoo models no longer registered: {missing}"


def test_zoo_names_are_timm_models_and_shadow_nothing():
    timm_names = set(timm.list_models())
    timm_modules = {
        m.rsplit(".", 1)[-1]
        for m in sys.modules
        if m.startswith("timm.models.") and not m.startswith("timm.models._")
    }
    for name, info in zoo_registry._ZOO_MODELS.items():
        module_name = info.module
        assert name in timm_names, f"{name}: not in timm.list_models()"
        fn = timm_registry._model_entrypoints[name]
        assert fn.__module__ == module_name and module_name.startswith("visionzoo."), (
            f"{name}: timm's entrypoint comes from {fn.__module__}, the zoo registered it from {module_name}"
        )
        short = module_name.rsplit(".", 1)[-1]
        assert timm_registry._model_to_module[name] == short
        assert short not in timm_modules, (
            f"{name}: module name '{short}' equals a timm module, so list_models(module='{short}') mixes them"
        )
        owners = [m for m, mod in list(sys.modules.items()) if m.startswith("timm.") and hasattr(mod, name)]
        assert not owners, f"{name}: shadows a timm built-in defined in {owners}"


def test_no_unguarded_registration():
    """Every timm entry defined in visionzoo went through register_zoo_model (not plain register_model)."""
    unguarded = sorted(
        name
        for name, fn in timm_registry._model_entrypoints.items()
        if fn.__module__.startswith("visionzoo")
        and getattr(zoo_registry._ZOO_MODELS.get(name), "module", None) != fn.__module__
    )
    assert not unguarded, f"registered with timm.register_model, bypassing the collision guard: {unguarded}"


# ----------------------------------------------------------------------------------------------
# The checks themselves: each must fail on a model broken the way real ports break.
def _patch_davit_init(monkeypatch, after_init):
    from timm.models import davit

    original = davit.DaVit.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        after_init(self)

    monkeypatch.setattr(davit.DaVit, "__init__", patched)


def test_checks_catch_batch_mixing(monkeypatch):
    from timm.models import davit

    original = davit.Stem.forward
    monkeypatch.setattr(davit.Stem, "forward", lambda self, x: original(self, x + x.mean(0, keepdim=True)))
    with pytest.raises(AssertionError, match="sample 0 alone"):
        conformance.check_forward("davit_tiny")


def test_checks_catch_unused_parameter(monkeypatch):
    _patch_davit_init(
        monkeypatch, lambda m: m.register_parameter("orphan", torch.nn.Parameter(torch.zeros(1)))
    )
    with pytest.raises(AssertionError, match=r"no gradient: \['orphan'\]"):
        conformance.check_backward("davit_tiny")


def test_checks_catch_list_num_features(monkeypatch):
    _patch_davit_init(monkeypatch, lambda m: setattr(m, "num_features", [32, 64, 128, 256]))
    with pytest.raises(AssertionError, match="num_features must be an int"):
        conformance.check_default_cfg("davit_tiny")


def test_declarations_reject_unknown_keys(monkeypatch):
    monkeypatch.setitem(conformance.OVERRIDES, "davit_*", {"input_sizes": (3, 64, 64)})
    with pytest.raises(AssertionError, match="unknown CONFORMANCE keys"):
        conformance.declaration("davit_tiny")


def test_segmenter_declaration_skips_cfg_and_features(monkeypatch):
    monkeypatch.setitem(conformance.OVERRIDES, "davit_*", {"task": "segmentation"})
    for check in (conformance.check_default_cfg, conformance.check_features_only):
        with pytest.raises(pytest.skip.Exception, match="segmentation"):
            check("davit_tiny")


def test_family_module_declaration_wins_over_overrides(monkeypatch):
    from timm.models import davit

    monkeypatch.setattr(
        davit, "CONFORMANCE", {"davit_*": {"input_size": (3, 32, 32), "torchscript": False}}, raising=False
    )
    decl = conformance.declaration("davit_tiny")
    assert decl.input_size == (3, 32, 32) and decl.torchscript is False
    assert (
        decl.kwargs == conformance.OVERRIDES["davit_tiny"]["kwargs"]
    )  # untouched keys still come from OVERRIDES
