"""Medical Segmentation Decathlon (one task folder, e.g. ``Task09_Spleen``): 2-D training on axial slices.

Layout of a task archive (``data.root`` = the task folder)::

    dataset.json          modality {"0": "CT"} (or MRI names), labels {"0": "background", ...},
                          training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]
    imagesTr/*.nii.gz     3-D (X×Y×Z) or 4-D (X×Y×Z×modality) volumes
    labelsTr/*.nii.gz     X×Y×Z label volumes
    imagesTs/*.nii.gz     unlabelled (use ``data.predict_dir=ROOT/imagesTs``)

The volumes listed under ``training`` are used (the archives' macOS ``._*`` side files are ignored).
NIfTI is read with nibabel; every volume is reoriented to the closest canonical (RAS+) orientation and
its axial slices (third axis) become 2-D samples of X×Y pixels. Reading a slice out of a gzipped volume is
slow, so ``prepare_data`` writes each volume once as uncompressed ``.npy`` arrays (slice-major, read with
memory mapping) plus a small JSON of statistics into ``cache_dir`` (default
``$VISIONZOO_CACHE or ~/.cache/visionzoo``/``msd/<task>-<hash of root>``); a cache entry is rebuilt when
its source file's size or time changes.

Intensities follow ``dataset.json``'s modality: CT is clipped to ``ct_window`` (HU, default [-175, 250],
an abdominal soft-tissue window: set it per task, e.g. [-1000, 400] for lung) and scaled to [0, 1], then
normalised with the model's mean/std; MRI channels are z-scored per volume over the non-zero voxels and
used as they are (``normalize: none`` unless the config says otherwise). A single channel is repeated to 3
(``in_chans`` 3); multi-modal MRI keeps its modalities as channels (``in_chans`` = their number).

Protocol (Antonelli et al. 2022, Nat. Commun. 13:4128: the test volumes' labels are withheld; papers
cross-validate over the training volumes, e.g. nnU-Net's 5 folds, Isensee et al. 2021, Nat. Methods 18:203):
5-fold over the volume ids (sorted, permuted with ``split_seed: 0``); test = the volumes of fold ``fold``, val =
a seeded 10% hold-out of the other folds' volumes (``val_size: 0.1``, at least one volume, ``val_seed: 0``),
train = the rest -- e.g. Task09_Spleen's 41 volumes: test 9, val 3, train 29. All slices of a volume stay in
one split. A volume nibabel cannot read is skipped with a warning in training and handled by
``eval_unreadable`` in val/test (its file is what ``excluded`` counts); ``split_info()`` counts slices
(``size``) and ``volumes``. Training uses every slice
(``train_slices: foreground`` keeps only slices with a label). Validation/test batches carry
``volume_id`` and ``slice_index`` (slices of a volume are consecutive) so the task can score whole
volumes; ``volume_spacing[volume_id]`` holds the voxel size (mm, canonical X, Y, Z).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DatasetError
from ..folder import UnreadableImageWarning
from ._base import KFoldMixin, SampleReader, SegmentationDataModule, SegSample, Unreadable
from .transforms import Normalizer

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def _nibabel():
    try:
        import nibabel
    except ImportError as err:
        raise DatasetError(
            "reading Medical Segmentation Decathlon volumes needs nibabel, which is not importable: pip install nibabel."
        ) from err
    return nibabel


def volume_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged NIfTI file raises (truncated or corrupt gzip, a bad header)."""
    from nibabel.filebasedimages import ImageFileError

    return (OSError, EOFError, ValueError, zlib.error, ImageFileError)


def volume_id(path: str | Path) -> str:
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _source_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def cache_volume(
    image: Path, label: Path | None, cache: Path, num_classes: int | None = None
) -> dict[str, Any]:
    """Write ``<id>.image.npy`` (Z×C×X×Y), ``<id>.label.npy`` (Z×X×Y uint8) and ``<id>.json``; return the meta."""
    vid = volume_id(image)
    meta_path = cache / f"{vid}.json"
    key = {"image": _source_key(image), "label": _source_key(label) if label else None}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("source") == key and (cache / f"{vid}.image.npy").is_file():
            return meta
    nib = _nibabel()
    img = nib.as_closest_canonical(nib.load(str(image)))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DatasetError(f"volume '{image}' has {data.ndim} dimensions: expected X×Y×Z or X×Y×Z×modality.")
    if np.issubdtype(data.dtype, np.integer) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    vol = np.ascontiguousarray(data.transpose(2, 3, 0, 1))  # Z, C, X, Y
    nonzero = [vol[:, c][vol[:, c] != 0] for c in range(vol.shape[1])]
    meta = {
        "source": key,
        "shape": list(vol.shape),
        "spacing": [float(z) for z in img.header.get_zooms()[:3]],
        "mean": [float(v.mean()) if v.size else 0.0 for v in nonzero],
        "std": [float(v.std()) if v.size else 1.0 for v in nonzero],
        "foreground": [],
    }
    cache.mkdir(parents=True, exist_ok=True)
    if label is not None:
        lab_img = nib.as_closest_canonical(nib.load(str(label)))
        lab = np.asanyarray(lab_img.dataobj)
        if lab.shape[:3] != data.shape[:3]:
            raise DatasetError(
                f"label volume '{label}' is {'×'.join(map(str, lab.shape))} voxels but its image '{image}' is "
                f"{'×'.join(map(str, data.shape[:3]))}: every label must have its image's size."
            )
        lab = np.rint(lab).astype(np.int64)
        if num_classes is not None and (lab.min() < 0 or lab.max() >= num_classes):
            raise DatasetError(
                f"label volume '{label}' holds label {int(lab.max())}, outside the {num_classes} labels of dataset.json."
            )
        lab = np.ascontiguousarray(lab.transpose(2, 0, 1).astype(np.uint8))
        meta["foreground"] = [int(z) for z in np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))]
        _save_npy(cache / f"{vid}.label.npy", lab)
    _save_npy(cache / f"{vid}.image.npy", vol)
    tmp = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return meta


def _which_fails(image: Path, label: Path | None) -> Path:
    """The file of a volume pair that nibabel cannot read (the image when both or neither fail)."""
    if label is None:
        return image
    try:
        np.asanyarray(_nibabel().load(str(image)).dataobj)
    except volume_errors():
        return image
    return label


class MSDReader(SampleReader):
    """Slices out of the ``.npy`` cache, intensity-normalised per modality (see the module docstring)."""

    def __init__(self, cache: str, is_ct: list[bool], ct_window: tuple[float, float]) -> None:
        super().__init__()
        self.cache = cache
        self.is_ct = list(is_ct)
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self._open: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # memory maps are reopened in each worker

    def _get(self, vid: str, what: str):
        key = f"{vid}.{what}"
        if key not in self._open:
            path = os.path.join(self.cache, f"{vid}.json" if what == "meta" else f"{key}.npy")
            if what == "meta":
                with open(path) as f:
                    self._open[key] = json.load(f)
            else:
                self._open[key] = np.load(path, mmap_mode="r")
        return self._open[key]

    def load(self, sample: SegSample, with_mask: bool = True):
        vid, z = sample.volume_id, sample.slice_index
        meta = self._get(vid, "meta")
        raw = np.asarray(self._get(vid, "image")[z], dtype=np.float32)  # C, X, Y
        chans = []
        for c in range(raw.shape[0]):
            x = raw[c]
            if self.is_ct[min(c, len(self.is_ct) - 1)]:
                lo, hi = self.ct_window
                x = (np.clip(x, lo, hi) - lo) / (hi - lo)
            else:
                x = (x - meta["mean"][c]) / max(meta["std"][c], 1e-8)
            chans.append(x)
        if len(chans) == 1:
            chans = chans * 3
        image = np.ascontiguousarray(np.stack(chans, -1), dtype=np.float32)
        mask = np.array(self._get(vid, "label")[z]) if with_mask else None
        return image, mask

    def check_sizes(self, sample: SegSample) -> None:
        pass  # checked when the volume is cached


class MSDDataModule(KFoldMixin, SegmentationDataModule):
    dataset_name = "a Medical Segmentation Decathlon task folder"

    def __init__(
        self,
        root=None,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int | None = 0,
        val_size: float | int = 0.1,
        val_seed: int = 0,
        ct_window=(-175.0, 250.0),
        train_slices: str = "all",
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self._init_folds(fold, num_folds, split_seed, val_size, val_seed)
        window = tuple(float(v) for v in ct_window)
        if len(window) != 2 or window[0] >= window[1]:
            raise ConfigError(
                f"data.ct_window must be [low, high] in HU with low < high, got {list(ct_window)}."
            )
        self.ct_window = window
        if train_slices not in ("all", "foreground"):
            raise ConfigError(f"data.train_slices must be all or foreground, got {train_slices!r}.")
        self.train_slices = train_slices
        self.cache_dir = None if not cache_dir else Path(os.path.expanduser(str(cache_dir)))
        self._info: dict[str, Any] | None = None
        self._volumes: list[tuple[str, Path, Path]] = []
        self.volume_spacing: dict[str, tuple[float, float, float]] = {}
        #: volumes nibabel could not read: id -> (file, reason)
        self.unreadable_volumes: dict[str, tuple[str, str]] = {}
        self._unreadable_in: dict[str, list[Unreadable]] = {}

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        self.check()
        labels = self._info["labels"]
        return [str(labels[k]) for k in sorted(labels, key=int)]

    @property
    def modalities(self) -> list[str]:
        self.check()
        mods = self._info["modality"]
        return [str(mods[k]) for k in sorted(mods, key=int)]

    @property
    def in_chans(self) -> int:  # noqa: D401 - property on purpose (it depends on dataset.json)
        if self._info is None:
            return 3
        return len(self.modalities) if len(self.modalities) > 1 else 3

    @property
    def is_ct(self) -> list[bool]:
        return [m.strip().upper() == "CT" for m in self.modalities]

    def build_normalizer(self) -> Normalizer:
        if self.normalize is None and not all(self.is_ct):
            return Normalizer("none")
        return super().build_normalizer()

    def _layout(self) -> str:
        return "ROOT/dataset.json with ROOT/imagesTr/*.nii.gz and ROOT/labelsTr/*.nii.gz (ROOT = a TaskXX_Name folder)"

    # ------------------------------------------------------------------ checks and cache
    def check(self) -> None:
        if self._info is not None:
            return
        root = self._check_root()
        spec = root / "dataset.json"
        if not spec.is_file():
            raise DatasetError(f"file '{spec}' is missing: expected {self._layout()}.")
        try:
            info = json.loads(spec.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(
                f"file '{spec}' is not readable JSON ({err}): expected the task's dataset.json."
            ) from err
        for key in ("labels", "modality", "training"):
            if not info.get(key):
                raise DatasetError(
                    f"file '{spec}' has no '{key}' entry: expected a Medical Segmentation Decathlon dataset.json."
                )
        volumes = []
        for entry in info["training"]:
            image, label = root / entry["image"], root / entry["label"]
            for path in (image, label):
                if not path.is_file():
                    raise DatasetError(
                        f"file '{path}' listed in '{spec}' is missing: expected {self._layout()}."
                    )
            volumes.append((volume_id(image), image, label))
        if self.check_samples > 0:
            nib = _nibabel()
            for _vid, image, label in volumes[: self.check_samples]:
                try:
                    ishape, lshape = nib.load(str(image)).shape[:3], nib.load(str(label)).shape[:3]
                except volume_errors():
                    continue  # an unreadable volume is reported when it is cached
                if ishape != lshape:
                    raise DatasetError(
                        f"label volume '{label}' is {'×'.join(map(str, lshape))} voxels but its image '{image}' is "
                        f"{'×'.join(map(str, ishape))}: every label must have its image's size."
                    )
        self._volumes = sorted(volumes)
        self._info = info

    def _cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = Path(os.environ.get("VISIONZOO_CACHE") or Path.home() / ".cache" / "visionzoo")
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
        return base / "msd" / f"{self.root.resolve().name}-{digest}"

    def prepare_data(self) -> None:
        """Cache every training volume as ``.npy`` (rank 0; fast when the cache is up to date)."""
        self.check()
        cache = self._cache_root()
        errors = volume_errors()
        for vid, image, label in self._volumes:
            try:
                meta = cache_volume(image, label, cache, self.num_classes)
            except DatasetError:
                raise
            except errors as err:
                bad = getattr(err, "filename", None) or _which_fails(image, label)
                self.unreadable_volumes[vid] = (
                    str(bad),
                    str(err).splitlines()[0] if str(err) else type(err).__name__,
                )
                continue
            self.volume_spacing[vid] = tuple(meta["spacing"])

    def _slices(self, vids: list[str], cache: Path, foreground_only: bool = False) -> list[SegSample]:
        samples = []
        for vid in vids:
            meta = json.loads((cache / f"{vid}.json").read_text())
            self.volume_spacing[vid] = tuple(meta["spacing"])
            zs = meta["foreground"] if foreground_only else range(meta["shape"][0])
            samples += [SegSample(f"{vid}_{z:04d}", vid, volume_id=vid, slice_index=int(z)) for z in zs]
        return samples

    @property
    def splits(self) -> dict[str, list[SegSample]]:
        if self._splits is None:
            self.prepare_data()
            ids = [
                SegSample(vid, vid) for vid, _, _ in self._volumes
            ]  # every listed volume: folds never shift
            by_split = self._folds(ids, str(self.root))
            cache = self._cache_root()
            out = {}
            for split, vols in by_split.items():
                bad = [v for v in vols if v.name in self.unreadable_volumes]
                if bad and split == "train":
                    for v in bad:
                        path, reason = self.unreadable_volumes[v.name]
                        warnings.warn(
                            f"skipping unreadable training volume '{path}' ({reason})",
                            UnreadableImageWarning,
                            stacklevel=2,
                        )
                self._unreadable_in[split] = [(v, *self.unreadable_volumes[v.name]) for v in bad]
                good = [v.name for v in vols if v.name not in self.unreadable_volumes]
                fg = split == "train" and self.train_slices == "foreground"
                out[split] = self._slices(good, cache, fg)
            self._splits = out
        return self._splits

    def split_info(self) -> dict[str, dict[str, Any]]:
        """The base's per-split record (``size`` counts slices) plus ``volumes``, the volumes it holds."""
        info = super().split_info()
        for split, entry in info.items():
            samples = self.splits[split] if split == "train" else self.eval_samples(split)
            entry["volumes"] = len({s.volume_id for s in samples})
        return info

    def _probe(self, split: str, samples: list[SegSample]) -> list[Unreadable]:
        return self._unreadable_in.get(split, [])  # slices come from the cache, written from readable volumes

    def _reader(self, split: str) -> SampleReader:
        cache = self._cache_root() / ("predict" if split == "predict" and self.predict_dir else "")
        return MSDReader(str(cache), self.is_ct, self.ct_window)

    def _predict_samples(self) -> list[SegSample]:
        if self.predict_dir is None:
            return self.splits["test"]
        folder = self.predict_dir
        files = sorted(
            p
            for p in folder.glob("*.nii*")
            if p.name.endswith(NIFTI_EXTENSIONS) and not p.name.startswith(".")
        )
        if not files:
            raise DatasetError(
                f"data.predict_dir '{folder}' holds no .nii.gz volume: expected a folder such as ROOT/imagesTs."
            )
        cache = self._cache_root() / "predict"
        for path in files:
            cache_volume(path, None, cache)
        return self._slices([volume_id(p) for p in files], cache)
