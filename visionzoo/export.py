"""Export a model to ONNX, TorchScript or ``torch.export`` and check the result against eager PyTorch.

* ``onnx``: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``; the dynamo exporter
  needs the ``onnxscript`` package), opset 17, a dynamic batch axis; ``check`` runs the file in onnxruntime (CPU)
  on a batch of 2 and compares with eager. Modules with a ``dense_ratio`` attribute (BiFormer's routing attention)
  are exported in their routed form (``topk`` + ``index_select``): the masked dense shortcut builds its mask with
  an in-place boolean ``scatter_`` that this exporter cannot convert. Same math; the result is compared.
* ``torchscript``: ``torch.jit.script`` under ``timm.layers.set_scriptable(True)``. A model registered with
  ``not_scriptable=...`` (e.g. BiFormer) is refused with one sentence up front.
* ``torch_export``: ``torch.export.export`` with a dynamic batch dimension (static when that fails), saved with
  ``torch.export.save`` (``.pt2``); ``check`` reloads the file and compares.

Comparisons use the relative error ``||y - y_ref|| / ||y_ref||`` (tolerance 1e-4) and report the max abs diff.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import VisionZooError

__all__ = ["FORMATS", "ExportError", "export_model", "not_scriptable_reason", "scriptable"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
RTOL = 1e-4


class ExportError(VisionZooError, RuntimeError):
    """A model cannot be exported in the requested format, or the exported file disagrees with eager."""


def not_scriptable_reason(name: str) -> str | None:
    """Why the zoo model's registration says TorchScript does not support it (None: it does, or not a zoo model)."""
    from .models import model_info, zoo_model_names

    arch = name.split(".")[0]
    return model_info(arch).not_scriptable if arch in zoo_model_names() else None


def scriptable(name: str) -> bool:
    """Whether TorchScript supports the model, as its registration says (models outside the zoo: True)."""
    return not_scriptable_reason(name) is None


@contextlib.contextmanager
def _routed_form(model: nn.Module) -> Iterator[None]:
    saved = [(m, m.dense_ratio) for m in model.modules() if hasattr(m, "dense_ratio")]
    for m, _ in saved:
        m.dense_ratio = 0.0
    try:
        yield
    finally:
        for m, value in saved:
            m.dense_ratio = value


def _compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    out, ref = out.detach().float(), ref.detach().float()
    if out.shape != ref.shape:
        raise ExportError(
            f"the exported model returns shape {tuple(out.shape)}, eager returns {tuple(ref.shape)}."
        )
    rel = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    return {"max_abs_diff": (out - ref).abs().max().item(), "rel_error": rel}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def export_model(
    model: nn.Module,
    fmt: str,
    output: str | Path,
    input_size: tuple[int, int, int],
    check: bool = False,
    name: str | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Export ``model`` (put in eval mode) to ``output``; returns ``{'format', 'output', 'bytes', 'check': ...}``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    name = name or model.pretrained_cfg.get("architecture", type(model).__name__)
    model = model.eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, *input_size, generator=generator)
    x2 = torch.randn(2, *input_size, generator=generator)
    result: dict[str, Any] = {
        "model": name,
        "format": fmt,
        "output": str(output),
        "input_size": list(input_size),
    }

    if fmt == "onnx":
        _export_onnx(model, x, output, opset, name)
        if check:
            result["check"] = _check_onnx(model, output, x2)
    elif fmt == "torchscript":
        reason = not_scriptable_reason(name)
        if reason is not None:
            raise ExportError(
                f"{name} cannot be exported to TorchScript ({reason}); use --format onnx or --format torch_export."
            )
        from timm.layers import set_scriptable

        try:
            with set_scriptable(True), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scripted = torch.jit.script(model)
            scripted.save(str(output))
        except Exception as e:  # noqa: BLE001 -- the scripting compiler's report is long; one sentence
            raise ExportError(
                f"{name} cannot be scripted ({type(e).__name__}: {_first_line(e)}); use --format onnx or torch_export."
            ) from None
        if check:
            loaded = torch.jit.load(str(output))
            with torch.no_grad():
                result["check"] = _compare(loaded(x2), model(x2))
    else:
        ep, dynamic = _export_program(model, x2, name)
        torch.export.save(ep, str(output))
        result["dynamic_batch"] = dynamic
        if check:
            loaded = torch.export.load(str(output)).module()
            with torch.no_grad():
                result["check"] = _compare(loaded(x2), model(x2))

    result["bytes"] = output.stat().st_size
    if check:
        result["check"]["passed"] = result["check"]["rel_error"] <= RTOL
        if not result["check"]["passed"]:
            raise ExportError(
                f"the exported {name} ({output}) disagrees with eager PyTorch: relative error "
                f"{result['check']['rel_error']:.2e} > {RTOL:.0e} (max abs diff {result['check']['max_abs_diff']:.2e})."
            )
    return result


def _export_onnx(model: nn.Module, x: torch.Tensor, output: Path, opset: int, name: str) -> None:
    try:
        with _routed_form(model), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(output),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    except Exception as e:  # noqa: BLE001
        output.unlink(missing_ok=True)
        raise ExportError(
            f"{name} could not be exported to ONNX ({type(e).__name__}: {_first_line(e)})."
        ) from None


def _check_onnx(model: nn.Module, output: Path, x: torch.Tensor) -> dict[str, float]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--check for ONNX needs onnxruntime: pip install onnxruntime.") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    return _compare(torch.from_numpy(out), ref)


def _export_program(model: nn.Module, x: torch.Tensor, name: str):
    from torch.export import Dim

    errors = []
    for dynamic in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shapes = ({0: Dim("batch", min=1, max=4096)},) if dynamic else None
                return torch.export.export(model, (x,), dynamic_shapes=shapes), dynamic
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    raise ExportError(
        f"{name} could not be exported with torch.export ({type(errors[-1]).__name__}: {_first_line(errors[-1])})."
    ) from None
