"""Shared machinery of every segmentation DataModule: samples, readers, splits, pipelines, loaders.

Contract with the segmentation task and the runner
--------------------------------------------------
* ``task = "segmentation"``, ``in_chans``, ``num_classes`` (background included: binary sets have 2),
  ``class_names``, ``ignore_index`` (``None`` or the label the loss and metrics skip), ``metrics`` (the
  data config's hints, e.g. ``["dice", "iou", "hd95"]``) and ``shuffle_seed``;
* ``check()`` validates the layout cheaply (it also compares the first images of each split with their
  masks) and raises :class:`~visionzoo.errors.DatasetError` with one sentence naming the missing path and
  the expected layout; it runs before the model is built and again in ``setup()``;
* ``set_data_config(timm_data_config)`` gives the normalisation mean/std; the network input size is the
  data config's own ``image_size`` (int or ``[h, w]``; ``None`` → the model's input size);
* train batches: ``{"image": float B×C×H×W, "mask": long B×H×W}``;
* val/test batches: the same plus ``"orig_mask"`` (a list of long ``h_i×w_i`` masks at the original
  resolution, for metrics), ``"name"`` (list of str) and, for volumes, ``"volume_id"``/``"slice_index"``;
* predict batches: ``{"image", "name", "orig_size": list[(h_i, w_i)]}`` (+ volume keys).

Unreadable files: in **training** a file that cannot be decoded is reported once with an
:class:`UnreadableImageWarning` naming it and the sample is replaced by the next readable one. In
**evaluation** no sample is ever replaced (that would count one twice): when the val/test datasets are set up
every sample is decoded once, and unreadable ones make set-up fail with one sentence listing them
(``eval_unreadable: error``, the default) or are left out with a warning (``eval_unreadable: exclude``); the
count left out is ``excluded[split]`` and ``split_info()[split]["excluded"]``. A mask whose size differs from
its image is a :class:`~visionzoo.errors.DatasetError` naming the file (checked at load time, and on the first
samples of each split by ``check()``).

Splits (:mod:`.splits`, the only place they are decided): three disjoint sets -- ``train``, ``val`` (checkpoint
selection) and ``test`` (evaluated once). ``split_info()`` gives ``{split: {"size", "sha256", "source",
"excluded"}}`` for run provenance (``sha256`` of the split's sorted sample names and root-relative files).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ...errors import ConfigError, DatasetError
from .._base import _positive_int, to_plain
from ..folder import UnreadableImageWarning, load_rgb
from ..loaders import SplitLoadersMixin
from .splits import ValHoldout, check_fold, kfold_split, official_split
from .transforms import (
    EVAL_RESIZE_MODES,
    RESIZE_MODES,
    Normalizer,
    build_ops,
    eval_pipeline,
    fit_to_size,
    train_pipeline,
)

#: Extensions of 2-D image and mask files (matched case-insensitively).
SEG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
#: Mean/std when ``set_data_config`` is never called (timm's ImageNet defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: what evaluation does with a file that cannot be decoded (see the module docstring)
EVAL_UNREADABLE = ("error", "exclude")

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, cv2.error)


# ---------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SegSample:
    """One image and what labels it: mask files (OR-merged or decoded by the reader), an optional
    field-of-view mask, and for slices of a volume its id and slice index."""

    name: str
    image: str
    masks: tuple[str, ...] = ()
    fov: str | None = None
    volume_id: str | None = None
    slice_index: int | None = None


def is_seg_file(name: str, extensions: Sequence[str] = SEG_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions)) and not name.startswith(".")


def list_files(folder: Path, extensions: Sequence[str] = SEG_EXTENSIONS) -> list[Path]:
    """The image files directly inside ``folder`` (not recursive, hidden files skipped), sorted by name."""
    with os.scandir(folder) as it:
        return sorted(
            (Path(e.path) for e in it if is_seg_file(e.name, extensions) and e.is_file()),
            key=lambda p: p.name,
        )


def stem(path: Path | str) -> str:
    return Path(path).name.rsplit(".", 1)[0]


def locate(root: Path, marker: str) -> Path | None:
    """The folder holding ``marker`` (a relative path): ``root`` itself or one of its sub-folders
    (so ``data.root`` may point at an archive's top folder or at the folder it was extracted into)."""
    if (root / marker).exists():
        return root
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return None
    for child in children:
        if (child / marker).exists():
            return child
    return None


def require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "is missing"
        raise DatasetError(f"folder '{path}' {what}: expected {layout}.")
    return path


def pair_masks(
    images: list[Path], mask_dir: Path, suffix: str = "", extensions: Sequence[str] = SEG_EXTENSIONS
) -> list[SegSample]:
    """Match every image to ``mask_dir/<stem><suffix>.<any ext>``; a missing mask is a DatasetError."""
    masks: dict[str, Path] = {}
    for m in list_files(mask_dir, extensions):
        masks.setdefault(stem(m), m)
    samples = []
    for img in images:
        key = stem(img) + suffix
        if key not in masks:
            raise DatasetError(
                f"image '{img}' has no mask '{mask_dir / key}.*': every image needs a mask of the same name in '{mask_dir}'."
            )
        samples.append(SegSample(stem(img), str(img), (str(masks[key]),)))
    return samples


# ---------------------------------------------------------------------------------------------- readers
def image_hw(path: str) -> tuple[int, int]:
    """``(h, w)`` from the file header (no decoding)."""
    with Image.open(path) as img:
        return img.height, img.width


def read_binary(path: str, threshold: int = 127) -> np.ndarray:
    """An 8-bit mask (any mode) → uint8 {0, 1} with ``value > threshold`` (JPEG masks are lossy)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode in ("I;16", "I", "F"):
        arr = np.asarray(img)
        return (arr > threshold).astype(np.uint8)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return (np.asarray(img.convert("L")) > threshold).astype(np.uint8)


@contextmanager
def names_file(path: str) -> Iterator[None]:
    """Tag a decode error raised inside with ``filename = path`` (PIL leaves it unset for file objects), so the
    warning or error names the mask that failed rather than its image."""
    try:
        yield
    except _DECODE_ERRORS as err:
        if not getattr(err, "filename", None):
            err.filename = path
        raise


class SampleReader:
    """Reads ``(image H×W×3 uint8, mask H×W uint8 | None)`` for a :class:`SegSample` from files.

    The default mask decoding is binary: every mask file is thresholded (``> threshold``) and the files
    of one sample are OR-merged. ``fov_ignore`` (an int) marks pixels outside the sample's field-of-view
    mask with that label (used for evaluation on DRIVE). Instances are picklable (dataloader workers).
    """

    def __init__(self, threshold: int = 127, fov_ignore: int | None = None) -> None:
        self.threshold = threshold
        self.fov_ignore = fov_ignore

    def read_image(self, sample: SegSample) -> np.ndarray:
        return np.asarray(load_rgb(sample.image))

    def decode_mask(self, path: str) -> np.ndarray:
        return read_binary(path, self.threshold)

    def merge(self, masks: list[np.ndarray]) -> np.ndarray:
        out = masks[0].copy()
        for m in masks[1:]:
            np.maximum(out, m, out=out)
        return out

    def load(self, sample: SegSample, with_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        image = self.read_image(sample)
        if not with_mask:
            return image, None
        h, w = image.shape[:2]
        masks = []
        for path in sample.masks:
            with names_file(path):
                m = self.decode_mask(path)
            _check_same_size(path, m.shape[:2], sample.image, (h, w))
            masks.append(m)
        mask = self.merge(masks)
        if sample.fov is not None and self.fov_ignore is not None:
            with names_file(sample.fov):
                fov = read_binary(sample.fov)
            _check_same_size(sample.fov, fov.shape, sample.image, (h, w))
            mask = mask.copy()
            mask[fov == 0] = self.fov_ignore
        return image, mask

    def check_sizes(self, sample: SegSample) -> None:
        """Compare the header sizes of the image and its masks (cheap, no decoding)."""
        hw = image_hw(sample.image)
        for path in (*sample.masks, *((sample.fov,) if sample.fov else ())):
            _check_same_size(path, image_hw(path), sample.image, hw)


def _check_same_size(mask_path: str, mask_hw: tuple[int, int], image_path: str, hw: tuple[int, int]) -> None:
    if tuple(mask_hw) != tuple(hw):
        raise DatasetError(
            f"mask '{mask_path}' is {mask_hw[1]}×{mask_hw[0]} px but its image '{image_path}' is {hw[1]}×{hw[0]} px: "
            "every mask must have its image's size."
        )


def colour_code(space: str) -> int | None:
    """OpenCV's RGB → ``space`` conversion code (case-insensitive: ``YCrCb``, ``hsv``...), or None."""
    want = f"COLOR_RGB2{space.upper()}"
    return next((getattr(cv2, n) for n in dir(cv2) if n.upper() == want), None)


def unreadable_reason(err: BaseException, sample: SegSample) -> tuple[str, str]:
    """``(the file that failed, a short reason)`` for a decode error of ``sample``."""
    bad = getattr(err, "filename", None) or sample.image
    if isinstance(err, UnidentifiedImageError):
        return str(bad), "not a format PIL can identify"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return str(bad), text


#: an unreadable sample: ``(the sample, the file that failed, a short reason)``
Unreadable = tuple[SegSample, str, str]


def find_unreadable(samples: Sequence[SegSample], reader: SampleReader, workers: int = 1) -> list[Unreadable]:
    """Decode every sample (image and masks) once and return those that fail (threads: PIL and OpenCV decode
    without the GIL)."""

    def probe(sample: SegSample) -> Unreadable | None:
        try:
            reader.load(sample, True)
        except DatasetError:
            raise
        except _DECODE_ERRORS as err:
            return (sample, *unreadable_reason(err, sample))
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(probe, samples) if r is not None]


def split_fingerprint(samples: Sequence[SegSample], root: Path | None) -> str:
    """sha256 of the sorted lines ``name<TAB>files`` (paths relative to ``root``): the split's membership."""

    def rel(path: str | None) -> str:
        if not path:
            return ""
        if root is not None and os.path.isabs(path):
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                return Path(path).as_posix()
        return path

    lines = sorted(
        "\t".join([s.name, rel(s.image), *(rel(m) for m in s.masks), rel(s.fov)])
        + (f"\t{s.volume_id}:{s.slice_index}" if s.volume_id is not None else "")
        for s in samples
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- dataset
class SegmentationDataset(Dataset):
    """Samples → dicts of tensors. ``mode``: ``train`` (image, mask), ``eval`` (+ orig_mask, name, volume
    keys) or ``predict`` (image, name, orig_size, volume keys; masks are not read)."""

    def __init__(
        self,
        samples: list[SegSample],
        reader: SampleReader,
        transform: Callable,
        normalizer: Normalizer,
        size: tuple[int, int],
        mode: str = "train",
        color_space: str = "RGB",
    ) -> None:
        self.samples = list(samples)
        self.reader = reader
        self.transform = transform
        self.normalizer = normalizer
        self.size = tuple(size)
        self.mode = mode
        self.color_space = color_space
        self.bad_files: set[str] = set()
        self._seeded_for: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        return len(self.bad_files)

    def _read(self, index: int) -> tuple[SegSample, np.ndarray, np.ndarray | None]:
        n = len(self.samples)
        with_mask = self.mode != "predict"
        for step in range(n):
            sample = self.samples[(index + step) % n]
            if sample.image in self.bad_files:
                continue
            try:
                image, mask = self.reader.load(sample, with_mask)
                return sample, image, mask
            except DatasetError:
                raise
            except _DECODE_ERRORS as err:
                bad, reason = unreadable_reason(err, sample)
                if self.mode == "eval":  # replacing it would count another sample twice
                    raise DatasetError(
                        f"file '{bad}' could not be decoded during evaluation ({reason}) although it was readable "
                        "at set-up: expected the evaluation files to stay unchanged while the run reads them."
                    ) from err
                self.bad_files.add(sample.image)
                warnings.warn(
                    f"skipping unreadable image '{bad}' ({reason}); using the next readable sample instead",
                    UnreadableImageWarning,
                    stacklevel=2,
                )
        folder = os.path.dirname(self.samples[0].image) if n else "?"
        raise DatasetError(
            f"no sample under '{folder}' could be decoded: expected readable image and mask files."
        )

    def _seed_transform(self) -> None:
        # albumentations draws from its own generators, seeded from the OS unless told: seed them from
        # torch's per-process seed (set by seed_everything, distinct per dataloader worker).
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded_for and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
            self._seeded_for = seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, image, mask = self._read(index)
        if self.color_space != "RGB" and image.dtype == np.uint8 and image.shape[-1] == 3:
            image = cv2.cvtColor(image, colour_code(self.color_space))
        orig_hw = image.shape[:2]
        if self.mode == "train":
            self._seed_transform()
            out = self.transform(image=image, mask=mask)
            img, msk = fit_to_size(out["image"], out["mask"], self.size)
            return {"image": self.normalizer(img), "mask": torch.from_numpy(np.ascontiguousarray(msk)).long()}
        if self.mode == "predict":
            out = self.transform(image=image)
            item = {"image": self.normalizer(out["image"]), "name": sample.name, "orig_size": tuple(orig_hw)}
        else:
            out = self.transform(image=image, mask=mask)
            item = {
                "image": self.normalizer(out["image"]),
                "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
                "orig_mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
                "name": sample.name,
            }
        if sample.volume_id is not None:
            item["volume_id"] = sample.volume_id
            item["slice_index"] = int(sample.slice_index)
        return item


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and network-size masks; keep original-size masks, names and volume keys as lists."""
    out: dict[str, Any] = {"image": torch.stack([b["image"] for b in batch])}
    if "mask" in batch[0]:
        out["mask"] = torch.stack([b["mask"] for b in batch])
    for key in ("orig_mask", "name", "orig_size", "volume_id", "slice_index"):
        if key in batch[0]:
            out[key] = [b[key] for b in batch]
    return out


# ---------------------------------------------------------------------------------------------- module
def parse_image_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    value = to_plain(value)
    if isinstance(value, tuple) and len(value) == 2:
        return _positive_int(value[0], "data.image_size[0]"), _positive_int(value[1], "data.image_size[1]")
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    size = _positive_int(value, "data.image_size")
    return size, size


class SegmentationDataModule(SplitLoadersMixin, L.LightningDataModule):
    """Base class: subclasses set ``dataset_name``, ``class_names`` and implement ``_layout()`` and
    ``_discover(root) -> {"train": [...], "val": [...], "test": [...]}`` (+ ``_reader(split)`` when the
    masks are not binary)."""

    task = "segmentation"
    in_chans = 3
    dataset_name = "a segmentation dataset"
    ignore_index: int | None = None
    #: normalisation when the config's ``normalize`` is null: the data config's mean/std
    default_normalize: str = "mean_std"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        image_size: int | Sequence[int] | None = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        train_transform: list | None = None,
        resize: str = "stretch",
        eval_resize: str = "stretch",
        normalize: str | Mapping | None = None,
        color_space: str = "RGB",
        predict_dir: str | os.PathLike | None = None,
        metrics: Sequence[str] | None = None,
        check_samples: int = 2,
        eval_unreadable: str = "error",
    ) -> None:
        super().__init__()
        self.root = None if root is None or str(root).strip() == "" else Path(os.path.expanduser(str(root)))
        self.image_size = parse_image_size(image_size)
        self.batch_size = _positive_int(batch_size, "data.batch_size")
        self.val_batch_size = _positive_int(val_batch_size or batch_size, "data.val_batch_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.train_ops = build_ops(to_plain(train_transform) if train_transform is not None else None)
        if resize not in RESIZE_MODES:
            raise ConfigError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}.")
        self.resize = resize
        if eval_resize not in EVAL_RESIZE_MODES:
            raise ConfigError(
                f"data.eval_resize must be one of {', '.join(EVAL_RESIZE_MODES)}, got {eval_resize!r}."
            )
        if eval_resize == "shortest" and self.val_batch_size != 1:
            raise ConfigError(
                "data.eval_resize=shortest keeps each image's aspect ratio, so evaluation images differ in size: "
                f"set data.val_batch_size=1 (got {self.val_batch_size})."
            )
        self.eval_resize = eval_resize
        self.normalize = self._parse_normalize(to_plain(normalize))
        space = str(color_space)
        if space.upper() != "RGB" and colour_code(space) is None:
            raise ConfigError(
                f"data.color_space '{space}' is not a colour space OpenCV converts RGB to (e.g. RGB, YCrCb, HSV, LAB)."
            )
        self.color_space = "RGB" if space.upper() == "RGB" else space
        self.predict_dir = None if not predict_dir else Path(os.path.expanduser(str(predict_dir)))
        self.metrics = list(metrics) if metrics is not None else ["dice", "iou"]
        self.check_samples = int(check_samples)
        if eval_unreadable not in EVAL_UNREADABLE:
            raise ConfigError(
                f"data.eval_unreadable must be one of {', '.join(EVAL_UNREADABLE)}, got {eval_unreadable!r}."
            )
        self.eval_unreadable = eval_unreadable
        #: files left out of each evaluation split (``eval_unreadable: exclude``), by split
        self.excluded: dict[str, list[str]] = {}
        self._eval_samples_cache: dict[str, list[SegSample]] = {}
        #: one line per split saying where its samples come from (set by ``_discover`` via :mod:`.splits`)
        self._sources: dict[str, str] = {}
        self.shuffle_seed = 0
        self._model_data_config: dict[str, Any] = {}
        self._splits: dict[str, list[SegSample]] | None = None
        self.train_dataset: SegmentationDataset | None = None
        self.val_dataset: SegmentationDataset | None = None
        self.test_dataset: SegmentationDataset | None = None
        self.predict_dataset: SegmentationDataset | None = None

    @staticmethod
    def _parse_normalize(value: Any) -> str | dict | None:
        if value is None or value in ("mean_std", "minmax", "none"):
            return value
        if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
            return {
                "mean": tuple(float(v) for v in value["mean"]),
                "std": tuple(float(v) for v in value["std"]),
            }
        raise ConfigError(
            f"data.normalize must be null (the model's mean/std), minmax, none, mean_std or {{mean: [...], std: [...]}}, got {value!r}."
        )

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ data config
    def set_data_config(self, data_config: Mapping[str, Any]) -> None:
        """Take the model's ``timm.data.resolve_model_data_config`` (its mean/std; its input size only
        when ``image_size`` is null)."""
        self._model_data_config = dict(to_plain(dict(data_config)))
        self._rebuild_datasets()

    @property
    def data_config(self) -> dict[str, Any]:
        cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (self.in_chans, 256, 256)}
        cfg.update({k: v for k, v in self._model_data_config.items() if v is not None})
        size = cfg["input_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        h, w = self.image_size or (int(size[0]), int(size[1]))
        cfg["input_size"] = (self.in_chans, h, w)
        cfg["mean"] = tuple(float(m) for m in cfg["mean"])
        cfg["std"] = tuple(float(s) for s in cfg["std"])
        return cfg

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.data_config["input_size"]

    def build_normalizer(self) -> Normalizer:
        mode = self.normalize or self.default_normalize
        if isinstance(mode, dict):
            return Normalizer("mean_std", mode["mean"], mode["std"])
        cfg = self.data_config
        return Normalizer(mode, cfg["mean"], cfg["std"])

    # ------------------------------------------------------------------ layout
    def _layout(self) -> str:
        raise NotImplementedError

    def _discover(self, root: Path) -> dict[str, list[SegSample]]:
        raise NotImplementedError

    def _reader(self, split: str) -> SampleReader:
        return SampleReader()

    def _check_root(self) -> Path:
        if self.root is None:
            raise DatasetError(
                f"data.root is not set: point it at {self.dataset_name} laid out as {self._layout()}."
            )
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a folder"
            raise DatasetError(
                f"data.root '{self.root}' {what}: expected {self.dataset_name} laid out as {self._layout()}."
            )
        return self.root

    def check(self) -> None:
        """Validate the layout and the first samples of each split; raise DatasetError in one sentence."""
        if self._splits is not None:
            return
        root = self._check_root()
        splits = self._discover(root)
        for split, samples in splits.items():
            if not samples:
                raise DatasetError(
                    f"the {split} split of '{root}' holds no labelled image: expected {self._layout()}."
                )
            reader = self._reader(split)
            for sample in samples[: self.check_samples]:
                try:
                    reader.check_sizes(sample)
                except DatasetError:
                    raise
                except _DECODE_ERRORS:
                    pass  # an unreadable file is skipped with a warning when it is loaded
        self._splits = splits

    @property
    def splits(self) -> dict[str, list[SegSample]]:
        self.check()
        return self._splits

    def _predict_samples(self) -> list[SegSample]:
        if self.predict_dir is None:
            return self.splits["test"]
        folder = self.predict_dir
        if not folder.is_dir():
            raise DatasetError(
                f"data.predict_dir '{folder}' is not a folder: expected a folder of images to predict."
            )
        files = list_files(folder)
        if not files:
            raise DatasetError(
                f"data.predict_dir '{folder}' holds no image: expected files ending in {', '.join(SEG_EXTENSIONS)}."
            )
        return [SegSample(stem(p), str(p)) for p in files]

    # ------------------------------------------------------------------ evaluation samples, provenance
    def _probe(self, split: str, samples: list[SegSample]) -> list[Unreadable]:
        """The samples of ``split`` that cannot be decoded (MSD: its volumes that could not be read)."""
        return find_unreadable(samples, self._reader(split), self.num_workers)

    def eval_samples(self, split: str) -> list[SegSample]:
        """The samples ``split`` (val or test) is scored on: every one decodes, none counts twice.

        Unreadable files fail here in one sentence (``eval_unreadable: error``) or are left out with a warning
        and counted in ``excluded[split]`` (``exclude``)."""
        if split not in self._eval_samples_cache:
            samples = self.splits[split]
            bad = self._probe(split, samples)
            files = sorted({path: reason for _, path, reason in bad}.items())
            if bad and self.eval_unreadable == "error":
                listed = ", ".join(f"'{p}' ({r})" for p, r in files[:10])
                more = f" and {len(files) - 10} more" if len(files) > 10 else ""
                raise DatasetError(
                    f"{len(files)} file(s) of the {split} split cannot be decoded: {listed}{more}; evaluation "
                    "never replaces a sample, so fix or remove them, or set data.eval_unreadable=exclude to "
                    "leave them out and report the count."
                )
            if bad:
                warnings.warn(
                    f"leaving {len(files)} unreadable file(s) out of the {split} split "
                    f"(data.eval_unreadable=exclude): {', '.join(p for p, _ in files)}",
                    UnreadableImageWarning,
                    stacklevel=2,
                )
            self.excluded[split] = [p for p, _ in files]
            dropped = {s.name for s, _, _ in bad}
            self._eval_samples_cache[split] = [s for s in samples if s.name not in dropped]
        return self._eval_samples_cache[split]

    def split_info(self) -> dict[str, dict[str, Any]]:
        """``{split: {"size", "sha256", "source", "excluded"}}`` for run provenance: the number of samples
        scored (val/test: after ``eval_unreadable``), the sha256 of their names and root-relative files, where
        they come from (the protocol, in words) and how many unreadable files were left out (val/test only;
        training skips them with a warning as it meets them)."""
        out: dict[str, dict[str, Any]] = {}
        for split in ("train", "val", "test"):
            samples = self.splits[split] if split == "train" else self.eval_samples(split)
            info: dict[str, Any] = {
                "size": len(samples),
                "sha256": split_fingerprint(samples, self.root),
                "source": self._sources.get(split, f"the {split} split of {self.dataset_name}"),
            }
            if split != "train":
                info["excluded"] = len(self.excluded.get(split, ()))
            out[split] = info
        return out

    # ------------------------------------------------------------------ datasets
    def _make_dataset(self, split: str) -> SegmentationDataset:
        size = tuple(self.input_size[1:])
        if split == "train":
            transform, mode, samples = (
                train_pipeline(size, self.train_ops, self.resize),
                "train",
                self.splits["train"],
            )
        elif split == "predict":
            transform, mode, samples = (
                eval_pipeline(size, self.eval_resize),
                "predict",
                self._predict_samples(),
            )
        else:
            transform, mode, samples = eval_pipeline(size, self.eval_resize), "eval", self.eval_samples(split)
        return SegmentationDataset(
            samples, self._reader(split), transform, self.build_normalizer(), size, mode, self.color_space
        )

    def setup(self, stage: str | None = None) -> None:
        self.check()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._make_dataset("train")
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._make_dataset("val")
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = self._make_dataset("test")
        if stage in (None, "predict") and self.predict_dataset is None:
            self.predict_dataset = self._make_dataset("predict")

    def _rebuild_datasets(self) -> None:
        """A new data config: rebuild the pipelines and normalisation of the datasets already built."""
        size = tuple(self.input_size[1:])
        for ds in {
            id(d): d
            for d in (self.train_dataset, self.val_dataset, self.test_dataset, self.predict_dataset)
            if d
        }.values():
            ds.normalizer = self.build_normalizer()
            ds.size = size
            ds.transform = (
                train_pipeline(size, self.train_ops, self.resize)
                if ds.mode == "train"
                else eval_pipeline(size, self.eval_resize)
            )
            ds._seeded_for = None

    # ------------------------------------------------------------------ loaders
    def _eval_batch_size(self) -> int:
        return self.val_batch_size

    def _eval_collate(self):
        return collate_eval

    def test_dataloader(self) -> DataLoader:
        """The test split of the dataset's protocol (:mod:`.splits`): never the validation split."""
        return self._loader(self._dataset("test_dataset", "test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """``data.predict_dir`` when set, else the test split (masks are not read)."""
        return self._loader(self._dataset("predict_dataset", "predict"), train=False)


class KFoldMixin:
    """Datasets without an official split (:func:`.splits.kfold_split`): test = fold ``fold`` of ``num_folds``
    (``split_seed: null``: QTSeg's contiguous folds of the sorted names), val = a seeded ``val_size`` hold-out of
    the other folds, train = the rest."""

    _sources: dict[str, str]

    def _init_folds(
        self, fold: int, num_folds: int, split_seed: int | None, val_size: float | int, val_seed: int
    ) -> None:
        self.fold, self.num_folds = check_fold(fold, num_folds)
        if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, int)):
            raise ConfigError(f"data.split_seed must be an integer or null, got {split_seed!r}.")
        self.split_seed = split_seed
        self.holdout = ValHoldout.parse(val_size, val_seed)

    def _folds(self, samples: list[SegSample], where: str, groups=None) -> dict[str, list[SegSample]]:
        if groups is None:
            samples = sorted(samples, key=lambda s: s.name)
        splits, self._sources = kfold_split(
            samples, self.fold, self.num_folds, self.split_seed, self.holdout, where, groups
        )
        return splits


class OfficialSplitMixin:
    """Datasets with an official labelled test set (:func:`.splits.official_split`): val = a seeded
    ``val_size`` hold-out of the official training set, test = the official test set."""

    _sources: dict[str, str]

    def _init_holdout(self, val_size: float | int, val_seed: int) -> None:
        self.holdout = ValHoldout.parse(val_size, val_seed)

    def _train_val_test(
        self,
        train: list[SegSample],
        test: list[SegSample],
        where: str,
        groups: Sequence[Any] | None = None,
        names: tuple[str, str] = ("the official training set", "the official test set"),
    ) -> dict[str, list[SegSample]]:
        splits, self._sources = official_split(train, test, self.holdout, where, groups, names)
        return splits
