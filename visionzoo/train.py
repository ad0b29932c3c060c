"""``run(cfg)``: build datamodule, model, task and trainer from a composed Hydra config, then fit and test.

The order matters: the dataset root is checked and the model/data pairing validated before
anything expensive is built, so configuration mistakes end in one sentence within a second.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .tasks import ClassificationTask

log = logging.getLogger("visionzoo")

TASKS_NEEDING_CLASSIFIER = {"classification"}
KNOWN_TASKS = {"classification", "segmentation", "reid"}


def model_task(model_name: str) -> str:
    """The task a registered model is built for: ``pretrained_cfg['task']`` if set, else classification."""
    cfg = timm.get_pretrained_cfg(model_name, allow_unregistered=True)
    task = getattr(cfg, "task", None) if cfg is not None else None
    if task is None and cfg is not None:
        task = (cfg.to_dict() if hasattr(cfg, "to_dict") else {}).get("task")
    return task or "classification"


def check_model_data_pairing(cfg: DictConfig) -> str:
    """Fail early, in one sentence, when the model cannot serve the dataset's task."""
    data_task = cfg.data.get("task")
    if data_task is None:
        raise ConfigError(f"data config '{cfg.data.get('_target_')}' does not declare its 'task'.")
    if data_task not in KNOWN_TASKS:
        raise ConfigError(f"data.task '{data_task}' is unknown; expected one of {sorted(KNOWN_TASKS)}.")
    name = cfg.model.name
    if not timm.is_model(name):
        raise ConfigError(f"model.name '{name}' is not a registered timm or visionzoo model; see `visionzoo list`.")
    task = model_task(name)
    head = cfg.model.get("head")
    if data_task == "classification" and task != "classification":
        raise ConfigError(
            f"model '{name}' is a {task} model and cannot train on the classification dataset "
            f"'{cfg.data._target_.rsplit('.', 1)[-1]}'; pick a classifier (e.g. model=davit) or a {task} dataset."
        )
    if data_task == "segmentation" and task == "classification" and not head:
        raise ConfigError(
            f"model '{name}' is a classifier with no segmentation head and the dataset is a segmentation set; "
            "add a dense head (model.head=upernet|fpn) or pick a segmentation model."
        )
    if data_task not in {"classification"} and data_task not in _TASK_BUILDERS:
        raise ConfigError(f"the '{data_task}' task is not available in this version of visionzoo.")
    return data_task


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("task", None)
    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.check()
    return datamodule


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.model.get("kwargs") or {}, resolve=True)
    kwargs.setdefault("num_classes", num_classes)
    return timm.create_model(cfg.model.name, **kwargs)


def build_classification_task(cfg: DictConfig, model: torch.nn.Module, num_classes: int) -> L.LightningModule:
    m = cfg.model
    container = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None  # noqa: E731
    return ClassificationTask(
        model,
        num_classes=num_classes,
        optimizer=container(m.get("optimizer")),
        scheduler=container(m.get("scheduler")),
        label_smoothing=float(m.get("label_smoothing", 0.0)),
        mixup=container(m.get("mixup")),
        compile=bool(cfg.get("compile", False)),
    )


_TASK_BUILDERS = {"classification": build_classification_task}


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(conf) for conf in node.values() if conf is not None and "_target_" in conf]


def _resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path in (None, ""):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path '{path}' does not exist; give the path of a .ckpt file written by a run.")
    return str(path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; return the final metrics (also written to metrics.json)."""
    data_task = check_model_data_pairing(cfg)
    ckpt_path = _resolve_ckpt_path(cfg.get("ckpt_path"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    if cfg.get("seed") is not None and hasattr(datamodule, "shuffle_seed"):
        datamodule.shuffle_seed = int(cfg.seed)
    num_classes = int(datamodule.num_classes)
    model = build_model(cfg, num_classes)
    datamodule.set_data_config(timm.data.resolve_model_data_config(model))
    task = _TASK_BUILDERS[data_task](cfg, model, num_classes)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
        if not best and cfg.get("train", True):
            log.warning("no best checkpoint was saved; testing the weights in memory")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
        for res in results:
            metrics.update({k: float(v) for k, v in res.items()})

    _report(trainer, metrics)
    return metrics


def _report(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Write metrics.json, print a table and say where the checkpoints and logs are (rank 0 only)."""
    if trainer.global_rank != 0:
        return
    out_dir = Path(trainer.default_root_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title="final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        if key.endswith("_step"):
            continue
        table.add_row(key, f"{value:.4g}")
    console = Console()
    console.print(table)
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.dirpath:
        console.print(f"checkpoints: {ckpt_cb.dirpath}  (best: {ckpt_cb.best_model_path or '-'})")
    console.print(f"logs, curves and metrics.json: {out_dir}")
