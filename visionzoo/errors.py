"""Errors that carry one clear sentence for the user.

``train.py`` catches ``VisionZooError`` and prints only its message (no stack trace), so every
raise site must say what was wrong and what was expected.
"""

from __future__ import annotations


class VisionZooError(Exception):
    """Base class: the message is shown to the user as is."""


class DatasetError(VisionZooError, ValueError):
    """A dataset root, layout or file is missing or unusable."""


class ConfigError(VisionZooError, ValueError):
    """The composed configuration is inconsistent (e.g. a model/data task mismatch)."""


class CheckpointError(VisionZooError, RuntimeError):
    """A checkpoint cannot be loaded into the model (foreign keys, wrong shapes, corrupt file)."""


class InputSizeError(VisionZooError, ValueError):
    """An input size the model cannot take."""
