"""Generic person Re-ID data: one folder per identity, for any dataset that is not Market-1501.

Layout (split folder names configurable: ``train_dir``, ``query_dir``, ``gallery_dir``)::

    ROOT/train/<identity>/<image>      # identity = folder name (any string)
    ROOT/query/<identity>/<image>
    ROOT/gallery/<identity>/<image>

Images may sit in subfolders of an identity folder (e.g. one per camera); hidden files and non-images are ignored.

* **Identities** are compared by folder *name*. Training identities are relabelled ``0..num_classes-1`` in sorted
  name order (``class_names`` are the names). Query and gallery names share one numbering (``1..M`` in sorted
  order), so a query matches the gallery images of the folder with the same name; gallery identities absent from
  the query are simply distractors.
* **Junk** folders (``junk_names``, default ``-1`` and ``junk``) are dropped from every split. **Distractor**
  folders (``distractor_names``, default ``0000`` and ``distractors``) stay in the gallery as pid 0 (never a match)
  and are dropped from train and query, as on Market-1501; set ``distractor_names=[]`` if ``0000`` is a person.
* **Cameras** come from each file name: ``camera_regex`` (default ``c(\\d+)``) is searched in the file stem and its
  first group is the camera id (``0001_c3_0042.jpg`` -> 3); the metrics then ignore gallery images of the query's
  identity seen by the query's camera (Market-1501 protocol). When ``camera_regex`` is null or no query/gallery
  name matches it, the **cross-set protocol** applies: query images get camera 0, gallery images camera 1, so no
  gallery image is excluded (the query and gallery sets are assumed to be disjoint captures). Names that match
  only in part stop the run at start; train names follow the same all-or-none rule (camera 0 when none matches).
* **Splits** (protocol): ``test`` = query + gallery; ``val`` = a seeded, identity-disjoint hold-out of the training
  identities (``val_id_fraction``, default 0.1), one query per identity per camera and the rest gallery (one query
  per identity, cross-set rule, when train names carry no camera), as for Market-1501
  (:mod:`visionzoo.datamodules.reid`); unreadable images: the same policy (``eval_corrupt``).
* Batches, transforms and PK sampling are :class:`~visionzoo.datamodules.reid.ReIDDataModule`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError
from ._base import to_plain
from .folder import _list_images, is_image_file
from .reid import Records, ReIDDataModule

__all__ = ["ReIDFolderDataModule"]

_LAYOUT = (
    "ROOT/{train}/<identity>/<image>, ROOT/{query}/<identity>/<image> and ROOT/{gallery}/<identity>/<image>"
)


class ReIDFolderDataModule(ReIDDataModule):
    """Re-ID on ``ROOT/{train,query,gallery}/<identity>/<image>`` (see the module docstring).

    Args:
        root: the dataset folder.
        train_dir, query_dir, gallery_dir: the split folder names under ``root``.
        camera_regex: regular expression searched in each file stem, first group = camera id; ``None`` = no
            cameras (cross-set protocol).
        junk_names: identity folder names dropped everywhere.
        distractor_names: gallery identity folder names that are distractors (pid 0).
        **kwargs: :class:`~visionzoo.datamodules.reid.ReIDDataModule` arguments (batch size, transforms...).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train_dir: str = "train",
        query_dir: str = "query",
        gallery_dir: str = "gallery",
        camera_regex: str | None = r"c(\d+)",
        junk_names: Sequence[str] = ("-1", "junk"),
        distractor_names: Sequence[str] = ("0000", "distractors"),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.split_dirs = {"train": str(train_dir), "query": str(query_dir), "gallery": str(gallery_dir)}
        self.camera_regex = None if camera_regex is None or str(camera_regex) == "" else str(camera_regex)
        self._camera_re = None
        if self.camera_regex is not None:
            try:
                self._camera_re = re.compile(self.camera_regex)
            except re.error as e:
                raise ConfigError(
                    f"data.camera_regex {self.camera_regex!r} is not a valid regular expression: {e}."
                ) from None
            if self._camera_re.groups < 1:
                raise ConfigError(
                    f"data.camera_regex {self.camera_regex!r} has no group: put the camera number in parentheses, "
                    r"e.g. 'c(\d+)'."
                )
        self.junk_names = frozenset(str(n) for n in to_plain(junk_names) or ())
        self.distractor_names = frozenset(str(n) for n in to_plain(distractor_names) or ())
        self._train_names: list[str] | None = None
        self._cross_set = False

    # ------------------------------------------------------------------ layout
    @property
    def layout(self) -> str:
        return _LAYOUT.format(**self.split_dirs)

    def _scan_split(self, split: str) -> dict[str, list[str]]:
        """``{identity folder name: sorted image paths}`` of one split (junk folders included)."""
        folder = self.root / self.split_dirs[split]
        if not folder.is_dir():
            raise DatasetError(
                f"Re-ID split folder '{folder}' is missing: expected {self.layout} under data.root "
                f"(split names set by data.{split}_dir)."
            )
        identities: dict[str, list[str]] = {}
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                identities[entry.name] = _list_images(Path(entry.path))
            elif is_image_file(entry.name):
                raise DatasetError(
                    f"'{entry.path}' is an image directly in the split folder '{folder}': expected one folder per "
                    f"identity, {folder}/<identity>/<image>."
                )
        kept = {name: paths for name, paths in identities.items() if name not in self.junk_names}
        if not kept:
            raise DatasetError(
                f"'{folder}' holds no identity folder (besides junk): expected {folder}/<identity>/<image>."
            )
        for name, paths in kept.items():
            if not paths:
                raise DatasetError(
                    f"identity folder '{folder / name}' holds no image: expected {folder / name}/<image> "
                    f"with one of the extensions .jpg, .jpeg, .png, .bmp, .webp."
                )
        return identities

    def _cameras(self, paths: Sequence[str], what: str) -> list[int | None]:
        """Camera id of each path; all ``None`` when no name matches ``camera_regex`` (or it is null)."""
        if self._camera_re is None:
            return [None] * len(paths)
        cams: list[int | None] = []
        for path in paths:
            m = self._camera_re.search(Path(path).stem)
            if m is None:
                cams.append(None)
                continue
            try:
                cams.append(int(m.group(1)))
            except (TypeError, ValueError):
                raise DatasetError(
                    f"'{path}': data.camera_regex {self.camera_regex!r} matched but its first group "
                    f"{m.group(1)!r} is not an integer camera id."
                ) from None
        matched = [c is not None for c in cams]
        if any(matched) and not all(matched):
            missing = paths[matched.index(False)]
            example = paths[matched.index(True)]
            raise DatasetError(
                f"'{missing}' has no camera id matching data.camera_regex {self.camera_regex!r} while "
                f"'{example}' has one: name every {what} image with its camera (e.g. 0001_c1_0001.jpg) or none "
                "(cross-set protocol), or set data.camera_regex=null."
            )
        return cams

    def _load_records(self) -> Records:
        if self.root is None:
            raise DatasetError(f"data.root is not set: point it at a Re-ID folder laid out as {self.layout}.")
        if not self.root.is_dir():
            raise DatasetError(
                f"data.root '{self.root}' is not an existing folder: expected a Re-ID folder laid out as "
                f"{self.layout}."
            )
        scans = {split: self._scan_split(split) for split in ("train", "query", "gallery")}
        junk, distractors = self.junk_names, self.distractor_names

        train_names = sorted(n for n in scans["train"] if n not in junk and n not in distractors)
        if not train_names:
            raise DatasetError(
                f"'{self.root / self.split_dirs['train']}' holds no identity folder besides junk and distractors "
                f"({', '.join(sorted(junk | distractors))}): expected {self.layout}."
            )
        query_names = {n for n in scans["query"] if n not in junk and n not in distractors}
        if not query_names:
            raise DatasetError(
                f"'{self.root / self.split_dirs['query']}' holds no identity folder besides junk and distractors: "
                f"expected {self.layout}."
            )
        gallery_names = {n for n in scans["gallery"] if n not in junk and n not in distractors}
        if not query_names & gallery_names:
            raise DatasetError(
                f"no query identity of '{self.root / self.split_dirs['query']}' has a folder of the same name in "
                f"'{self.root / self.split_dirs['gallery']}': evaluation needs query identities found in the gallery."
            )

        def pid_of(name: str, ids: dict[str, int]) -> int:
            return -1 if name in junk else 0 if name in distractors else ids[name]

        train_ids = {n: i + 1 for i, n in enumerate(train_names)}
        eval_ids = {n: i + 1 for i, n in enumerate(sorted(query_names | gallery_names))}
        flat = {
            split: [
                (path, name) for name, paths in scans[split].items() if name not in junk for path in paths
            ]
            for split in scans
        }
        train_cams = self._cameras([p for p, _ in flat["train"]], "train")
        eval_cams = self._cameras([p for p, _ in flat["query"] + flat["gallery"]], "query and gallery")
        query_cams, gallery_cams = eval_cams[: len(flat["query"])], eval_cams[len(flat["query"]) :]
        cross_set = all(c is None for c in eval_cams)
        self._train_names, self._cross_set = train_names, cross_set
        self._train_cameras = any(c is not None for c in train_cams)
        return {
            "train": [(p, pid_of(n, train_ids), c or 0) for (p, n), c in zip(flat["train"], train_cams)],
            "query": [
                (p, pid_of(n, eval_ids), 0 if cross_set else c)
                for (p, n), c in zip(flat["query"], query_cams)
            ],
            "gallery": [
                (p, pid_of(n, eval_ids), 1 if cross_set else c)
                for (p, n), c in zip(flat["gallery"], gallery_cams)
            ],
        }

    @property
    def cross_set(self) -> bool:
        """True when query/gallery cameras are not parsed from the names (query = camera 0, gallery = camera 1)."""
        if self._records is None:
            self.check()
        return self._cross_set

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        """Training identity folder names; label ``i`` is ``class_names[i]``."""
        if self._train_names is None:
            self.check()
        return list(self._train_names)
