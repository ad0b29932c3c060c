"""``visionzoo`` command line: list | info | download | benchmark | export | predict.

Tables (rich) for people, ``--json`` for scripts. A user error (unknown model, missing file, bad checkpoint,
offline without the file, unsupported export...) prints one sentence on stderr and exits with status 2;
``--debug`` shows the traceback instead. Every command that builds a model takes ``--kwargs key=value ...``
(values parsed as YAML: ``--kwargs depths=[1,1,1,1] n_win=7``), passed to ``timm.create_model``.

    visionzoo list [--pretrained] [PATTERN]
    visionzoo info biformer_tiny [--size 224]
    visionzoo download biformer_tiny
    visionzoo benchmark biformer_tiny --batch 8 --steps 10 [--amp] [--channels-last] [--compile]
    visionzoo export biformer_tiny --format onnx --check [--size 224] [--output model.onnx]
    visionzoo predict biformer_tiny --checkpoint logs/.../last.ckpt img1.jpg img2.jpg

Models: the zoo's (``visionzoo list``) and timm's own names (e.g. ``davit_tiny``) alike.

``predict`` loads ``--checkpoint`` through :func:`visionzoo.hub.model_from_checkpoint` (a ``save_pretrained``
folder, a ``train.py`` classification ``.ckpt`` with its run config, or a state_dict file) and prints the top-k
classes (ImageNet names for 1000-class heads, ``label_names`` when saved); a model whose output is a map (a
segmenter) writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` to ``--output-dir``. A segmentation *run*
checkpoint (backbone + head, ``hyper_parameters['model_spec']``) is handed to :mod:`visionzoo.predict`, which
rebuilds the run's model and inference settings.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, VisionZooError

__all__ = ["main", "build_parser"]

_EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------------------------- helpers
def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _parse_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--kwargs takes key=value pairs (e.g. depths=[1,1,1,1]), got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--kwargs {key.strip()}: cannot parse {value!r} as a YAML value.") from None
    return out


def _check_name(name: str) -> str:
    """The model name (``arch`` or ``arch.tag``) if timm knows it, else one sentence with close matches."""
    import timm

    import visionzoo

    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        zoo = visionzoo.list_models()
        close = difflib.get_close_matches(base, list(dict.fromkeys(zoo + timm.list_models())), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown model {name!r}{hint}; `visionzoo list` shows the zoo's models ({', '.join(zoo)}) "
            f"and timm's own names work too."
        )
    if tag:
        try:
            found = timm.models.get_pretrained_cfg(name, allow_unregistered=False) is not None
        except RuntimeError:
            found = False
        if not found:
            tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
            raise ConfigError(f"{base} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}.")
    return name


def _cfg(name: str) -> dict[str, Any]:
    """The (default or tagged) pretrained cfg of ``name`` as a dict, with architecture and tag filled in."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    out = cfg.to_dict() if cfg is not None else {}
    out.setdefault("architecture", name.split(".")[0])
    if not out.get("architecture"):
        out["architecture"] = name.split(".")[0]
    return out


def _is_zoo(name: str) -> bool:
    from .models import zoo_model_names

    return name.split(".")[0] in zoo_model_names()


def _weights(cfg: dict[str, Any], zoo: bool) -> dict[str, Any]:
    """Where the weights come from and whether they are cached."""
    from . import hub

    if cfg.get("url") and zoo:
        source = hub.weights_source(cfg)
        cached = hub.cached_file(source)
        return {
            "url": source.url,
            "sha256": source.sha256,
            "cache_path": str(cached or source.cache_path),
            "cached": cached is not None,
            "mirror_url": source.mirror_url,
            "mirror_file": source.mirror_name,
        }
    if cfg.get("hf_hub_id"):
        return {
            "hf_hub_id": cfg["hf_hub_id"],
            "cached": None,
            "note": "downloaded and cached by huggingface_hub",
        }
    if cfg.get("url"):
        return {"url": cfg["url"], "cached": None, "note": "downloaded and cached by timm (torch.hub)"}
    return {"url": None, "cached": False}


def _build(args: argparse.Namespace, name: str, **extra: Any):
    """The model for a command: ``--checkpoint`` (our weights), ``--pretrained`` (published) or random init."""
    import timm

    from .hub import model_from_checkpoint

    kwargs = {**_parse_kwargs(getattr(args, "kwargs", None)), **extra}
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint:
        return model_from_checkpoint(name, checkpoint, **kwargs)
    return timm.create_model(name, pretrained=bool(getattr(args, "pretrained", False)), **kwargs)


def _size(model_or_cfg: Any, size: int | None) -> tuple[int, int, int]:
    cfg = getattr(model_or_cfg, "pretrained_cfg", model_or_cfg)
    c, h, w = tuple(cfg.get("input_size") or (3, 224, 224))
    return (c, size, size) if size else (c, h, w)


# --------------------------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    import timm

    import visionzoo
    from visionzoo.models import model_info

    rows = []
    for name in visionzoo.list_models(args.pattern or "*", pretrained=args.pretrained):
        cfg = _cfg(name)
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
        rows.append(
            {
                "name": name,
                "family": model_info(name).module.rsplit(".", 1)[-1],
                "pretrained_tags": tags,
                "input_size": list(cfg.get("input_size") or ()),
                "num_classes": cfg.get("num_classes"),
                "license": cfg.get("license"),
                "paper": cfg.get("paper_ids"),
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    _table(
        "visionzoo models" + (" with pretrained weights" if args.pretrained else ""),
        ["model", "family", "weights", "input", "classes", "license", "paper"],
        [
            (
                r["name"],
                r["family"],
                ", ".join(r["pretrained_tags"]) or "-",
                "x".join(map(str, r["input_size"])),
                r["num_classes"],
                r["license"],
                r["paper"],
            )
            for r in rows
        ],
    )
    return 0


def model_info(name: str, size: int | None = None, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``visionzoo info`` shows, as a dict."""
    from .flops import model_complexity

    kwargs = dict(kwargs or {})
    cfg = _cfg(name)
    input_size = _size(cfg, size)
    complexity = model_complexity(name.split(".")[0], input_size=input_size, **kwargs)
    zoo = _is_zoo(name)
    return {
        "name": name,
        "zoo_model": zoo,
        "tag": cfg.get("tag"),
        "model_kwargs": kwargs,
        "params": complexity["params"],
        "gmacs": complexity["gmacs"],
        "gflops": complexity["flops"] / 1e9,
        "flops_input_size": list(complexity["input_size"]),
        "input_size": list(cfg.get("input_size") or ()),
        "mean": list(cfg.get("mean") or ()),
        "std": list(cfg.get("std") or ()),
        "crop_pct": cfg.get("crop_pct"),
        "interpolation": cfg.get("interpolation"),
        "num_classes": cfg.get("num_classes"),
        "license": cfg.get("license"),
        "paper": cfg.get("paper_name"),
        "paper_ids": cfg.get("paper_ids"),
        "origin_url": cfg.get("origin_url"),
        "weights": _weights(cfg, zoo),
    }


def cmd_info(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    info = model_info(name, args.size, _parse_kwargs(args.kwargs))
    if args.json:
        _print_json(info)
        return 0
    w = info["weights"]
    size = "x".join(map(str, info["flops_input_size"][1:]))
    rows = [
        ("model", f"{info['name']}" + (f" (tag {info['tag']})" if info["tag"] else "")),
        ("parameters", f"{info['params']:,} ({info['params'] / 1e6:.2f} M)"),
        (f"GMACs @{size}", f"{info['gmacs']:.3f} ({info['gflops']:.3f} GFLOPs, forward, batch 1)"),
        ("input size", "x".join(map(str, info["input_size"]))),
        ("mean / std", f"{_fmt_floats(info['mean'])} / {_fmt_floats(info['std'])}"),
        ("crop / interpolation", f"{info['crop_pct']} / {info['interpolation']}"),
        ("classes", info["num_classes"]),
        ("license", info["license"]),
        ("paper", " ".join(str(v) for v in (info["paper"], info["paper_ids"]) if v) or None),
        ("code", info["origin_url"]),
    ]
    if w.get("url") or w.get("hf_hub_id"):
        rows.append(("weights", w.get("url") or f"hf-hub:{w['hf_hub_id']}"))
    else:
        rows.append(("weights", "none published"))
    if "sha256" in w:
        rows.append(("sha256", w["sha256"] or "not pinned"))
    if "cache_path" in w:
        rows.append(("cached", ("yes: " if w["cached"] else "no: ") + w["cache_path"]))
    elif w.get("note"):
        rows.append(("cached", w["note"]))
    if w.get("mirror_url"):
        rows.append(("mirror", w["mirror_url"]))
    if info["model_kwargs"]:
        rows.append(("kwargs", json.dumps(info["model_kwargs"])))
    _table(f"{name}", ["field", "value"], rows)
    return 0


def _fmt_floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def cmd_download(args: argparse.Namespace) -> int:
    import timm

    from . import hub

    name = _check_name(args.name)
    cfg = _cfg(name)
    zoo = _is_zoo(name)
    if zoo and cfg.get("url"):
        source = hub.weights_source(cfg)
        before = hub.cached_file(source) is not None
        path = hub.fetch(cfg, progress=None if not args.json else False)
        sidecar = path.with_name(path.name + ".sha256")
        result = {
            "name": name,
            "path": str(path),
            "bytes": path.stat().st_size,
            "sha256": sidecar.read_text().strip() if sidecar.is_file() else None,
            "pinned": source.sha256 is not None,
            "was_cached": before,
            "url": source.mirror_url or source.url,
        }
    elif cfg.get("url") or cfg.get("hf_hub_id"):
        try:
            timm.create_model(name, pretrained=True)
        except Exception as e:  # noqa: BLE001 -- timm / huggingface_hub errors: one sentence
            raise ConfigError(f"timm could not download {name} ({type(e).__name__}: {_short(e)}).") from None
        result = {"name": name, "path": None, "note": "cached by timm / huggingface_hub", "was_cached": None}
    else:
        raise ConfigError(f"{name} has no published weights to download.")
    if args.json:
        _print_json(result)
        return 0
    rows = [(k, v) for k, v in result.items() if v is not None]
    _table(f"{name} weights", ["field", "value"], rows)
    return 0


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def cmd_benchmark(args: argparse.Namespace) -> int:
    import torch

    from .bench import benchmark

    name = _check_name(args.name)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark(
        name,
        batch=args.batch,
        size=args.size,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        train=not args.no_train,
        model_kwargs=_parse_kwargs(args.kwargs),
    )
    if args.json:
        _print_json(result)
        return 0
    inf, trn = result["inference"], result.get("train")
    mib = lambda v: "n/a" if v is None else f"{v:,.0f}"  # noqa: E731
    rows = [
        (
            "inference",
            f"{inf['img_per_s']:.2f}",
            f"{inf['latency_ms_p50']:.1f}",
            f"{inf['latency_ms_p95']:.1f}",
            mib(inf["peak_memory_mib"]),
        ),
    ]
    if trn:
        rows.append(
            (
                "train step",
                f"{trn['img_per_s']:.2f}",
                f"{trn['step_ms_p50']:.1f}",
                f"{trn['step_ms_p95']:.1f}",
                mib(trn["peak_memory_mib"]),
            )
        )
    size = "x".join(map(str, result["input_size"][1:]))
    opts = [
        o
        for o, on in (
            ("bf16 autocast", result["amp"]),
            ("channels_last", args.channels_last),
            ("compile", args.compile),
        )
        if on
    ]
    _table(
        f"{name} @ {size}, batch {result['batch']}, {result['device']} ({result['device_name']}, "
        f"{result['threads']} threads){', ' + ', '.join(opts) if opts else ''}; {result['steps']} steps",
        ["", "img/s", "p50 ms", "p95 ms", "peak MiB"],
        rows,
    )
    _table(
        "compute",
        ["params", "GFLOPs/img", "achieved GFLOP/s", "fp32 matmul GFLOP/s", "fraction of matmul rate"],
        [
            (
                f"{result['params'] / 1e6:.2f} M",
                f"{result['gflops_per_image']:.3f}",
                f"{inf['achieved_gflop_per_s']:.1f}",
                f"{result['matmul_fp32_gflop_per_s']:.1f}",
                f"{result['fraction_of_matmul_rate']:.1%}",
            )
        ],
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import FORMATS, export_model

    name = _check_name(args.name)
    model = _build(args, name)
    input_size = _size(model, args.size)
    base = name.split(".")[0]
    output = Path(args.output or f"{base}{FORMATS[args.format]}")
    result = export_model(
        model, args.format, output, input_size, check=args.check, name=base, opset=args.opset
    )
    if args.json:
        _print_json(result)
        return 0
    rows = [
        ("file", result["output"]),
        ("size", f"{result['bytes'] / 2**20:.2f} MiB"),
        ("input", "Bx" + "x".join(map(str, result["input_size"]))),
    ]
    if "check" in result:
        c = result["check"]
        runner = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "torch_export": "torch.export.load"}
        rows.append(
            (
                "check",
                f"passed ({runner[args.format]} vs eager: max abs diff {c['max_abs_diff']:.2e}, "
                f"relative error {c['rel_error']:.2e})",
            )
        )
    _table(f"{base} -> {args.format}", ["", ""], rows)
    return 0


def _is_segmenter(name: str, model) -> bool:
    from .models import model_info, zoo_model_names

    if (getattr(model, "pretrained_cfg", None) or {}).get("task") == "segmentation":
        return True
    arch = name.split(".")[0]
    return arch in zoo_model_names() and model_info(arch).task == "segmentation"


def _class_names(model) -> list[str] | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    n = getattr(model, "num_classes", None)
    if isinstance(names, dict):
        names = [str(names.get(i, names.get(str(i), i))) for i in range(n or len(names))]
    if names and (n is None or len(names) == n):
        descriptions = cfg.get("label_descriptions") or {}
        return [str(descriptions.get(v, v)) for v in names]
    if n == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return None


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    name = _check_name(args.name)
    if not args.checkpoint and not args.pretrained:
        raise ConfigError(
            "predict needs weights: pass --checkpoint PATH (our own) or --pretrained (published)."
        )
    images = [Path(p) for p in args.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise ConfigError(f"image file not found: {', '.join(missing[:3])}.")
    if args.checkpoint and _is_segmentation_run(Path(args.checkpoint)):
        return _predict_segmentation_run(args, images)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _build(args, name).to(device).eval()
    if args.size:
        channels = (model.pretrained_cfg.get("input_size") or (3,))[0]
        model.pretrained_cfg["input_size"] = (channels, args.size, args.size)
    segmenter = _is_segmenter(name, model)
    transform = _transform(model, segmenter)
    names = _class_names(model)
    results = []
    for path in images:
        try:
            image = Image.open(path).convert("RGB")
        except (UnidentifiedImageError, OSError):
            raise ConfigError(f"{path} is not an image file that Pillow can read.") from None
        x = transform(image).unsqueeze(0).to(device)
        with torch.inference_mode():
            out = model(x)
        if out.ndim == 4 or segmenter:
            results.append(_save_mask(path, image, out, Path(args.output_dir), names))
            continue
        probs = out.float().softmax(-1)[0]
        k = min(args.topk, probs.numel())
        top = probs.topk(k)
        results.append(
            {
                "image": str(path),
                "top": [
                    {"class": int(i), "name": names[int(i)] if names else None, "prob": float(p)}
                    for p, i in zip(top.values, top.indices)
                ],
            }
        )
    if args.json:
        _print_json(results)
        return 0
    for r in results:
        if "mask" in r:
            _table(
                f"{r['image']}",
                ["mask", "overlay", "classes present"],
                [(r["mask"], r["overlay"], ", ".join(r["classes_present"]))],
            )
        else:
            _table(
                f"{r['image']}",
                ["rank", "class", "name", "probability"],
                [(i + 1, t["class"], t["name"] or "-", f"{t['prob']:.4f}") for i, t in enumerate(r["top"])],
            )
    return 0


def _is_segmentation_run(path: Path) -> bool:
    """A Lightning checkpoint of a segmentation run (``hyper_parameters['model_spec']``: backbone + head)."""
    if not (path.is_file() and path.suffix == ".ckpt"):
        return False
    from .hub import read_checkpoint

    ckpt = read_checkpoint(path)
    return isinstance(ckpt, dict) and "model_spec" in (ckpt.get("hyper_parameters") or {})


def _predict_segmentation_run(args: argparse.Namespace, images: list[Path]) -> int:
    """Segmentation runs rebuild their own model (backbone + head) and inference settings: ``visionzoo.predict``."""
    from .predict import predict_folder

    out = Path(args.output_dir)
    size = (args.size, args.size) if args.size else None
    results = []
    for path in images:
        written = predict_folder(args.checkpoint, path, out, device=args.device or "auto", size=size)
        for mask in written:
            results.append(
                {"image": str(path), "mask": str(mask), "overlay": str(out / "overlays" / mask.name)}
            )
    if args.json:
        _print_json(results)
        return 0
    _table(
        f"{args.checkpoint} (segmentation run)",
        ["image", "mask", "overlay"],
        [(r["image"], r["mask"], r["overlay"]) for r in results],
    )
    return 0


def _transform(model, segmenter: bool):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=model)
    if not segmenter:
        return create_transform(**cfg)
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(tuple(cfg["input_size"][1:]), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )


def _save_mask(path: Path, image, logits, out_dir: Path, names: list[str] | None) -> dict[str, Any]:
    """Argmax mask at the image's size (PNG, class index per pixel) and a colour overlay."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    logits = F.interpolate(
        logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=False
    )
    if logits.shape[1] == 1:
        mask = (logits[0, 0] > 0).to("cpu").numpy().astype(np.uint8)
    else:
        mask = logits[0].argmax(0).to("cpu").numpy().astype(np.uint8)
    rng = np.random.default_rng(0)
    palette = np.concatenate([[[0, 0, 0]], rng.integers(40, 256, size=(255, 3))]).astype(np.uint8)
    color = palette[mask]
    base = np.asarray(image, dtype=np.float32)
    alpha = np.where(mask[..., None] > 0, 0.5, 0.0)
    overlay = (base * (1 - alpha) + color * alpha).astype(np.uint8)
    mask_path = out_dir / f"{path.stem}_mask.png"
    overlay_path = out_dir / f"{path.stem}_overlay.png"
    Image.fromarray(mask).save(mask_path)
    Image.fromarray(overlay).save(overlay_path)
    present = sorted(int(v) for v in np.unique(mask))
    return {
        "image": str(path),
        "mask": str(mask_path),
        "overlay": str(overlay_path),
        "classes_present": [names[i] if names and i < len(names) else str(i) for i in present],
    }


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionzoo",
        description="visionzoo models: list, inspect, download weights, benchmark, export, predict.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-sentence errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON instead of tables")
        return p

    def model_args(p: argparse.ArgumentParser, weights: bool = True) -> None:
        p.add_argument("name", help="model name, e.g. biformer_tiny (or arch.tag)")
        p.add_argument(
            "--kwargs",
            nargs="+",
            metavar="KEY=VALUE",
            help="timm.create_model kwargs, YAML values (e.g. depths=[1,1,1,1] num_classes=10)",
        )
        if weights:
            p.add_argument("--pretrained", action="store_true", help="load the published weights")
            p.add_argument(
                "--checkpoint",
                help="our own weights: a save_pretrained folder, a Lightning .ckpt from train.py, or a state_dict file",
            )

    p = add("list", "list the zoo's models", cmd_list)
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'biformer_*'")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")

    p = add("info", "parameters, GMACs, preprocessing, licence, paper and weights of a model", cmd_info)
    model_args(p, weights=False)
    p.add_argument("--size", type=int, help="input side for the GMACs (default: the model's input size)")

    p = add("download", "download a model's published weights into the cache (verified)", cmd_download)
    p.add_argument("name", help="model name (or arch.tag)")

    p = add("benchmark", "throughput, latency, memory and matmul-rate fraction of a model", cmd_benchmark)
    model_args(p, weights=False)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, help="input side (default: the model's input size)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per phase")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")

    p = add(
        "export", "export to ONNX, TorchScript or torch.export, optionally checked against eager", cmd_export
    )
    model_args(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "torch_export"])
    p.add_argument(
        "--check", action="store_true", help="run the exported file and compare with eager PyTorch"
    )
    p.add_argument("--size", type=int, help="input side (default: the model's input size)")
    p.add_argument("--output", help="output file (default: NAME.onnx / .pt / .pt2 here)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")

    p = add(
        "predict", "top-5 classes (classifiers) or masks with overlays (segmenters) for images", cmd_predict
    )
    model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument(
        "--size", type=int, help="input side (default: the training run's or the model's input size)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output-dir", default="predictions", help="where segmenters write masks and overlays")
    return parser


def _positionals_after_kwargs(argv: Sequence[str]) -> list[str]:
    """``--kwargs a=1 b=2 img.png``: ``--kwargs`` takes every following word, the image paths too; move the words
    without ``=`` behind a ``--`` so that they stay positional arguments."""
    out: list[str] = []
    moved: list[str] = []
    in_kwargs = False
    for i, token in enumerate(argv):
        if token == "--":
            out += argv[i:]
            break
        if token == "--kwargs":
            in_kwargs = True
        elif token.startswith("-"):
            in_kwargs = False
        elif in_kwargs and "=" not in token:
            moved.append(token)
            continue
        out.append(token)
    if not moved:
        return out
    if "--" in out:
        at = out.index("--") + 1
        return out[:at] + moved + out[at:]
    return out + ["--", *moved]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((t for t in argv if not t.startswith("-")), None)
    if command == "predict":  # the only command with positionals (images) after its options
        argv = _positionals_after_kwargs(argv)
    args = parser.parse_args(argv)
    import visionzoo  # noqa: F401  (registers the zoo's models and the weights hook)

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("visionzoo: interrupted", file=sys.stderr)
        return 130
    except (VisionZooError, FileNotFoundError, PermissionError, ValueError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"visionzoo {args.command}: error: {message}", file=sys.stderr)
        return _EXIT_USER_ERROR


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
