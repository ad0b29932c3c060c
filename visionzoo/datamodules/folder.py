"""Class-per-folder datasets: ``ROOT/<split>/<class>/<image>`` (ImageNet and friends).

Unreadable image policy
-----------------------
A file that PIL cannot decode (corrupt, truncated, not an image despite its extension) does not stop
training: the first time it is met it is reported with an :class:`UnreadableImageWarning` naming the
file, remembered, and the sample is replaced by the next readable one in the split (with that image's
own label). Skipped files are counted in ``FolderDataset.skipped`` (per process: each dataloader
worker keeps its own count and warns once per file it meets). A split without any readable image
raises :class:`~visionzoo.errors.DatasetError`. Grayscale, RGBA, palette and CMYK images are
converted to RGB.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DatasetError
from ._base import ClassificationDataModule

#: Image file extensions a class folder may hold (matched case-insensitively).
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped (see the module docstring)."""


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".")


def _list_dir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return [e for e in it if _visible(e)]


def _has_image(folder: Path) -> bool:
    """True when ``folder`` (recursively) holds at least one image file; stops at the first one."""
    subdirs = []
    with os.scandir(folder) as it:  # lazily: a full ImageNet class folder is never listed
        for entry in it:
            if not _visible(entry):
                continue
            if entry.is_dir(follow_symlinks=True):
                subdirs.append(entry.path)
            elif is_image_file(entry.name):
                return True
    return any(_has_image(Path(d)) for d in subdirs)


def _list_images(folder: Path) -> list[str]:
    """Every image file under ``folder`` (recursively, following links), sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        found.extend(os.path.join(dirpath, f) for f in files if is_image_file(f) and not f.startswith("."))
    return sorted(found)


def load_rgb(path: str) -> Image.Image:
    """Decode an image fully and convert it to RGB (grayscale, palette, RGBA, CMYK...)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


class FolderDataset(Dataset):
    """``(path, label)`` samples decoded with PIL, skipping unreadable files (module docstring)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None = None) -> None:
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.bad_files: set[str] = set()

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files this process has met and skipped."""
        return len(self.bad_files)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            if path in self.bad_files:
                continue
            try:
                return load_rgb(path), target
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self.bad_files.add(path)
                if isinstance(err, UnidentifiedImageError):
                    reason = "not a format PIL can identify"
                else:
                    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                warnings.warn(
                    f"skipping unreadable image '{path}' ({reason}); using the next readable image instead",
                    UnreadableImageWarning,
                    stacklevel=2,
                )
        folder = os.path.dirname(os.path.dirname(self.samples[0][0])) if n else "?"
        raise DatasetError(f"no image under '{folder}' could be decoded: expected readable image files.")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self._read(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ImageFolderDataModule(ClassificationDataModule):
    """Any class-per-folder dataset ``ROOT/{train_dir,val_dir[,test_dir]}/<class>/<image>``.

    Classes are the sub-folders of ``train_dir`` in sorted order (label = index); ``val_dir`` must hold
    the same class folders, ``test_dir`` (optional) a subset of them. Images may sit in nested folders
    inside a class folder; extensions: .jpeg/.jpg/.png/.bmp/.webp, any case.
    """

    #: Wording of the error messages (the ImageNet subclass says wnid / .JPEG).
    dataset_name = "a class-per-folder image folder"
    class_word = "class"
    example_ext = "jpg"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int | None = None,
        train_transform: dict | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            image_size=image_size,
            train_transform=train_transform,
        )
        self.root = None if root is None or str(root).strip() == "" else Path(os.path.expanduser(str(root)))
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.test_dir = test_dir or None
        self._classes: list[str] | None = None

    # ------------------------------------------------------------------ layout checks
    def _layout(self) -> str:
        c, e = self.class_word, self.example_ext
        layout = f"ROOT/{self.train_dir}/<{c}>/*.{e} and ROOT/{self.val_dir}/<{c}>/*.{e}"
        if self.test_dir:
            layout += f" (and ROOT/{self.test_dir}/<{c}>/*.{e})"
        return layout

    def _split_classes(self, name: str) -> list[str]:
        """Sorted class folders of one split, each checked to hold at least one image."""
        split = self.root / name
        if not split.is_dir():
            what = "is not a folder" if split.exists() else "is missing"
            raise DatasetError(f"split folder '{split}' {what}: expected {self._layout()} under data.root.")
        entries = _list_dir(split)
        classes = sorted(e.name for e in entries if e.is_dir(follow_symlinks=True))
        if not classes:
            loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
            hint = (
                f" (it holds {loose} images directly: sort them into <{self.class_word}>/ sub-folders)"
                if loose
                else ""
            )
            raise DatasetError(
                f"split folder '{split}' has no {self.class_word} folders{hint}: expected {self._layout()}."
            )
        for cls in classes:
            if not _has_image(split / cls):
                raise DatasetError(
                    f"{self.class_word} folder '{split / cls}' contains no images: "
                    f"expected files ending in {', '.join(IMG_EXTENSIONS)} (any case)."
                )
        return classes

    def check(self) -> None:
        if self.root is None:
            raise DatasetError(f"data.root is not set: point it at {self.dataset_name} {self._layout()}.")
        if not self.root.exists():
            raise DatasetError(
                f"data.root '{self.root}' does not exist: expected {self.dataset_name} {self._layout()}."
            )
        if not self.root.is_dir():
            raise DatasetError(
                f"data.root '{self.root}' is not a folder: expected {self.dataset_name} {self._layout()}."
            )
        train = self._split_classes(self.train_dir)
        val = self._split_classes(self.val_dir)
        if train != val:
            raise DatasetError(self._mismatch_message(train, val, self.val_dir, need_all=True))
        if self.test_dir:
            test = self._split_classes(self.test_dir)
            if not set(test) <= set(train):
                raise DatasetError(self._mismatch_message(train, test, self.test_dir, need_all=False))
        self._classes = train

    def _mismatch_message(self, train: list[str], other: list[str], other_dir: str, need_all: bool) -> str:
        def show(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")

        only_train = sorted(set(train) - set(other)) if need_all else []
        only_other = sorted(set(other) - set(train))
        parts = []
        if only_train:
            parts.append(f"only in '{self.train_dir}': {show(only_train)}")
        if only_other:
            parts.append(f"only in '{other_dir}': {show(only_other)}")
        expected = "the same" if need_all else f"a subset of the '{self.train_dir}'"
        return (
            f"{self.class_word} folders of '{self.root / self.train_dir}' and '{self.root / other_dir}' differ "
            f"({'; '.join(parts)}): both splits need {expected} {self.class_word} folders."
        )

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            self.check()
        return list(self._classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.class_names)}

    # ------------------------------------------------------------------ datasets
    def _samples(self, split: str) -> list[tuple[str, int]]:
        samples = []
        for idx, cls in enumerate(self.class_names):
            folder = self.root / split / cls
            if folder.is_dir():
                samples.extend((p, idx) for p in _list_images(folder))
        return samples

    def _build_datasets(self, stage: str | None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = FolderDataset(self._samples(self.train_dir), self.build_train_transform())
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = FolderDataset(self._samples(self.val_dir), self.build_eval_transform())
        if stage in (None, "test", "predict") and self.test_dataset is None:
            if self.test_dir:
                self.test_dataset = FolderDataset(self._samples(self.test_dir), self.build_eval_transform())
            else:
                if self.val_dataset is None:
                    self.val_dataset = FolderDataset(self._samples(self.val_dir), self.build_eval_transform())
                self.test_dataset = self.val_dataset

    def _on_data_config_changed(self) -> None:
        if self.train_dataset is not None:
            self.train_dataset.transform = self.build_train_transform()
        for ds in {id(d): d for d in (self.val_dataset, self.test_dataset) if d is not None}.values():
            ds.transform = self.build_eval_transform()


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k style folder: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``.

    The validation images must be sorted into ``val/<wnid>/`` folders (the usual ``valprep.sh``
    layout); ``num_classes`` is whatever the folders hold (1000 for the full set).
    """

    dataset_name = "an ImageNet-style folder"
    class_word = "wnid"
    example_ext = "JPEG"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int | None = None,
        train_transform: dict | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
    ) -> None:
        super().__init__(
            root=root,
            train_dir=train_dir,
            val_dir=val_dir,
            test_dir=test_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            image_size=image_size,
            train_transform=train_transform,
        )
