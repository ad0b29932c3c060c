"""Shared pytest setup: register the zoo with timm before any test module is collected."""

import torch

import visionzoo  # noqa: F401  (side effect: registers every zoo model with timm)

torch.set_num_threads(2)
