"""Compose the project's Hydra config in-process, the way train.py would, for fast tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "visionzoo" / "conf"


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed train config with outputs redirected to ``output_dir`` and no console noise."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.callbacks.pop("rich_progress_bar", None)
        cfg.callbacks.pop("model_summary", None)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    return cfg


def run_train_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in a subprocess, logs under ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    flags = [a for a in args if a.startswith("-")]  # argparse wants Hydra's flags before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, f"paths.log_dir={cwd / 'logs'}", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
