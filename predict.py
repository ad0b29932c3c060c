"""Segment a folder of images with a trained checkpoint:

    python predict.py ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt images=DIR out=DIR

Thin on purpose: the work is in :mod:`visionzoo.predict` (``python -m visionzoo.predict`` does the same).
"""

from __future__ import annotations

import sys

import visionzoo  # noqa: F401  (registers the zoo's models with timm)
from visionzoo.predict import main

if __name__ == "__main__":
    sys.exit(main())
