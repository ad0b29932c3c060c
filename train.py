"""Hydra entry point: ``python train.py model=biformer data=imagenet``.

Thin on purpose: compose the config, hand it to ``visionzoo.train.run``. User errors
(``VisionZooError``) end the process with one sentence and exit code 2, never a stack trace.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import visionzoo  # noqa: F401  (registers the zoo's models with timm)
from visionzoo.errors import VisionZooError


@hydra.main(version_base="1.3", config_path="visionzoo/conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from visionzoo.train import run

    try:
        metrics = run(cfg)
    except VisionZooError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
