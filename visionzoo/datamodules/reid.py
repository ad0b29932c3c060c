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
* **Batches** are dicts. Train: ``image`` (float Bx3xHxW), ``pid`` (relabelled, long), ``camid`` (long).
  Val/test (the same query + gallery set; Market-1501 has no separate validation split): ``image``, ``pid``
  (original id), ``camid`` and ``is_query`` (bool: query or gallery).
* **Train order**: :class:`PKSampler`, ``num_instances`` (K) images of each of
  ``batch_size // K`` (P) ids per batch, reproducible from ``(seed, epoch)``.
* **Transforms** (the "Bag of Tricks" Re-ID recipe): resize to ``image_size`` (default 256x128 = H x W), random
  horizontal flip 0.5, pad 10 + random crop back to size, normalise, random erasing (``re_prob``, default 0.5;
  erased pixels are 0 after normalisation, i.e. the mean colour). Eval: resize + normalise.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ..errors import ConfigError, DatasetError
from ._base import _positive_int, to_plain
from .folder import is_image_file, load_rgb
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
    """``(path, pid, camid, is_query)`` records decoded with PIL; items are dicts (see the module docstring)."""

    def __init__(
        self, records: list[tuple[str, int, int, bool]], transform=None, with_flag: bool = True
    ) -> None:
        self.records = records
        self.pids = [r[1] for r in records]
        self.transform = transform
        self.with_flag = with_flag

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, pid, camid, is_query = self.records[index]
        img = load_rgb(path)
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
    """

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
        self.shuffle_seed = 0
        self._records: Records | None = None
        self._train_pids: list[int] | None = None
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
        self._train_pids = sorted({p for _, p, _ in recs["train"] if p > 0})

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
        self.check()
        recs = self._records
        if self.train_dataset is None:
            label = {p: i for i, p in enumerate(self._train_pids)}
            train = [(path, label[p], c, False) for path, p, c in recs["train"] if p > 0]
            self.train_dataset = ReIDDataset(train, self.build_train_transform(), with_flag=False)
        if self.val_dataset is None:
            query = [(path, p, c, True) for path, p, c in recs["query"] if p > 0]
            gallery = [(path, p, c, False) for path, p, c in recs["gallery"] if p >= 0]
            self.val_dataset = ReIDDataset(query + gallery, self.build_eval_transform())
            self.test_dataset = self.val_dataset

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

    def val_dataloader(self) -> DataLoader:
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
