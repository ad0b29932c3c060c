"""The zoo's registry and metadata rules: what timm's own suite (``make test-timm``) does not check.

timm's ``tests/test_models.py`` covers forward, backward, default cfgs, features, intermediates, pruning, FX and
TorchScript for every zoo model; this file keeps the zoo's own contracts: a zoo name never takes or shadows a timm
name, every registration carries its :class:`~visionzoo.models.ZooModelInfo`, and pretrained cfgs carry
provenance.
"""

from __future__ import annotations

import copy
import sys
import types

import pytest
import timm
import timm.models._registry as timm_registry

import visionzoo
import visionzoo.models._registry as zoo_registry
from visionzoo.models import NameCollisionError, model_info, register_zoo_model

ZOO_MODELS = visionzoo.list_models()


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


@pytest.mark.parametrize("model_name", ZOO_MODELS)
def test_pretrained_metadata(model_name):
    """Provenance rules for every pretrained tag: license, paper or origin, mean/std, input_size, our hub org."""
    for tag in [model_name, *timm.list_pretrained(f"{model_name}.*")]:
        cfg = timm.get_pretrained_cfg(tag).to_dict()
        problems = [k for k in ("license",) if not cfg.get(k)]
        if not (cfg.get("paper_ids") or cfg.get("origin_url")):
            problems.append("paper_ids or origin_url")
        input_size = cfg.get("input_size")
        if not (input_size and len(input_size) == 3):
            problems.append("input_size (C, H, W)")
        for key in ("mean", "std"):
            value = cfg.get(key)
            if not value or (input_size and len(value) != input_size[0]):
                problems.append(f"{key} (one value per input channel)")
        assert not problems, f"{tag}: pretrained_cfg lacks {', '.join(problems)}"
        hub_id = cfg.get("hf_hub_id") or ""
        assert not hub_id.startswith("timm/"), f"{tag}: hf_hub_id {hub_id!r} points at timm's org, use ours"


def test_model_info_records():
    tasks = {n: model_info(n).task for n in ZOO_MODELS}
    assert tasks["qtseg"] == tasks["herseg"] == "segmentation"
    assert tasks["biformer_tiny"] == "classification" and tasks["reid_resnet50_lab"] == "reid"
    assert model_info("biformer_tiny.in1k") is model_info("biformer_tiny")
    for name in ZOO_MODELS:
        reason = model_info(name).not_scriptable
        assert reason is None or (len(reason) > 20 and "TODO" not in reason), (
            f"{name}: not_scriptable={reason!r}"
        )
    with pytest.raises(KeyError, match="not a visionzoo model"):
        model_info("resnet18")
