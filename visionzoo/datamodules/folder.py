"""Class-per-folder datasets: ``ROOT/<split>/<class>/<image>`` (ImageNet and friends).

Splits (which images are ``train``, ``val`` and ``test``)
--------------------------------------------------------
The checkpoint is chosen on ``val``; ``test`` is evaluated once and never chose anything. Which folder is which:

* ``val_dir`` and ``test_dir`` both set: ``val`` = ``val_dir``, ``test`` = ``test_dir``;
* only ``val_dir`` (the ImageNet case, whose test labels are withheld): the released ``val_dir`` is the
  evaluation set, ``test``; ``val`` is a seeded, stratified hold-out of ``val_fraction`` of every class of
  ``train_dir`` (a "minival"). With ``val_fraction: 0`` there is no hold-out: ``val`` is ``val_dir`` too, for
  monitoring only, and the run must report the final checkpoint (``test_ckpt: last``; ``test_ckpt: best`` is
  refused because it would choose the checkpoint on the test images);
* only ``test_dir``: ``val`` is the hold-out of ``train_dir``;
* neither: ``val`` and ``test`` are disjoint seeded, stratified hold-outs of ``train_dir`` (``val_fraction`` and
  ``test_fraction`` of every class, each at least one image, with at least one image left to train on).

The hold-out draws per class from ``seed`` and the class name, so adding a class does not reshuffle the others.

Unreadable image policy
-----------------------
A file that PIL cannot decode (corrupt, truncated, not an image despite its extension):

* **training** does not stop: the first time it is met it is reported with an :class:`UnreadableImageWarning`
  naming the file, remembered, and the sample is replaced by the next readable one of the split (with that
  image's own label). Skipped files are counted in ``FolderDataset.skipped`` (per process);
* **evaluation** never counts a sample twice: every ``val``/``test`` image is decoded once at set-up (threads:
  ``max(1, num_workers)``) and, by default (``eval_corrupt: fail``), set-up stops with one sentence listing the bad
  files; ``eval_corrupt: exclude`` leaves them out with a warning and ``metrics.json`` reports the count
  (``_splits.<split>.excluded``). A file that fails later (changed on disk) stops the evaluation.

A split without any readable image raises :class:`~visionzoo.errors.DatasetError`. Grayscale, RGBA, palette and
CMYK images are converted to RGB.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
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


#: what PIL raises on a file it cannot decode
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

#: ``data.eval_corrupt`` values
EVAL_CORRUPT = ("fail", "exclude")


def unreadable_reason(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not a format PIL can identify"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def find_unreadable(paths: Sequence[str], threads: int = 1) -> list[str]:
    """The paths among ``paths`` that PIL cannot fully decode, in input order (decoded in ``threads`` threads)."""

    def bad(path: str) -> bool:
        try:
            load_rgb(path)
        except DECODE_ERRORS:
            return True
        return False

    if threads <= 1 or len(paths) < 2:
        flags = [bad(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            flags = list(pool.map(bad, paths, chunksize=64))
    return [p for p, f in zip(paths, flags, strict=True) if f]


def describe_files(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def exclude_unreadable(split: str, items: list, path_of: Callable[[Any], str], policy: str, threads: int = 1):
    """``(kept, bad paths)`` of an evaluation split: with ``policy='fail'`` any unreadable image raises one
    sentence (an evaluation must not replace an image by another); with ``'exclude'`` they are left out with a
    warning, so the caller can report how many."""
    bad = find_unreadable([path_of(item) for item in items], threads=threads)
    if not bad:
        return items, []
    if policy == "fail":
        raise DatasetError(
            f"the {split} split holds {len(bad)} unreadable image(s) ({describe_files(bad)}): an evaluation "
            "must not replace an image by another, so remove or repair them, or set data.eval_corrupt=exclude "
            "to evaluate without them (metrics.json then reports how many were left out)."
        )
    warnings.warn(
        f"leaving {len(bad)} unreadable image(s) out of the {split} split (data.eval_corrupt=exclude): "
        f"{describe_files(bad)}",
        UnreadableImageWarning,
        stacklevel=3,
    )
    bad_set = set(bad)
    return [item for item in items if path_of(item) not in bad_set], bad


def stratified_holdout(
    samples: list[tuple[str, int]], fractions: dict[str, float], seed: int, class_names: Sequence[str]
) -> tuple[list[tuple[str, int]], dict[str, list[tuple[str, int]]]]:
    """``(rest, {name: held-out samples})``: per class, ``max(1, round(f * n))`` samples for each ``f > 0``.

    Drawn per class from ``seed`` and the class name; every part keeps file order. A class that would keep no
    sample for training raises :class:`DatasetError`.
    """
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rest: list[tuple[str, int]] = []
    held: dict[str, list[tuple[str, int]]] = {name: [] for name in fractions}
    for label in sorted(by_class):
        items = by_class[label]
        name = class_names[label]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
        order = rng.permutation(len(items)).tolist()
        counts = {k: (max(1, round(f * len(items))) if f > 0 else 0) for k, f in fractions.items()}
        if sum(counts.values()) >= len(items):
            raise DatasetError(
                f"class '{name}' has {len(items)} image(s): holding out {sum(counts.values())} for "
                f"{' and '.join(k for k, c in counts.items() if c)} leaves none to train on; add images or give "
                "the split its own folder (data.val_dir / data.test_dir)."
            )
        start = 0
        for key, count in counts.items():
            held[key].extend(items[i] for i in sorted(order[start : start + count]))
            start += count
        rest.extend(items[i] for i in sorted(order[start:]))
    return rest, held


class FolderDataset(Dataset):
    """``(path, label)`` samples decoded with PIL (module docstring): unreadable files are replaced by the next
    readable one when ``substitute`` (training), else they stop the run (evaluation: nothing counted twice)."""

    def __init__(
        self, samples: list[tuple[str, int]], transform: Callable | None = None, substitute: bool = True
    ) -> None:
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.substitute = substitute
        self.bad_files: set[str] = set()

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files this process has met and skipped."""
        return len(self.bad_files)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        if not self.substitute:
            path, target = self.samples[index]
            try:
                return load_rgb(path), target
            except DECODE_ERRORS as err:
                raise DatasetError(
                    f"evaluation image '{path}' cannot be decoded ({unreadable_reason(err)}) although it was "
                    "readable at set-up: an evaluation never replaces an image, restore the file and rerun."
                ) from None
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            if path in self.bad_files:
                continue
            try:
                return load_rgb(path), target
            except DECODE_ERRORS as err:
                self.bad_files.add(path)
                reason = unreadable_reason(err)
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
    """Any class-per-folder dataset ``ROOT/{train_dir[,val_dir][,test_dir]}/<class>/<image>``.

    Classes are the sub-folders of ``train_dir`` in sorted order (label = index); ``val_dir`` must hold
    the same class folders, ``test_dir`` a subset of them. Images may sit in nested folders
    inside a class folder; extensions: .jpeg/.jpg/.png/.bmp/.webp, any case. Which images are val and test, and
    what happens to unreadable files: see the module docstring (``val_fraction``, ``test_fraction``, ``seed``,
    ``eval_corrupt``).
    """

    #: Wording of the error messages (the ImageNet subclass says wnid / .JPEG).
    dataset_name = "a class-per-folder image folder"
    class_word = "class"
    example_ext = "jpg"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train_dir: str = "train",
        val_dir: str | None = "val",
        test_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int | None = None,
        train_transform: dict | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        eval_corrupt: str = "fail",
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
        self.val_dir = val_dir or None
        self.test_dir = test_dir or None
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"data.{name} must be a number in [0, 1), got {value!r}.")
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed = int(seed)
        if eval_corrupt not in EVAL_CORRUPT:
            raise ConfigError(
                f"data.eval_corrupt must be one of {', '.join(EVAL_CORRUPT)}, got {eval_corrupt!r}."
            )
        self.eval_corrupt = eval_corrupt
        self._classes: list[str] | None = None
        self._splits: dict[str, list[tuple[str, int]]] | None = None
        self._excluded: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ layout checks
    def _layout(self) -> str:
        c, e = self.class_word, self.example_ext
        layout = f"ROOT/{self.train_dir}/<{c}>/*.{e}"
        if self.val_dir:
            layout += f" and ROOT/{self.val_dir}/<{c}>/*.{e}"
        if self.test_dir:
            layout += f" (and ROOT/{self.test_dir}/<{c}>/*.{e})"
        return layout

    def split_sources(self) -> dict[str, str]:
        """Where ``val`` and ``test`` come from: a folder name, or ``"holdout"`` of ``train_dir`` (module docstring)."""
        if self.val_dir and self.test_dir:
            return {"val": self.val_dir, "test": self.test_dir}
        if self.test_dir:
            return {"val": "holdout", "test": self.test_dir}
        if self.val_dir:
            return {"val": "holdout" if self.val_fraction > 0 else self.val_dir, "test": self.val_dir}
        return {"val": "holdout", "test": "holdout"}

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
        if self.val_dir:
            val = self._split_classes(self.val_dir)
            if train != val:
                raise DatasetError(self._mismatch_message(train, val, self.val_dir, need_all=True))
        sources = self.split_sources()
        for split in ("val", "test"):
            if sources[split] == "holdout" and getattr(self, f"{split}_fraction") <= 0:
                raise ConfigError(
                    f"there is no {split} folder (data.{split}_dir) and data.{split}_fraction is 0: set "
                    f"data.{split}_fraction > 0 to hold out part of '{self.train_dir}', or name a {split} folder."
                )
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

    def split_samples(self) -> dict[str, list[tuple[str, int]]]:
        """``{"train", "val", "test"}`` -> ``(path, label)`` samples, computed once: hold-outs drawn, evaluation
        images checked for unreadable files (``eval_corrupt``)."""
        if self._splits is not None:
            return self._splits
        sources = self.split_sources()
        fractions = {s: getattr(self, f"{s}_fraction") for s in ("val", "test") if sources[s] == "holdout"}
        train = self._samples(self.train_dir)
        if fractions:
            train, held = stratified_holdout(train, fractions, self.seed, self.class_names)
        else:
            held = {}
        folders: dict[str, list[tuple[str, int]]] = {}
        splits = {"train": train}
        for split in ("val", "test"):
            src = sources[split]
            if src == "holdout":
                splits[split] = held[split]
            else:
                splits[split] = folders.setdefault(src, self._samples(src))
        checked: dict[int, list[tuple[str, int]]] = {}  # val and test may be the same list: check it once
        for split in ("val", "test"):
            key = id(splits[split])
            if key not in checked:
                checked[key] = self._without_unreadable(split, splits[split])
            splits[split] = checked[key]
        self._splits = splits
        return splits

    def _without_unreadable(self, split: str, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        kept, bad = exclude_unreadable(
            split, samples, lambda s: s[0], self.eval_corrupt, threads=max(1, self.num_workers)
        )
        if bad:
            self._excluded[split] = bad
        if not kept:
            raise DatasetError(
                f"no image of the {split} split could be decoded: expected readable image files."
            )
        return kept

    def split_info(self) -> dict[str, dict[str, Any]]:
        """Source, size and SHA-256 of ``relative path<TAB>label`` lines of each split (plus ``excluded``)."""
        from ..provenance import split_entry

        splits = self.split_samples()
        sources = self.split_sources()
        held = [s for s in ("val", "test") if sources[s] == "holdout"]
        rule = f"seeded (seed {self.seed}) stratified hold-out of ROOT/{self.train_dir}"
        described = {
            "train": f"ROOT/{self.train_dir}" + (f" minus the {' and '.join(held)} hold-out" if held else ""),
        }
        for split in ("val", "test"):
            src = sources[split]
            frac = getattr(self, f"{split}_fraction")
            described[split] = (
                f"{rule}, {split}_fraction {frac:g} per class" if src == "holdout" else f"ROOT/{src}"
            )
        out = {}
        for split, samples in splits.items():
            items = [f"{os.path.relpath(p, self.root)}\t{t}" for p, t in samples]
            extra = {"excluded": len(self._excluded[split])} if split in self._excluded else {}
            out[split] = split_entry(described[split], items, **extra)
        return out

    def _build_datasets(self, stage: str | None) -> None:
        splits = self.split_samples()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = FolderDataset(splits["train"], self.build_train_transform())
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = FolderDataset(splits["val"], self.build_eval_transform(), substitute=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            if splits["test"] is splits["val"] and self.val_dataset is not None:
                self.test_dataset = self.val_dataset
            else:
                self.test_dataset = FolderDataset(
                    splits["test"], self.build_eval_transform(), substitute=False
                )

    def _on_data_config_changed(self) -> None:
        if self.train_dataset is not None:
            self.train_dataset.transform = self.build_train_transform()
        for ds in {id(d): d for d in (self.val_dataset, self.test_dataset) if d is not None}.values():
            ds.transform = self.build_eval_transform()


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k style folder: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``.

    The validation images must be sorted into ``val/<wnid>/`` folders (the usual ``valprep.sh``
    layout); ``num_classes`` is whatever the folders hold (1000 for the full set).

    Protocol (test labels are withheld): the official ``val`` folder is the evaluation set, ``test``; the number
    papers report is the final checkpoint's top-1 on it (``test_ckpt: last``). ``val_fraction`` (default 0) holds
    out a seeded, stratified "minival" of ``train`` to choose a checkpoint or hyper-parameters on (big_vision's
    ImageNet configs use ``train[99%:]``, i.e. 0.01); with 0, ``val`` is the official val folder as well, for
    monitoring only.
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
        val_dir: str | None = "val",
        test_dir: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
        eval_corrupt: str = "fail",
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
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            eval_corrupt=eval_corrupt,
        )
