"""Tiny segmentation datasets written in each public archive's own layout (for DataModule and train.py tests).

Every ``write_<dataset>(root, ...)`` creates a few small images (``size`` = (h, w), 56×64 by default, so
the original resolution differs from a square network size) whose foreground is a bright disc or
ellipse at the masked pixels (learnable), and returns the folder to pass as ``data.root``. All content
is deterministic (``seed``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = (56, 64)  # (h, w)


def _scene(
    rng: np.random.Generator, size: tuple[int, int], n_blobs: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(image h×w×3 uint8, mask h×w uint8 {0, 1})``: noisy background, bright ellipses where mask is 1."""
    h, w = size
    image = rng.integers(20, 90, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n_blobs):
        centre = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
        axes = (int(rng.integers(4, w // 4)), int(rng.integers(4, h // 4)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    image[mask > 0] = np.clip(image[mask > 0].astype(int) + 140, 0, 255).astype(np.uint8)
    return image, mask


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _mask255(mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.uint8) * 255


# ------------------------------------------------------------------------------------------- natural
def write_ade20k(root: Path, n_train: int = 4, n_val: int = 2, size=SIZE, seed: int = 0) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``; labels 0 (unlabelled), 1..150."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "ADEChallengeData2016"
    for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for i in range(1, n + 1):
            image, mask = _scene(rng, size, 2)
            labels = np.where(mask > 0, rng.integers(1, 151), 0).astype(np.uint8)
            labels[:4, :4] = 150  # the last class, next to a corner of unlabelled 0
            labels[-4:, -4:] = 1
            _save(base / "images" / split / f"{prefix}_{i:08d}.jpg", image, quality=95)
            _save(base / "annotations" / split / f"{prefix}_{i:08d}.png", labels)
    return base


def write_seg_folder(
    root: Path,
    n: int = 6,
    classes: int = 3,
    splits: bool = False,
    size=SIZE,
    seed: int = 0,
    mask_suffix: str = "",
) -> Path:
    """``ROOT/images/<name>.png`` + ``ROOT/masks/<name><suffix>.png`` (palette index masks), or the same
    inside ``train/`` and ``val/`` when ``splits``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "seg_folder"
    groups = (("train", n), ("val", max(2, n // 2))) if splits else (("", n),)
    for split, count in groups:
        for i in range(count):
            image, mask = _scene(rng, size, 2)
            labels = (mask * int(rng.integers(1, classes))).astype(np.uint8)
            _save(base / "images" / split / f"img_{i:03d}.png", image)
            pal = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
            pal.putpalette([v for c in range(256) for v in ((c * 80) % 256, (c * 150) % 256, (c * 40) % 256)])
            (base / "masks" / split).mkdir(parents=True, exist_ok=True)
            pal.save(base / "masks" / split / f"img_{i:03d}{mask_suffix}.png")
    return base


# ------------------------------------------------------------------------------------------- medical 2-D
def write_isic2016(root: Path, n_train: int = 6, n_test: int = 3, size=SIZE, seed: int = 0) -> Path:
    """``ISBI2016_ISIC_Part1_{Training,Test}_{Data,GroundTruth}`` with ``ISIC_<7 digits>.jpg`` and
    ``ISIC_<7 digits>_Segmentation.png``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    k = 0
    for split, n in (("Training", n_train), ("Test", n_test)):
        for _ in range(n):
            image, mask = _scene(rng, size)
            _save(root / f"ISBI2016_ISIC_Part1_{split}_Data" / f"ISIC_{k:07d}.jpg", image, quality=95)
            _save(
                root / f"ISBI2016_ISIC_Part1_{split}_GroundTruth" / f"ISIC_{k:07d}_Segmentation.png",
                _mask255(mask),
            )
            k += 1
    return root


def write_kvasir_seg(root: Path, n: int = 10, size=SIZE, seed: int = 0) -> Path:
    """``Kvasir-SEG/images/<id>.jpg`` and ``Kvasir-SEG/masks/<id>.jpg`` (JPEG masks)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "Kvasir-SEG"
    for i in range(n):
        image, mask = _scene(rng, size)
        name = f"cju{i:04d}polyp"
        _save(base / "images" / f"{name}.jpg", image, quality=95)
        _save(base / "masks" / f"{name}.jpg", np.stack([_mask255(mask)] * 3, -1), quality=90)
    return Path(root)


def write_bkai_polyp(root: Path, n: int = 10, size=SIZE, seed: int = 0) -> Path:
    """``train/train/<id>.jpeg`` and ``train_gt/train_gt/<id>.jpeg``: red (neoplastic) and green
    (non-neoplastic) regions on black, saved as JPEG like the originals."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(n):
        image, mask = _scene(rng, size, 2)
        gt = np.zeros((*size, 3), np.uint8)
        half = size[1] // 2
        left, right = mask.copy(), mask.copy()
        left[:, half:] = 0
        right[:, :half] = 0
        gt[left > 0] = (255, 0, 0)  # red: neoplastic
        gt[right > 0] = (0, 255, 0)  # green: non-neoplastic
        name = f"{i:032x}"
        _save(root / "train" / "train" / f"{name}.jpeg", image, quality=95)
        _save(root / "train_gt" / "train_gt" / f"{name}.jpeg", gt, quality=95)
    return root


def write_busi(
    root: Path, n_benign: int = 6, n_malignant: int = 5, n_normal: int = 2, size=SIZE, seed: int = 0
) -> Path:
    """``Dataset_BUSI_with_GT/<class>/<class> (k).png`` + ``_mask.png``; ``benign (2)`` also has
    ``_mask_1.png`` (a second lesion, merged by the loader); normal masks are empty."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", n_benign), ("malignant", n_malignant), ("normal", n_normal)):
        for k in range(1, n + 1):
            image, mask = _scene(rng, size)
            if cls == "normal":
                mask[:] = 0
            name = f"{cls} ({k})"
            gray = image.mean(-1).astype(np.uint8)
            _save(base / cls / f"{name}.png", np.stack([gray] * 3, -1))
            _save(base / cls / f"{name}_mask.png", _mask255(mask))
            if cls == "benign" and k == 2:
                extra = np.zeros(size, np.uint8)
                extra[:6, :6] = 255
                _save(base / cls / f"{name}_mask_1.png", extra)
    return Path(root)


def write_dsb2018(root: Path, n: int = 10, size=SIZE, seed: int = 0) -> Path:
    """``stage1_train/<id>/images/<id>.png`` (RGBA) and ``masks/<mask id>.png``, one per nucleus."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "stage1_train"
    for i in range(n):
        sid = f"{i:02d}" + "ab" * 31
        image, _ = _scene(rng, size, 0)
        for j in range(int(rng.integers(2, 4))):
            inst = np.zeros(size, np.uint8)
            cy, cx = 8 + 14 * j, 10 + 16 * j
            cv2.circle(inst, (cx % size[1], cy % size[0]), 5, 255, -1)
            image[inst > 0] = 230
            _save(base / sid / "masks" / f"m{j:02d}{'cd' * 31}.png", inst)
        rgba = np.concatenate([image, np.full((*size, 1), 255, np.uint8)], -1)
        _save(base / sid / "images" / f"{sid}.png", rgba)
    return Path(root)


def write_fives(root: Path, n_train: int = 6, n_test: int = 3, size=SIZE, seed: int = 0) -> Path:
    """``{train,test}/Original/<k>_<A|D|G|N>.png`` and ``{train,test}/Ground truth/<same>.png``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"
    k = 1
    for split, n in (("train", n_train), ("test", n_test)):
        for _ in range(n):
            image, mask = _scene(rng, size, 3)
            name = f"{k}_{'ADGN'[k % 4]}.png"
            _save(base / split / "Original" / name, image)
            _save(base / split / "Ground truth" / name, _mask255(mask))
            k += 1
    return Path(root)


def write_drive(
    root: Path, n_train: int = 5, n_test: int = 3, size=SIZE, seed: int = 0, test_labels: bool = True
) -> Path:
    """``DRIVE/{training,test}/images/<k>_<split>.tif``, ``1st_manual/<k>_manual1.gif`` and FOV masks
    ``mask/<k>_<split>_mask.gif`` (a centred disc: the corners are outside the field of view)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "DRIVE"
    h, w = size
    fov = np.zeros(size, np.uint8)
    cv2.ellipse(fov, (w // 2, h // 2), (w // 2 - 2, h // 2 - 2), 0, 0, 360, 255, -1)
    for split, first, n in (("training", 21, n_train), ("test", 1, n_test)):
        for k in range(first, first + n):
            image, mask = _scene(rng, size, 2)
            mask[fov == 0] = 0
            _save(base / split / "images" / f"{k:02d}_{split}.tif", image)
            if split == "training" or test_labels:
                _save(base / split / "1st_manual" / f"{k:02d}_manual1.gif", _mask255(mask))
            _save(base / split / "mask" / f"{k:02d}_{split}_mask.gif", fov)
    return Path(root)


# ------------------------------------------------------------------------------------------- volumes
def write_msd(
    root: Path,
    n: int = 5,
    shape=(32, 28, 6),
    modality: str = "CT",
    task: str = "Task09_Spleen",
    seed: int = 0,
) -> Path:
    """``<task>/dataset.json``, ``imagesTr/*.nii.gz``, ``labelsTr/*.nii.gz`` (+ one ``imagesTs`` volume and a
    macOS ``._`` side file, as in the archives). ``modality='MRI2'`` writes 2-channel 4-D MRI volumes.
    Needs nibabel."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    base = Path(root) / task
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (base / d).mkdir(parents=True, exist_ok=True)
    x, y, z = shape
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    channels = 2 if modality == "MRI2" else 1
    training = []
    for i in range(n + 1):
        label = np.zeros(shape, np.uint8)
        cx, cy = int(rng.integers(8, x - 8)), int(rng.integers(8, y - 8))
        for k in range(1, z - 1):  # first and last slices stay empty
            plane = np.zeros((x, y), np.uint8)
            cv2.circle(plane, (cy, cx), 3 + k % 3, 1, -1)
            label[:, :, k] = plane
        if modality == "CT":
            vol = rng.normal(-300, 60, shape).astype(np.int16)
            vol[label > 0] = 100
        else:
            vol = rng.normal(200, 30, (*shape, channels)).astype(np.float32)
            vol[label > 0] += 300
            vol = vol[..., 0] if channels == 1 else vol
        vid = f"spleen_{i + 1}"
        if i == n:  # one unlabelled test volume
            nib.save(nib.Nifti1Image(vol, affine), str(base / "imagesTs" / f"{vid}.nii.gz"))
            continue
        nib.save(nib.Nifti1Image(vol, affine), str(base / "imagesTr" / f"{vid}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(base / "labelsTr" / f"{vid}.nii.gz"))
        training.append({"image": f"./imagesTr/{vid}.nii.gz", "label": f"./labelsTr/{vid}.nii.gz"})
    (base / "imagesTr" / "._spleen_1.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    modalities = (
        {"0": "CT"} if modality == "CT" else ({"0": "T1", "1": "T2"} if channels == 2 else {"0": "MRI"})
    )
    info = {
        "name": task.split("_", 1)[-1],
        "tensorImageSize": "3D" if channels == 1 else "4D",
        "modality": modalities,
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": n,
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/spleen_{n + 1}.nii.gz"],
    }
    (base / "dataset.json").write_text(json.dumps(info, indent=2))
    return base


WRITERS = {
    "ade20k": write_ade20k,
    "seg_folder": write_seg_folder,
    "isic2016": write_isic2016,
    "kvasir_seg": write_kvasir_seg,
    "bkai_polyp": write_bkai_polyp,
    "busi": write_busi,
    "dsb2018": write_dsb2018,
    "fives": write_fives,
    "drive": write_drive,
    "msd": write_msd,
}
