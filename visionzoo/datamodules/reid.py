"""Person re-identification data: :class:`ReIDDataModule` (shared machinery), Market-1501, PK sampling.

:class:`ReIDDataModule` holds everything but the file layout; a subclass implements ``_load_records()`` (and its
own error sentences). :class:`~visionzoo.datamodules.reid_folder.ReIDFolderDataModule` reads a generic
``ROOT/{train,query,gallery}/<identity>/<image>`` layout.

Layout (``Market-1501-v15.09.15`` as released; ``root`` may be that folder or its parent)::

    ROOT/bounding_box_train/0002_c1s1_000451_03.jpg   # 751 ids, relabelled 0..N-1 for training
    ROOT/query/0001_c1s1_001051_00.jpg                # 3,368 query images
    ROOT/bounding_box_test/0000_c1s1_000151_01.jpg    # gallery: real ids, distractors (0000), junk (-1)

File names are ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg``; camids become 0-based (``c1`` -> 0).

* **Junk** images (pid ``-1``) are dropped from every split; **distractors** (pid ``0``) stay in the gallery (they
  are never a match, see :mod:`visionzoo.tasks.reid_metrics`) and are dropped from train and query.
* **Training** pids are relabelled to ``0..num_classes-1`` in sorted order (``num_classes`` = train ids).
* **Splits** (protocol). Market-1501 releases train + a query/gallery test set and no validation split; Bag of
  Tricks (reid-strong-baseline) and fast-reid report the final epoch on query + gallery. Here ``test`` is the
  released query + gallery, and ``val`` is a seeded, **identity-disjoint** hold-out of the training identities
  (``val_id_fraction``, default 0.1 of them, at least one; ``seed``): for each held-out identity and camera one
  image (seeded draw) is a query and the identity's other images are its gallery (one query per identity per
  camera, as fast-reid / torchreid build validation sets; with no cameras, one query per identity and the cross-set
  rule below). Held-out identities are not trained on (``num_classes`` counts the rest). ``val_id_fraction: 0``: no
  validation split (nothing to choose a checkpoint on: report the final one).
* **Unreadable images**: training replaces a file PIL cannot decode by another image of the same identity, with a
  warning naming it; evaluation never counts a sample twice: every val/test image is decoded at set-up and, by
  default (``eval_corrupt: fail``), set-up stops with one sentence listing the bad files; ``eval_corrupt: exclude``
  leaves them out and ``metrics.json`` reports how many (``_splits.<split>.excluded``).
* **Batches** are dicts. Train: ``image`` (float Bx3xHxW), ``pid`` (relabelled, long), ``camid`` (long).
  Val/test: ``image``, ``pid`` (original id), ``camid`` and ``is_query`` (bool: query or gallery).
* **Train order**: :class:`PKSampler`, ``num_instances`` (K) images of each of
  ``batch_size // K`` (P) ids per batch, reproducible from ``(seed, epoch)``.
* **Transforms** (the "Bag of Tricks" Re-ID recipe): resize to ``image_size`` (default 256x128 = H x W), random
  horizontal flip 0.5, pad 10 + random crop back to size, normalise, random erasing (``re_prob``, default 0.5;
  erased pixels are 0 after normalisation, i.e. the mean colour). Eval: resize + normalise.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ..errors import ConfigError, DatasetError
from ._base import _positive_int, to_plain
from .folder import (
    DECODE_ERRORS,
    EVAL_CORRUPT,
    UnreadableImageWarning,
    exclude_unreadable,
    is_image_file,
    load_rgb,
    unreadable_reason,
)
from .loaders import TrainPositionMixin, eval_loader, train_loader
from .samplers import EpochSampler

__all__ = [
    "MARKET1501_DIRNAME",
    "Market1501DataModule",
    "PKSampler",
    "ReIDDataModule",
    "ReIDDataset",
    "Records",
    "parse_market_name",
]

MARKET1501_DIRNAME = "Market-1501-v15.09.15"
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_SPLITS = ("bounding_box_train", "query", "bounding_box_test")

#: ``{"train": [...], "query": [...], "gallery": [...]}`` of ``(path, pid, camid)``; pid ``-1`` = junk (dropped
#: everywhere), ``0`` = distractor (kept in the gallery only), ``> 0`` = a real identity.
Records = dict[str, list[tuple[str, int, int]]]


def parse_market_name(name: str) -> tuple[int, int] | None:
    """``(pid, camid)`` (camid 0-based) of a Market-1501 file name, or ``None`` when it does not parse."""
    m = _NAME.match(os.path.basename(name))
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)) - 1


class PKSampler(EpochSampler):
    """Identity sampler: every consecutive ``batch_size`` indices are K images of each of P ids.

    Per epoch (order drawn from ``seed`` and ``epoch`` only, like ``EpochShuffleSampler``): each id's images are
    shuffled and cut into groups of K (an id with fewer than K images, or a last group short of K, is topped up
    by drawing its own images again); then batches take P random ids that still have groups, one group each,
    until fewer than P ids are left. Lightning calls ``set_epoch`` before each training epoch. Every epoch has the
    length of epoch 0 (cut, or as drawn when shorter), so the schedule and the epoch length do not depend on the
    epoch a run was resumed at. Under DDP each process takes whole PK batches (:class:`EpochSampler`).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0) -> None:
        if batch_size % num_instances:
            raise ConfigError(f"batch_size {batch_size} must be a multiple of num_instances {num_instances}.")
        super().__init__(len(pids), seed)
        self.chunk = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(pids):
            self.index_by_pid[int(p)].append(i)
        self.pid_list = sorted(self.index_by_pid)
        if len(self.pid_list) < self.num_pids_per_batch:
            raise DatasetError(
                f"the training split has {len(self.pid_list)} identities but a batch needs "
                f"{self.num_pids_per_batch} (batch_size {batch_size} / num_instances {num_instances})."
            )
        self._cache: dict[int, list[int]] = {}

    def epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            length = len(self._order(0)) if epoch else None
            self._cache = {epoch: self._order(epoch)[:length]}
        return self._cache[epoch]

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        k = self.num_instances
        groups: dict[int, list[list[int]]] = {}
        for pid in self.pid_list:
            idxs = self.index_by_pid[pid]
            perm = [idxs[j] for j in torch.randperm(len(idxs), generator=g).tolist()]
            short = (-len(perm)) % k
            if short:
                perm += [idxs[j] for j in torch.randint(len(idxs), (short,), generator=g).tolist()]
            groups[pid] = [perm[j : j + k] for j in range(0, len(perm), k)]
        order: list[int] = []
        available = list(self.pid_list)
        while len(available) >= self.num_pids_per_batch:
            picks = torch.randperm(len(available), generator=g)[: self.num_pids_per_batch].tolist()
            chosen = [available[j] for j in picks]
            for pid in chosen:
                order.extend(groups[pid].pop())
            available = [p for p in available if groups[p]]
        return order


class ReIDDataset(Dataset):
    """``(path, pid, camid, is_query)`` records decoded with PIL; items are dicts (see the module docstring).

    ``substitute`` (training): an unreadable file is replaced, with a warning naming it, by the next readable
    image of the same identity (the PK batch keeps its identities); otherwise (evaluation) it stops the run.
    """

    def __init__(
        self,
        records: list[tuple[str, int, int, bool]],
        transform=None,
        with_flag: bool = True,
        substitute: bool = False,
    ) -> None:
        self.records = records
        self.pids = [r[1] for r in records]
        self.transform = transform
        self.with_flag = with_flag
        self.substitute = substitute
        self.bad_files: set[str] = set()
        self._same_pid: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(self.pids):
            self._same_pid[p].append(i)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[Any, tuple[str, int, int, bool]]:
        record = self.records[index]
        if not self.substitute:
            try:
                return load_rgb(record[0]), record
            except DECODE_ERRORS as err:
                raise DatasetError(
                    f"evaluation image '{record[0]}' cannot be decoded ({unreadable_reason(err)}) although it was "
                    "readable at set-up: an evaluation never replaces an image, restore the file and rerun."
                ) from None
        same = self._same_pid[record[1]]
        start = same.index(index)
        for step in range(len(same)):
            candidate = self.records[same[(start + step) % len(same)]]
            if candidate[0] in self.bad_files:
                continue
            try:
                return load_rgb(candidate[0]), candidate
            except DECODE_ERRORS as err:
                self.bad_files.add(candidate[0])
                warnings.warn(
                    f"skipping unreadable image '{candidate[0]}' ({unreadable_reason(err)}); using another image "
                    "of the same identity instead",
                    UnreadableImageWarning,
                    stacklevel=2,
                )
        raise DatasetError(
            f"no image of training identity {record[1]} could be decoded (e.g. '{record[0]}'): expected readable "
            "image files."
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        img, (path, pid, camid, is_query) = self._load(index)
        if self.transform is not None:
            img = self.transform(img)
        item = {"image": img, "pid": pid, "camid": camid}
        if self.with_flag:
            item["is_query"] = is_query
        return item


class ReIDDataModule(TrainPositionMixin, L.LightningDataModule):
    """Re-ID training (ID classes = train identities) and query/gallery evaluation, whatever the file layout.

    A subclass implements :meth:`_load_records` (scan the files, raise :class:`DatasetError` with one sentence
    when the layout is wrong or a split has no usable image) and may override :attr:`class_names`.

    Args:
        root: the dataset folder.
        batch_size: images per train batch, ``P * K``; must be a multiple of ``num_instances``.
        num_instances: K, images per identity in a train batch.
        eval_batch_size: images per val/test batch (default: ``batch_size``).
        image_size: ``(height, width)`` of the inputs, default ``(256, 128)``.
        re_prob: random-erasing probability; ``hflip``: flip probability; ``pad``: pixels of pad-and-crop.
        mean, std: normalisation (default ImageNet); ``set_data_config`` may override them from the model.
        val_id_fraction: share of the training identities held out as the validation query/gallery set (module
            docstring); ``seed``: the draw of those identities and of their query images.
        eval_corrupt: ``fail`` (default) or ``exclude`` unreadable val/test images (module docstring).
    """

    #: folder names of the splits, for the descriptions in metrics.json (a subclass's layout)
    split_dirs = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    #: whether training file names carry cameras (else the validation set uses the cross-set rule)
    _train_cameras = True

    task = "reid"
    in_chans = 3

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_instances: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: Sequence[int] | int = (256, 128),
        re_prob: float = 0.5,
        hflip: float = 0.5,
        pad: int = 10,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        val_id_fraction: float = 0.1,
        seed: int = 0,
        eval_corrupt: str = "fail",
    ) -> None:
        super().__init__()
        self.root = None if root is None or str(root).strip() == "" else Path(os.path.expanduser(str(root)))
        self.batch_size = _positive_int(batch_size, "data.batch_size")
        self.num_instances = _positive_int(num_instances, "data.num_instances")
        if self.batch_size % self.num_instances:
            raise ConfigError(
                f"data.batch_size {batch_size} is not a multiple of data.num_instances {num_instances}: "
                "a PK batch holds P identities x K images."
            )
        self.eval_batch_size = _positive_int(eval_batch_size or batch_size, "data.eval_batch_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        size = to_plain(image_size)
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2:
            raise ConfigError(f"data.image_size must be (height, width) or an int, got {image_size!r}.")
        self.image_size = (
            _positive_int(size[0], "data.image_size"),
            _positive_int(size[1], "data.image_size"),
        )
        if not 0.0 <= float(re_prob) <= 1.0 or not 0.0 <= float(hflip) <= 1.0:
            raise ConfigError(
                f"data.re_prob and data.hflip must be in [0, 1], got {re_prob!r} and {hflip!r}."
            )
        self.re_prob, self.hflip = float(re_prob), float(hflip)
        self.pad = int(pad)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        number = not isinstance(val_id_fraction, bool) and isinstance(val_id_fraction, int | float)
        if not number or not 0.0 <= float(val_id_fraction) < 1.0:
            raise ConfigError(f"data.val_id_fraction must be a number in [0, 1), got {val_id_fraction!r}.")
        self.val_id_fraction = float(val_id_fraction)
        self.seed = int(seed)
        if eval_corrupt not in EVAL_CORRUPT:
            raise ConfigError(
                f"data.eval_corrupt must be one of {', '.join(EVAL_CORRUPT)}, got {eval_corrupt!r}."
            )
        self.eval_corrupt = eval_corrupt
        self.shuffle_seed = 0
        self._records: Records | None = None
        self._train_pids: list[int] | None = None
        self._val_pids: list[int] = []
        self._split_records: dict[str, list[tuple[str, int, int, bool]]] | None = None
        self._excluded: dict[str, list[str]] = {}
        self.train_dataset: ReIDDataset | None = None
        self.val_dataset: ReIDDataset | None = None
        self.test_dataset: ReIDDataset | None = None

    # ------------------------------------------------------------------ layout
    def _load_records(self) -> Records:
        """Scan the files: ``{"train", "query", "gallery"}`` lists of ``(path, pid, camid)`` (see :data:`Records`).

        Raises :class:`DatasetError` (one sentence naming the path and the expected layout) when ``root`` is
        unset or missing, a split is missing, or train/query hold no real identity or the gallery no image.
        """
        raise NotImplementedError

    def check(self) -> None:
        recs = self._load_records()
        self._records = recs
        pids = sorted({p for _, p, _ in recs["train"] if p > 0})
        self._val_pids = self._held_out_pids(pids)
        held = set(self._val_pids)
        self._train_pids = [p for p in pids if p not in held]

    def _held_out_pids(self, pids: list[int]) -> list[int]:
        """The seeded ``val_id_fraction`` of the training identities (at least one when > 0), sorted."""
        if self.val_id_fraction <= 0:
            return []
        count = max(1, round(self.val_id_fraction * len(pids)))
        if count >= len(pids):
            raise DatasetError(
                f"the training split has {len(pids)} identities: holding out {count} for validation "
                f"(data.val_id_fraction {self.val_id_fraction:g}) leaves none to train on; lower "
                "data.val_id_fraction or set it to 0 (no validation split)."
            )
        order = np.random.default_rng(self.seed).permutation(len(pids))[:count]
        return sorted(pids[i] for i in order)

    @property
    def val_pids(self) -> list[int]:
        """Original ids of the identities held out for validation (not trained on)."""
        if self._train_pids is None:
            self.check()
        return list(self._val_pids)

    def _validation_records(self) -> list[tuple[str, int, int, bool]]:
        """Held-out identities as query + gallery (module docstring): per identity, one seeded query image per
        camera (cameras in order) while the identity keeps at least one gallery image; the rest is gallery."""
        held = set(self._val_pids)
        by_pid: dict[int, dict[int, list[tuple[str, int, int]]]] = defaultdict(lambda: defaultdict(list))
        for path, p, c in self._records["train"]:
            if p in held:
                by_pid[p][c if self._train_cameras else 0].append((path, p, c))
        rng = np.random.default_rng([self.seed, 1])
        query, gallery, valid = [], [], 0
        for pid in sorted(by_pid):
            cams = by_pid[pid]
            left = sum(len(items) for items in cams.values())
            picks: dict[int, int] = {}
            for cam in sorted(cams):
                pick = int(rng.integers(len(cams[cam])))
                if left > 1:
                    picks[cam] = pick
                    left -= 1
            q_cams = {c for c in picks}
            g_cams = {c for c, items in cams.items() if len(items) > (1 if c in picks else 0)}
            valid += bool(q_cams) and (not self._train_cameras or bool(g_cams - q_cams) or len(q_cams) > 1)
            for cam in sorted(cams):
                for i, (path, p, c) in enumerate(cams[cam]):
                    is_q = picks.get(cam) == i
                    camid = c if self._train_cameras else (0 if is_q else 1)  # cross-set: query 0, gallery 1
                    (query if is_q else gallery).append((path, p, camid, is_q))
        if not valid:
            raise DatasetError(
                f"none of the {len(held)} held-out validation identities has a query with a gallery image from "
                "another camera, so validation would score nothing: raise data.val_id_fraction or change data.seed."
            )
        return query + gallery

    def _without_unreadable(self, split: str, records: list[tuple[str, int, int, bool]]) -> list:
        kept, bad = exclude_unreadable(
            split, records, lambda r: r[0], self.eval_corrupt, threads=max(1, self.num_workers)
        )
        if bad:
            self._excluded[split] = bad
        return kept

    def split_records(self) -> dict[str, list[tuple[str, int, int, bool]]]:
        """``{"train", "val", "test"}`` -> ``(path, pid, camid, is_query)`` records (train pids relabelled), computed
        once, evaluation images checked for unreadable files."""
        if self._split_records is not None:
            return self._split_records
        self.check()
        recs = self._records
        label = {p: i for i, p in enumerate(self._train_pids)}
        train = [(path, label[p], c, False) for path, p, c in recs["train"] if p in label]
        query = [(path, p, c, True) for path, p, c in recs["query"] if p > 0]
        gallery = [(path, p, c, False) for path, p, c in recs["gallery"] if p >= 0]
        out = {"train": train, "test": self._without_unreadable("test", query + gallery)}
        if self._val_pids:
            out["val"] = self._without_unreadable("val", self._validation_records())
        self._split_records = out
        return out

    def split_info(self) -> dict[str, dict[str, Any]]:
        """Source, size and SHA-256 of ``relative path<TAB>pid<TAB>camid<TAB>q|g`` lines of each split."""
        from ..provenance import split_entry

        splits = self.split_records()
        d = self.split_dirs
        n_ids = len(self._train_pids) + len(self._val_pids)
        described = {
            "train": f"ROOT/{d['train']}: {len(self._train_pids)} of its {n_ids} identities"
            + (f" (minus the {len(self._val_pids)} held out for val)" if self._val_pids else ""),
            "test": f"ROOT/{d['query']} (query) + ROOT/{d['gallery']} (gallery); junk dropped",
            "val": f"seeded (seed {self.seed}) identity-disjoint hold-out of {len(self._val_pids)} of the {n_ids} "
            f"identities of ROOT/{d['train']} (val_id_fraction {self.val_id_fraction:g}): one query per identity "
            "per camera, the rest gallery",
        }
        out = {}
        for split, records in splits.items():
            items = [
                f"{os.path.relpath(path, self.root)}\t{p}\t{c}\t{'q' if q else 'g'}"
                for path, p, c, q in records
            ]
            extra = {"excluded": len(self._excluded[split])} if split in self._excluded else {}
            out[split] = split_entry(described[split], items, **extra)
        return out

    # ------------------------------------------------------------------ metadata
    @property
    def train_pids(self) -> list[int]:
        """Original ids of the training identities; label ``i`` is ``train_pids[i]``."""
        if self._train_pids is None:
            self.check()
        return list(self._train_pids)

    @property
    def num_classes(self) -> int:
        return len(self.train_pids)

    @property
    def class_names(self) -> list[str]:
        return [str(p) for p in self.train_pids]

    # ------------------------------------------------------------------ transforms
    def set_data_config(self, data_config: Mapping[str, Any]) -> None:
        """Take mean/std from the model's timm data config; the Re-ID input size stays ``image_size``."""
        cfg = to_plain(dict(data_config))
        if cfg.get("mean") is not None:
            self.mean = tuple(float(m) for m in cfg["mean"])
        if cfg.get("std") is not None:
            self.std = tuple(float(s) for s in cfg["std"])
        if self.train_dataset is not None:
            self.train_dataset.transform = self.build_train_transform()
        for ds in {id(d): d for d in (self.val_dataset, self.test_dataset) if d is not None}.values():
            ds.transform = self.build_eval_transform()

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_chans, *self.image_size)

    def build_train_transform(self) -> T.Compose:
        ops: list[Any] = [T.Resize(self.image_size, interpolation=T.InterpolationMode.BILINEAR)]
        if self.hflip > 0:
            ops.append(T.RandomHorizontalFlip(self.hflip))
        if self.pad > 0:
            ops += [T.Pad(self.pad), T.RandomCrop(self.image_size)]
        ops += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if self.re_prob > 0:
            ops.append(T.RandomErasing(p=self.re_prob, value=0))
        return T.Compose(ops)

    def build_eval_transform(self) -> T.Compose:
        return T.Compose(
            [
                T.Resize(self.image_size, interpolation=T.InterpolationMode.BILINEAR),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        splits = self.split_records()
        if self.train_dataset is None:
            self.train_dataset = ReIDDataset(
                splits["train"], self.build_train_transform(), with_flag=False, substitute=True
            )
        if self.test_dataset is None:
            self.test_dataset = ReIDDataset(splits["test"], self.build_eval_transform())
        if self.val_dataset is None and "val" in splits:
            self.val_dataset = ReIDDataset(splits["val"], self.build_eval_transform())

    def _dataset(self, name: str) -> ReIDDataset:
        if getattr(self, name) is None:
            self.setup()
        return getattr(self, name)

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train_dataset")
        sampler = PKSampler(ds.pids, self.batch_size, self.num_instances, seed=self.shuffle_seed)
        return train_loader(
            self,
            ds,
            sampler,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _eval_loader(self, ds: ReIDDataset) -> DataLoader:
        return eval_loader(
            ds, batch_size=self.eval_batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def val_dataloader(self) -> DataLoader | list:
        """The held-out validation identities; none (``[]``: Lightning skips validation) at ``val_id_fraction: 0``."""
        if self._dataset("test_dataset") is not None and self.val_dataset is None:
            return []
        return self._eval_loader(self._dataset("val_dataset"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._dataset("test_dataset"))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class Market1501DataModule(ReIDDataModule):
    """Market-1501 (see the module docstring): ``root`` is the ``Market-1501-v15.09.15`` folder (or its parent);
    the other arguments are :class:`ReIDDataModule`'s."""

    @property
    def data_dir(self) -> Path | None:
        if self.root is not None and (self.root / MARKET1501_DIRNAME).is_dir():
            return self.root / MARKET1501_DIRNAME
        return self.root

    def _scan(self, split: str) -> list[tuple[str, int, int]]:
        folder = self.data_dir / split
        if not folder.is_dir():
            raise DatasetError(
                f"Market-1501 split folder '{folder}' is missing: expected ROOT/{{{','.join(_SPLITS)}}}/"
                f"<pid>_c<cam>s<seq>_<frame>_<box>.jpg under data.root ({MARKET1501_DIRNAME} layout)."
            )
        records, unparsed = [], []
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or not is_image_file(name):
                continue
            parsed = parse_market_name(name)
            if parsed is None:
                unparsed.append(name)
                continue
            records.append((str(folder / name), *parsed))
        if unparsed:
            raise DatasetError(
                f"'{folder / unparsed[0]}' (and {len(unparsed) - 1} more) does not follow Market-1501 naming: "
                "expected <pid>_c<cam>s<seq>_<frame>_<box>.jpg, e.g. 0002_c1s1_000451_03.jpg."
            )
        return records

    def _load_records(self) -> Records:
        if self.root is None:
            raise DatasetError(f"data.root is not set: point it at the {MARKET1501_DIRNAME} folder.")
        if not self.root.is_dir():
            raise DatasetError(
                f"data.root '{self.root}' is not an existing folder: expected the {MARKET1501_DIRNAME} folder."
            )
        recs = {s: self._scan(s) for s in _SPLITS}
        if not any(p > 0 for _, p, _ in recs["bounding_box_train"]):
            raise DatasetError(
                f"'{self.data_dir / 'bounding_box_train'}' holds no image of a real identity: "
                "expected files such as 0002_c1s1_000451_03.jpg."
            )
        if not any(p > 0 for _, p, _ in recs["query"]):
            raise DatasetError(f"'{self.data_dir / 'query'}' holds no query image of a real identity.")
        if not any(p >= 0 for _, p, _ in recs["bounding_box_test"]):
            raise DatasetError(
                f"'{self.data_dir / 'bounding_box_test'}' holds no gallery image (besides junk)."
            )
        return {
            "train": recs["bounding_box_train"],
            "query": recs["query"],
            "gallery": recs["bounding_box_test"],
        }

    @property
    def class_names(self) -> list[str]:
        return [f"{p:04d}" for p in self.train_pids]
