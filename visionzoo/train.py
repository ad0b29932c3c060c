"""``run(cfg)``: build datamodule, model, task and trainer from a composed Hydra config, then fit and test.

The order matters: the dataset root is checked and the model/data pairing validated before
anything expensive is built, so configuration mistakes end in one sentence within a second.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from . import provenance
from .errors import ConfigError, VisionZooError
from .tasks import ClassificationTask, SegmentationTask
from .tasks.ddp import ignore_static_buffers

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
        raise ConfigError(
            f"model.name '{name}' is not a registered timm or visionzoo model; see `visionzoo list`."
        )
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
    if data_task == "reid" and task not in {"reid", "classification"}:
        raise ConfigError(
            f"model '{name}' is a {task} model and cannot train on the Re-ID dataset "
            f"'{cfg.data._target_.rsplit('.', 1)[-1]}'; pick a Re-ID model (e.g. model=reid_resnet50) or a classifier."
        )
    if data_task not in {"classification"} and data_task not in _TASK_BUILDERS:
        raise ConfigError(f"the '{data_task}' task is not available in this version of visionzoo.")
    if data_task == "segmentation" and task == "classification":
        from .heads import HEADS

        if str(head).lower() not in HEADS or str(head).lower() == "fcn":
            raise ConfigError(
                f"model.head '{head}' is unknown; expected upernet or fpn (or a segmentation model)."
            )
    return data_task


#: keys of a data config that configure the task, not the DataModule: popped before instantiation unless the
#: DataModule's constructor takes them (the segmentation DataModules keep ``metrics`` as hints)
TASK_KEYS_IN_DATA = ("metrics", "loss", "inference", "optimized_metric", "test_ckpt")


def _accepted_kwargs(target: str) -> set[str] | None:
    """Keyword names the ``_target_`` class accepts, following ``**kwargs`` up its MRO (``None``: unknown)."""
    import inspect

    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except (ImportError, AttributeError, ValueError):
        return None
    classes = obj.__mro__ if isinstance(obj, type) else (obj,)
    names: set[str] = set()
    for cls in classes:
        init = cls.__init__ if isinstance(cls, type) else cls
        try:
            params = inspect.signature(init).parameters
        except (ValueError, TypeError):
            return None
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("task", None)
    accepted = _accepted_kwargs(str(data_cfg.get("_target_", "")))
    for key in TASK_KEYS_IN_DATA:
        if accepted is None or key not in accepted:
            data_cfg.pop(key, None)
    datamodule = instantiate(data_cfg, _convert_="all")
    served = getattr(datamodule, "task", None)
    if served is not None and served != cfg.data.task:
        raise ConfigError(
            f"model '{cfg.model.name}' cannot train on {type(datamodule).__name__}: data.task says "
            f"'{cfg.data.task}' but that DataModule serves {served}; pick a {cfg.data.task} dataset."
        )
    datamodule.check()
    return datamodule


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def model_spec(
    cfg: DictConfig, num_classes: int, data_task: str = "classification", in_chans: int = 3
) -> dict[str, Any]:
    """What to build, as a plain dict (stored in segmentation checkpoints, see
    :func:`visionzoo.models.dense.build_from_spec`).

    A classifier on a segmentation set becomes a :class:`~visionzoo.models.dense.DenseSegmenter`: backbone
    ``model.name`` with ``model.kwargs`` updated by ``model.dense_kwargs``, head ``model.head`` with
    ``model.head_kwargs``, auxiliary head ``model.aux_head`` (its ``weight`` goes to the task).
    """
    kwargs: dict[str, Any] = _container(cfg.model.get("kwargs")) or {}
    if in_chans != 3:  # e.g. multi-modal MRI; timm adapts pretrained stems to it
        kwargs.setdefault("in_chans", in_chans)
    name = cfg.model.name
    if data_task == "segmentation" and model_task(name) == "classification":
        kwargs.update(_container(cfg.model.get("dense_kwargs")) or {})
        pretrained = bool(kwargs.pop("pretrained", False))
        for key in ("num_classes", "drop_rate", "global_pool"):
            kwargs.pop(key, None)
        aux = _container(cfg.model.get("aux_head"))
        aux = {k: v for k, v in aux.items() if k != "weight"} if aux else None
        return {
            "type": "dense",
            "backbone": name,
            "head": str(cfg.model.head).lower(),
            "num_classes": num_classes,
            "backbone_kwargs": kwargs,
            "head_kwargs": _container(cfg.model.get("head_kwargs")) or {},
            "aux_head": aux,
            "pretrained": pretrained,
        }
    kwargs.setdefault("num_classes", num_classes)
    return {"type": "timm", "name": name, "kwargs": kwargs}


def build_model(
    cfg: DictConfig, num_classes: int, data_task: str = "classification", in_chans: int = 3
) -> torch.nn.Module:
    from .models.dense import build_from_spec

    spec = model_spec(cfg, num_classes, data_task, in_chans)
    try:
        return build_from_spec(spec)
    except VisionZooError:
        raise
    except (ValueError, TypeError) as err:  # a constructor refusing its kwargs: one sentence, not a traceback
        name = spec.get("name") or spec.get("backbone")
        raise ConfigError(f"model '{name}' could not be built from model.kwargs: {err}") from None


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


def _task_setting(cfg: DictConfig, key: str) -> Any:
    """A task setting from the model config, else the data config (a model's own loss beats the dataset's)."""
    value = cfg.model.get(key)
    if value is None:
        value = cfg.data.get(key)
    return _container(value)


def build_segmentation_task(
    cfg: DictConfig,
    model: torch.nn.Module,
    num_classes: int,
    datamodule: L.LightningDataModule | None = None,
) -> L.LightningModule:
    m = cfg.model
    aux = _container(m.get("aux_head")) or {}
    has_aux = getattr(model, "aux_head", None) is not None
    data_config = _data_config_for_task(model, datamodule)
    return SegmentationTask(
        model,
        num_classes=num_classes,
        class_names=list(getattr(datamodule, "class_names", None) or []) or None,
        ignore_index=getattr(datamodule, "ignore_index", None),
        loss=_task_setting(cfg, "loss"),
        aux_weight=float(aux.get("weight", 0.4)) if has_aux else 0.0,
        optimizer=_container(m.get("optimizer")),
        scheduler=_container(m.get("scheduler")),
        inference=_task_setting(cfg, "inference"),
        metrics=list(getattr(datamodule, "metrics", None) or _container(cfg.data.get("metrics")) or []),
        model_spec=model_spec(cfg, num_classes, "segmentation", int(getattr(datamodule, "in_chans", 3))),
        data_config=data_config,
        compile=bool(cfg.get("compile", False)),
    )


def _data_config_for_task(model: torch.nn.Module, datamodule: Any) -> dict[str, Any]:
    """Mean/std the images are normalised with and the network input size (for pictures and predict.py)."""
    cfg = dict(timm.data.resolve_model_data_config(model))
    dm_cfg = getattr(datamodule, "data_config", None)
    if isinstance(dm_cfg, dict):
        cfg.update({k: v for k, v in dm_cfg.items() if v is not None})
    size = getattr(datamodule, "image_size", None)
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)[-2:]
        cfg["input_size"] = (int(getattr(datamodule, "in_chans", 3)), *size)
    out = {
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "input_size": [int(v) for v in cfg["input_size"]],
        "normalize": "mean_std",
        "color_space": str(getattr(datamodule, "color_space", "RGB")),
    }
    build_normalizer = getattr(datamodule, "build_normalizer", None)
    if callable(build_normalizer):  # the segmentation DataModules' Normalizer: mode and the mean/std it uses
        normalizer = build_normalizer()
        out["normalize"] = str(getattr(normalizer, "mode", "mean_std"))
        for key in ("mean", "std"):
            if getattr(normalizer, key, None) is not None:
                out[key] = [float(v) for v in list(getattr(normalizer, key))]
    return out


def build_reid_task(
    cfg: DictConfig,
    model: torch.nn.Module,
    num_classes: int,
    datamodule: L.LightningDataModule | None = None,
) -> L.LightningModule:
    """:class:`~visionzoo.tasks.reid.ReIDTask` from ``model.*`` (loss settings under ``model.reid``)."""
    from .tasks.reid import ReIDTask

    m = cfg.model
    reid = _container(m.get("reid")) or {}
    return ReIDTask(
        model,
        num_classes=num_classes,
        optimizer=_container(m.get("optimizer")),
        scheduler=_container(m.get("scheduler")),
        label_smoothing=float(m.get("label_smoothing", 0.1)),
        compile=bool(cfg.get("compile", False)),
        **reid,
    )


_TASK_BUILDERS = {
    "classification": build_classification_task,
    "segmentation": build_segmentation_task,
    "reid": build_reid_task,
}

#: what a task is judged by when the config keeps the classification default ``val/acc1``
_DEFAULT_OPTIMIZED_METRIC = {"segmentation": "val/mIoU", "reid": "val/mAP"}


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(conf) for conf in node.values() if conf is not None and "_target_" in conf]


def _resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path in (None, ""):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path '{path}' does not exist; give the path of a .ckpt file written by a run."
        )
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
    # every split's files listed (and evaluation images checked) before any model is built
    splits = provenance.split_info(datamodule)
    test_ckpt = _check_test_protocol(cfg, splits)
    num_classes = int(datamodule.num_classes)
    model = build_model(cfg, num_classes, data_task, int(getattr(datamodule, "in_chans", 3)))
    datamodule.set_data_config(timm.data.resolve_model_data_config(model))
    if data_task == "classification" and cfg.model.get("task") == "distillation":
        from .tasks.distillation import build_distillation_task

        task = build_distillation_task(cfg, model, num_classes)
    elif data_task == "classification":
        task = build_classification_task(cfg, model, num_classes)
    else:
        task = _TASK_BUILDERS[data_task](cfg, model, num_classes, datamodule)
    ignore_static_buffers(task)
    _set_optimized_metric(cfg, data_task, datamodule)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    counter = provenance.EvalCounter()
    callbacks.append(counter)
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    metrics_from: dict[str, dict[str, Any]] = {}
    if any(k.startswith("train/") for k in metrics):
        metrics_from["train/"] = {"split": "train"}
    if any(k.startswith("val/") for k in metrics):
        metrics_from["val/"] = {
            "split": "val",
            "checkpoint": "the last validation pass of training",
            "evaluated": counter.evaluated.get("val"),
        }

    if cfg.get("test", True):
        for prefix, path, what in _test_passes(cfg, trainer, ckpt_path, test_ckpt, splits):
            for res in trainer.test(task, datamodule=datamodule, ckpt_path=path, verbose=False):
                metrics.update({_with_prefix(k, prefix): float(v) for k, v in res.items()})
            metrics_from[prefix] = {
                "split": "test",
                "checkpoint": what,
                "evaluated": counter.evaluated.get("test"),
            }

    _report(trainer, metrics, splits, metrics_from, provenance.run_record(cfg, datamodule))
    return metrics


TEST_CKPTS = ("best", "last")


def _check_test_protocol(cfg: DictConfig, splits: dict[str, dict[str, Any]]) -> str:
    """``test_ckpt`` (best|last), refused when "best" would be chosen on the very images it is then tested on."""
    choice = str(cfg.get("test_ckpt") or "best").lower()
    if choice not in TEST_CKPTS:
        raise ConfigError(f"test_ckpt '{choice}' is unknown; expected one of {', '.join(TEST_CKPTS)}.")
    if (
        choice == "best"
        and cfg.get("train", True)
        and cfg.get("test", True)
        and provenance.same_images(splits, "val", "test")
    ):
        raise ConfigError(
            f"test_ckpt=best would pick the checkpoint on the {splits['test']['size']} test images themselves "
            f"(the val and test splits are the same: {splits['test']['source']}); set test_ckpt=last or hold out a "
            "validation split (see the data config's header)."
        )
    return choice


def _best_checkpoint(trainer: L.Trainer, monitor: str | None) -> str:
    """Path of the best checkpoint by ``monitor`` (the first monitored callback's otherwise), or ``""``."""
    monitored = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
    chosen = [cb for cb in monitored if cb.monitor == monitor] or monitored
    return str(chosen[0].best_model_path or "") if chosen else ""


def _test_passes(
    cfg: DictConfig, trainer: L.Trainer, ckpt_path: str | None, test_ckpt: str, splits: dict[str, Any]
) -> list[tuple[str, str | None, str]]:
    """``(metric prefix, checkpoint path or None = the weights in memory, description)`` of each test pass.

    ``test/*`` is the checkpoint ``test_ckpt`` names; after training, the other one is tested too, as
    ``test_last/*`` or ``test_best/*`` (the latter only when the best was chosen on images other than the test
    split). Weights in memory (the last ones) are tested first, before a checkpoint is loaded over them.
    """
    if not cfg.get("train", True):
        what = f"given checkpoint {ckpt_path}" if ckpt_path else "initial weights (train=false, no ckpt_path)"
        return [("test/", ckpt_path, what)]
    last = "last (the weights at the end of training)"
    best = _best_checkpoint(trainer, cfg.get("optimized_metric"))
    best_what = f"best by {cfg.get('optimized_metric')} on the val split ({Path(best).name})" if best else ""
    if test_ckpt == "last":
        passes = [("test/", None, last)]
        if best and not provenance.same_images(splits, "val", "test"):
            passes.append(("test_best/", best, best_what))
        return passes
    if not best:
        log.warning("no best checkpoint was saved; testing the weights in memory (the last ones)")
        return [("test/", None, last + "; no best checkpoint was saved")]
    return [("test_last/", None, last), ("test/", best, best_what)]


def _with_prefix(key: str, prefix: str) -> str:
    """``test/acc1`` -> ``test_last/acc1`` for ``prefix="test_last/"``; other keys unchanged."""
    return prefix + key[len("test/") :] if key.startswith("test/") else key


def _set_optimized_metric(cfg: DictConfig, data_task: str, datamodule: Any = None) -> None:
    """The metric the best checkpoint is chosen by, when the config leaves the classification default ``val/acc1``.

    Segmentation: the first of the data's metric hints (``data.metrics``) that names one -- ``dice`` ->
    ``val/mDice``, ``iou`` -> ``val/mIoU`` -- else ``val/mIoU``. A data config's ``optimized_metric`` or the
    command line's ``optimized_metric=...`` always win.
    """
    default = _DEFAULT_OPTIMIZED_METRIC.get(data_task)
    if default is None or cfg.get("optimized_metric") not in (None, "val/acc1"):
        return
    hints = list(getattr(datamodule, "metrics", None) or _container(cfg.data.get("metrics")) or [])
    by_hint = {"dice": "val/mDice", "mdice": "val/mDice", "iou": "val/mIoU", "miou": "val/mIoU"}
    default = next((by_hint[str(h).lower()] for h in hints if str(h).lower() in by_hint), default)
    with open_dict(cfg):
        cfg.optimized_metric = default
    log.info("optimized_metric for %s: %s", data_task, default)


def _report(
    trainer: L.Trainer,
    metrics: dict[str, float],
    splits: dict[str, Any] | None = None,
    metrics_from: dict[str, Any] | None = None,
    run_record: dict[str, Any] | None = None,
) -> None:
    """Write metrics.json (with its provenance, :mod:`visionzoo.provenance`), print a table and say where the
    checkpoints and logs are (rank 0 only)."""
    if trainer.global_rank != 0:
        return
    out_dir = Path(trainer.default_root_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance.write_metrics(out_dir, metrics, splits or {}, metrics_from or {}, run_record or {})

    from rich.console import Console
    from rich.table import Table

    table = Table(title="final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    per_class = 0
    for key, value in sorted(metrics.items()):
        if key.endswith("_step"):
            continue
        if key.count("/") > 1:  # per-class values (val/IoU/<class>): in metrics.json, not the console
            per_class += 1
            continue
        table.add_row(key, f"{value:.4g}")
    if per_class:
        table.caption = f"+ {per_class} per-class values in metrics.json"
    console = Console()
    console.print(table)
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.dirpath:
        console.print(f"checkpoints: {ckpt_cb.dirpath}  (best: {ckpt_cb.best_model_path or '-'})")
    console.print(f"logs, curves and metrics.json: {out_dir}")
