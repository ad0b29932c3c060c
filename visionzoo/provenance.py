"""Where a run's numbers come from, so a reader can tell two papers' numbers apart.

``metrics.json`` keeps every metric as a flat ``"<prefix>/<name>": float`` entry and adds, under keys that start
with ``_`` (never a metric):

* ``_splits``: per split (``train``, ``val``, ``test``) its ``source`` (folder or hold-out rule), ``size`` (images it
  holds), ``sha256`` (of its file list relative to the dataset root, with labels, or of the indices/generator
  settings for built-in data) and, where corrupt files were left out, ``excluded``;
* ``_metrics_from``: per metric prefix (``val/``, ``test/``, ``test_last/``, ``test_best/``) the split it was
  computed on, the checkpoint (``best``/``last``/a path) and how many images the last pass really covered
  (``evaluated``; fewer than ``size`` under ``limit_*_batches``);
* ``_run``: git commit (``unknown`` outside a git checkout; ``dirty`` when tracked files were modified), package
  versions and seeds. The same ``_run`` record is written to ``provenance.json`` in the run folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = [
    "EvalCounter",
    "fingerprint",
    "package_versions",
    "run_record",
    "split_entry",
    "split_info",
    "write_metrics",
]

PACKAGES = ("torch", "torchvision", "timm", "lightning", "visionzoo")


def fingerprint(items: Iterable[str]) -> str:
    """SHA-256 of the items, one per line, in the order given (the order the split is evaluated in)."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def split_entry(source: str, items: list[str], **extra: Any) -> dict[str, Any]:
    """``{"source", "size", "sha256", **extra}`` of one split whose samples are described by ``items``."""
    return {"source": source, "size": len(items), "sha256": fingerprint(items), **extra}


def split_info(datamodule: Any) -> dict[str, dict[str, Any]]:
    """The DataModule's ``split_info()``; for one without it, the sizes it has built and ``sha256: unknown``."""
    method = getattr(datamodule, "split_info", None)
    if callable(method):
        try:
            return method()
        except NotImplementedError:
            pass
    out: dict[str, dict[str, Any]] = {}
    for split in ("train", "val", "test"):
        ds = getattr(datamodule, f"{split}_dataset", None)
        if ds is not None:
            out[split] = {"source": "unknown", "size": len(ds), "sha256": "unknown"}
    return out


def same_images(splits: Mapping[str, Mapping[str, Any]], a: str, b: str) -> bool:
    """True when splits ``a`` and ``b`` are known to be the very same images (same non-empty fingerprint)."""
    sa, sb = splits.get(a, {}).get("sha256"), splits.get(b, {}).get("sha256")
    return sa not in (None, "unknown") and sa == sb


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(path: Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout holding this package, or ``{"commit": "unknown"}``."""
    where = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def run_record(cfg: Any, datamodule: Any = None) -> dict[str, Any]:
    """Code and seeds of a run: git state, package versions, ``seed``, ``data.seed`` and the shuffle seed."""
    data = cfg.get("data") or {}
    seeds = {
        "seed": cfg.get("seed"),
        "data.seed": data.get("seed") if hasattr(data, "get") else None,
        "shuffle_seed": getattr(datamodule, "shuffle_seed", None),
    }
    return {
        "git": git_state(),
        "packages": package_versions(),
        "seeds": seeds,
        "data": str(data.get("_target_", "")) if hasattr(data, "get") else "",
        "model": str(cfg.model.get("name", "")) if cfg.get("model") is not None else "",
    }


def write_metrics(
    out_dir: Path,
    metrics: Mapping[str, float],
    splits: Mapping[str, Any],
    metrics_from: Mapping[str, Any],
    run: Mapping[str, Any],
) -> None:
    """``metrics.json`` (metrics + ``_splits``, ``_metrics_from``, ``_run``) and ``provenance.json`` in ``out_dir``."""
    doc: dict[str, Any] = dict(sorted(metrics.items()))
    doc["_splits"] = dict(splits)
    doc["_metrics_from"] = dict(metrics_from)
    doc["_run"] = dict(run)
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out_dir / "provenance.json").write_text(json.dumps(dict(run), indent=2, default=str) + "\n")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for key in ("image", "images", "pid", "mask", "target"):
            if isinstance(batch.get(key), torch.Tensor):
                return int(batch[key].shape[0])
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            if isinstance(item, torch.Tensor):
                return int(item.shape[0])
            if isinstance(item, list | tuple):
                return len(item)
    return 0


class EvalCounter(L.Callback):
    """Counts the images of the last validation and test pass (summed over processes): ``evaluated``."""

    def __init__(self) -> None:
        self._counts = {"validate": 0, "test": 0}
        self.evaluated: dict[str, int] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts["validate"] = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts["test"] = 0

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._counts["validate"] += _batch_size(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._counts["test"] += _batch_size(batch)

    def _total(self, trainer: L.Trainer, stage: str) -> int:
        n = torch.tensor(float(self._counts[stage]))
        if trainer.world_size > 1:
            n = trainer.strategy.reduce(n.to(trainer.strategy.root_device), reduce_op="sum")
        return int(round(float(n)))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.evaluated["val"] = self._total(trainer, "validate")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluated["test"] = self._total(trainer, "test")
