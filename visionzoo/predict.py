"""Segment a folder of images with a trained checkpoint: ``python predict.py ckpt_path=RUN.ckpt images=DIR out=DIR``.

Arguments are ``key=value`` (or ``--key value``):

* ``ckpt_path``: a ``.ckpt`` written by a segmentation run (``checkpoints/epoch_XXX.ckpt`` or ``last.ckpt``);
  the model is rebuilt from the spec stored in it, so no config is needed;
* ``images``: a folder of images (or one image file);
* ``out``: where to write ``masks/<name>.png`` (class indices, 8-bit, or 16-bit beyond 256 classes) and
  ``overlays/<name>.png`` (the image with the coloured prediction blended in);
* optional: ``device`` (``auto``, ``cpu``, ``cuda``), ``mode`` (``whole`` | ``slide``), ``roi_size`` (``H,W``),
  ``overlap``, ``blend`` (``gaussian`` | ``constant``), ``size`` (network input ``H,W``; default the training
  size stored in the checkpoint), ``alpha`` (overlay opacity).

Every image is preprocessed as validation images were (stretched to the network size, normalised with the
stored mean/std or min-max mode), segmented with the stored (or overridden) inference mode, and the logits are
resized back to the image's own size before the argmax. Class indices are those of the model (ADE20K: 0..149
for the 150 classes after reduce-zero-label).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, ConfigError, VisionZooError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_KEYS = {"ckpt_path", "images", "out", "device", "mode", "roi_size", "overlap", "blend", "size", "alpha"}
USAGE = "usage: python predict.py ckpt_path=RUN.ckpt images=DIR out=DIR [device=cpu] [mode=slide roi_size=512,512]"


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` and ``--key value`` / ``--key=value`` pairs into a dict; unknown keys are a ConfigError."""
    args: dict[str, str] = {}
    i = 0
    while i < len(argv):
        item = argv[i]
        if item in ("-h", "--help"):
            raise SystemExit(__doc__)
        if item.startswith("--"):
            item = item[2:]
            if "=" not in item:
                if i + 1 >= len(argv):
                    raise ConfigError(f"argument --{item} needs a value; {USAGE}")
                item = f"{item}={argv[i + 1]}"
                i += 1
        if "=" not in item:
            raise ConfigError(f"argument '{item}' is not key=value; {USAGE}")
        key, value = item.split("=", 1)
        key = key.replace("-", "_")
        if key not in _KEYS:
            raise ConfigError(f"unknown argument '{key}'; expected some of {', '.join(sorted(_KEYS))}.")
        args[key] = value
        i += 1
    for key in ("ckpt_path", "images", "out"):
        if not args.get(key):
            raise ConfigError(f"{key}= is required; {USAGE}")
    return args


def _pair(value: str, name: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(f"{name} must be H,W (or one size), got '{value}'.")
    return parts[0], parts[1]


def load_task(ckpt_path: str | Path, device: str | torch.device = "cpu"):
    """The :class:`~visionzoo.tasks.SegmentationTask` of a checkpoint, in eval mode on ``device``."""
    from .tasks import SegmentationTask

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path '{path}' does not exist; give a .ckpt file written by a segmentation run."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({type(err).__name__}).") from None
    hparams = ckpt.get("hyper_parameters") or {}
    if "model_spec" not in hparams:
        raise CheckpointError(
            f"'{path}' was not written by a segmentation run (it stores no model_spec); predict.py needs one."
        )
    task = SegmentationTask(**hparams)
    state = ckpt.get("state_dict") or {}
    missing, unexpected = task.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("val_", "test_", "train_"))]
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit the model it describes: {len(missing)} missing and {len(unexpected)} unexpected "
            f"weights (e.g. {(missing or unexpected)[0]})."
        )
    return task.eval().to(device)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is available; use device=cpu.")
    return torch.device(name)


def preprocess(rgb: np.ndarray, data_config: dict[str, Any], size: tuple[int, int] | None) -> torch.Tensor:
    """``H×W×3`` uint8 RGB -> normalised ``1×3×h×w`` at the network size, as validation images are prepared."""
    import cv2

    space = str(data_config.get("color_space", "RGB"))
    image = rgb
    if space.upper() != "RGB":
        wanted = f"COLOR_RGB2{space}".upper()
        code = next((getattr(cv2, n) for n in dir(cv2) if n.upper() == wanted), None)
        if code is None:
            raise ConfigError(f"the checkpoint's colour space '{space}' is not one OpenCV converts RGB to.")
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    x = image.astype(np.float32)
    mode = data_config.get("normalize", "mean_std")
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(x)
    else:
        x /= 255.0
        if mode == "mean_std":
            x = (x - np.asarray(data_config.get("mean", (0.485, 0.456, 0.406)), np.float32)) / np.asarray(
                data_config.get("std", (0.229, 0.224, 0.225)), np.float32
            )
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).unsqueeze(0)


def _image_files(images: Path) -> list[Path]:
    if images.is_file():
        return [images]
    if not images.is_dir():
        raise ConfigError(f"images '{images}' does not exist; give a folder of images or one image file.")
    files = sorted(
        p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(
            f"folder '{images}' holds no image (expected files ending in {', '.join(IMAGE_EXTENSIONS)})."
        )
    return files


def save_mask(mask: np.ndarray, path: Path, num_classes: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if num_classes <= 256:
        Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(mask.astype(np.uint16)).save(path)


@torch.no_grad()
def predict_folder(
    ckpt_path: str | Path,
    images: str | Path,
    out: str | Path,
    device: str = "auto",
    inference: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    alpha: float = 0.5,
) -> list[Path]:
    """Segment every image; write ``out/masks/<stem>.png`` and ``out/overlays/<stem>.png``; return the mask paths."""
    from PIL import Image

    from .inference import build_inferer
    from .overlays import overlay

    dev = _resolve_device(device)
    task = load_task(ckpt_path, dev)
    if inference:
        task.inferer = build_inferer({**task.inferer.to_dict(), **inference})
    data_config = dict(task.hparams.get("data_config") or {})
    if size is None and data_config.get("input_size"):
        size = tuple(int(s) for s in data_config["input_size"][-2:])
    out = Path(out)
    written = []
    for path in _image_files(Path(images)):
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as err:
            print(f"warning: skipping unreadable image '{path}' ({err})", file=sys.stderr)
            continue
        x = preprocess(rgb, data_config, size).to(dev)
        batch = {"image": x, "name": [path.stem], "orig_size": [rgb.shape[:2]]}
        mask = task.predict_step(batch, 0)[0]["mask"].numpy()
        mask_path = out / "masks" / f"{path.stem}.png"
        save_mask(mask, mask_path, task.num_classes)
        blended = overlay(
            rgb, mask, task.num_classes, alpha, transparent_background=task.has_background or None
        )
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        Image.fromarray(blended).save(out / "overlays" / f"{path.stem}.png")
        written.append(mask_path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        inference: dict[str, Any] = {}
        if "mode" in args:
            inference["mode"] = args["mode"]
        if "roi_size" in args:
            inference["roi_size"] = list(_pair(args["roi_size"], "roi_size"))
        if "overlap" in args:
            inference["overlap"] = float(args["overlap"])
        if "blend" in args:
            inference["blend"] = args["blend"]
        written = predict_folder(
            args["ckpt_path"],
            args["images"],
            args["out"],
            device=args.get("device", "auto"),
            inference=inference or None,
            size=_pair(args["size"], "size") if "size" in args else None,
            alpha=float(args.get("alpha", 0.5)),
        )
    except VisionZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(written)} mask(s) to {Path(args['out']) / 'masks'} and overlays to {Path(args['out']) / 'overlays'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
