"""Pretrained weights for zoo models: resolve, download, verify, convert, save.

``timm.create_model('biformer_tiny', pretrained=True)`` works after ``import visionzoo``; this module is what runs
underneath for the zoo's own models (timm's models are never touched).

How it hooks into timm
----------------------
timm's ``build_model_with_cfg`` calls ``timm.models._builder.load_pretrained(model, pretrained_cfg, ...)`` after
building a model (the name is looked up in that module at call time). :func:`install` replaces that function with
a thin wrapper that checks ``pretrained_cfg['architecture']``: for a name registered by the zoo it runs
:func:`load_pretrained` below, for anything else it calls timm's original unchanged. For a zoo model:

* a ``url`` source (no ``state_dict`` / ``file`` / ``hf_hub_id`` / ``local-dir`` given) is resolved by
  :func:`fetch` -- cache, offline mode, mirror, download, SHA-256, zip extraction -- then read here with
  ``torch.load(weights_only=True)`` or safetensors and handed to timm's loader as ``state_dict=`` (a copy of the
  cfg: ``model.pretrained_cfg`` keeps the URL). The full file goes to the model's ``checkpoint_filter_fn``, as on
  timm's own URL path, so official layouts (``{'model': ..., 'optimizer': ...}``, official key names) convert;
* every other source (``file=``, ``state_dict=``, ``local-dir:``, ``hf-hub:``) goes to timm's loader as is;
* in both cases timm still runs the filter, the ``in_chans`` stem adaptation and the classifier drop, and every
  failure becomes one :class:`~visionzoo.errors.CheckpointError` sentence: an unreadable file, a filter that
  cannot convert the checkpoint, and the strict ``load_state_dict`` (missing / unexpected keys, wrong shapes,
  naming the first ones) instead of torch's multi-line report.

Cache, hash, mirror, offline (all read at call time)
----------------------------------------------------
* Cache directory: ``$VISIONZOO_CACHE`` if set, else timm's/torch's ``$TORCH_HOME/hub/checkpoints``; a
  ``cache_dir=`` passed to ``timm.create_model`` wins over both.
* File names: ``<arch>.<tag>-<url8>-<file name>`` where ``url8`` is the first 8 hex digits of the SHA-256 of the
  URL. The three official BiFormer URLs all end in ``/content``, which torch.hub caches under one name; here they
  cannot clash, and a URL overlaid by a user never picks up the official file cached under the same tag.
* Integrity: pin a file with a ``#sha256=<64 hex>`` fragment on the cfg's URL (pip's convention; the fragment is
  never sent to the server). ``PretrainedCfg`` rejects unknown fields, so the hash travels inside the one field
  that names the file, in ``default_cfgs`` and in ``pretrained_cfg_overlay`` alike. A mismatch deletes the file
  and raises. Downloads go to a temporary file in the cache directory and are renamed only when complete and
  verified; a truncated transfer (fewer bytes than ``Content-Length``) or an HTML page where a checkpoint was
  expected leaves nothing behind. A ``<file>.sha256`` sidecar records the hash of what was downloaded.
* Offline: ``VISIONZOO_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) uses the cache only; a missing file raises one
  sentence naming the exact path to place it at (a file placed there is verified like a download).
* Mirror: ``VISIONZOO_WEIGHTS_URL=https://host/weights`` downloads ``<mirror>/<arch>.<tag>-<file name>`` (for
  BiFormer-T: ``biformer_tiny.in1k-content``) instead of the published URL; the hash still applies.
* Zip assets (a ``.zip`` holding a checkpoint, not torch's own zip format) are extracted to the checkpoint they
  hold, ``<arch>.<tag>-<url8>-<member file name>``, and the archive is removed. An archive with several
  checkpoints names the one to take with ``#member=<file>`` (combine: ``#member=best.pt&sha256=...``; the hash
  is that of the archive, and the member takes part in ``url8``).

Our own weights
---------------
:func:`save_pretrained` writes ``model.safetensors`` + ``config.json`` in timm's ``save_for_hf`` /
``push_to_hf_hub`` layout, so ``timm.create_model('local-dir:DIR', pretrained=True)`` rebuilds the model
(architecture, constructor kwargs, classes, preprocessing) and loads them; a Hugging Face Hub repo holding the
same two files loads the same way with ``'hf-hub:org/repo'``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, VisionZooError

__all__ = [
    "ENV_CACHE",
    "ENV_MIRROR",
    "ENV_OFFLINE",
    "WeightsSource",
    "cache_dir",
    "cached_file",
    "fetch",
    "install",
    "is_offline",
    "load_pretrained",
    "model_from_checkpoint",
    "parse_url",
    "read_checkpoint",
    "save_pretrained",
    "split_url",
    "weights_source",
]

_logger = logging.getLogger(__name__)

ENV_CACHE = "VISIONZOO_CACHE"
ENV_OFFLINE = "VISIONZOO_OFFLINE"
ENV_MIRROR = "VISIONZOO_WEIGHTS_URL"
_HF_OFFLINE = "HF_HUB_OFFLINE"
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHECKPOINT_EXTS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".tar")


# --------------------------------------------------------------------------------------------- names, paths
def is_offline() -> bool:
    """``VISIONZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1 / true / yes / on."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in (ENV_OFFLINE, _HF_OFFLINE))


def _offline_var() -> str:
    for k in (ENV_OFFLINE, _HF_OFFLINE):
        if os.environ.get(k, "").strip().lower() in _TRUE:
            return f"{k}={os.environ[k]}"
    return ENV_OFFLINE


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where checkpoints are cached: ``override`` > ``$VISIONZOO_CACHE`` > ``$TORCH_HOME/hub/checkpoints``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``'https://x/a.zip#member=b.pt&sha256=..'`` -> ``('https://x/a.zip', {'member': 'b.pt', 'sha256': '..'})``.

    Known fragment keys: ``sha256`` (64 hex digits, the downloaded file's hash) and ``member`` (the checkpoint to
    take from a zip asset holding several). The fragment is never sent to the server.
    """
    base, _, fragment = url.partition("#")
    params: dict[str, str] = {}
    for part in filter(None, fragment.split("&")):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key not in ("sha256", "member"):
            raise CheckpointError(
                f"unknown key {key!r} in the fragment of {url!r}; known keys: sha256, member."
            )
        params[key] = urllib.parse.unquote(value.strip())
    if "sha256" in params:
        params["sha256"] = params["sha256"].lower()
        if not _SHA_RE.match(params["sha256"]):
            raise CheckpointError(
                f"the '#sha256=' fragment of {url!r} is not 64 hex digits; pin files with the full SHA-256."
            )
    return base, params


def split_url(url: str) -> tuple[str, str | None]:
    """``'https://x/y.pth#sha256=ab..'`` -> ``('https://x/y.pth', 'ab..')``; no hash -> ``(url, None)``."""
    base, params = parse_url(url)
    return base, params.get("sha256")


@dataclass(frozen=True)
class WeightsSource:
    """Where a zoo model's URL weights come from and where they are cached (see the module docstring)."""

    name: str  # 'arch.tag' (or 'arch')
    url: str  # the published URL, without the fragment
    sha256: str | None
    cache_path: Path  # the exact file offline users place (before zip extraction)
    mirror_name: str  # file name under $VISIONZOO_WEIGHTS_URL
    member: str | None = None  # the checkpoint to take from a zip asset (``#member=``)

    @property
    def prefix(self) -> str:
        return self.cache_path.name[: -len(self.file_name) - 1]

    @property
    def file_name(self) -> str:
        return self.mirror_name[len(self.name) + 1 :]

    @property
    def mirror_url(self) -> str | None:
        base = os.environ.get(ENV_MIRROR, "").strip()
        return base.rstrip("/") + "/" + urllib.parse.quote(self.mirror_name) if base else None


def weights_source(
    pretrained_cfg: Mapping[str, Any], cache: str | os.PathLike | None = None
) -> WeightsSource:
    """Resolve the URL of a pretrained cfg (dict or ``PretrainedCfg``) to its cache path and mirror name."""
    cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.to_dict()
    raw = cfg.get("url") or ""
    arch = cfg.get("architecture") or "model"
    if not raw:
        raise CheckpointError(f"{arch} has no weights URL in its pretrained_cfg.")
    url, params = parse_url(raw)
    member = params.get("member")
    tag = cfg.get("tag")
    name = f"{arch}.{tag}" if tag else arch
    file_name = _safe(os.path.basename(urllib.parse.urlparse(url).path)) or "weights"
    identity = url + (f"#member={member}" if member else "")
    url8 = hashlib.sha256(identity.encode()).hexdigest()[:8]
    path = cache_dir(cache) / f"{name}-{url8}-{file_name}"
    return WeightsSource(
        name=name,
        url=url,
        sha256=params.get("sha256"),
        cache_path=path,
        mirror_name=f"{name}-{file_name}",
        member=member,
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", urllib.parse.unquote(name)).lstrip(".")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_file(source: WeightsSource) -> Path | None:
    """The cached checkpoint of ``source`` (the downloaded file or the one extracted from its zip), if any."""
    if source.cache_path.is_file():
        return source.cache_path
    directory = source.cache_path.parent
    if not directory.is_dir():
        return None
    hits = sorted(
        p
        for p in directory.glob(glob_escape(source.prefix) + "-*")
        if p.is_file() and not p.name.endswith((".sha256", ".part"))
    )
    return hits[0] if hits else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --------------------------------------------------------------------------------------------- fetch
def fetch(
    pretrained_cfg: Mapping[str, Any],
    cache: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """The verified local checkpoint file for the cfg's URL: from the cache, or downloaded into it.

    Raises :class:`CheckpointError` (one sentence) when offline and not cached, when the download fails or is
    truncated, and when the SHA-256 does not match (the file is deleted first).
    """
    source = weights_source(pretrained_cfg, cache)
    hit = cached_file(source)
    if hit is not None:
        ok = _verify_cached(hit, source)
        if ok is not None:
            return ok
        # a stale file was deleted by _verify_cached; fetch it anew below
    if is_offline():
        pin = f" (SHA-256 {source.sha256})" if source.sha256 else ""
        alt = ""
        if source.member:
            member = source.cache_path.with_name(f"{source.prefix}-{_safe(os.path.basename(source.member))}")
            alt = f", or its member {source.member} at {member}"
        raise CheckpointError(
            f"the {source.name} weights are not in the cache and offline mode is on ({_offline_var()}): "
            f"download {source.url} on a connected machine and place it at {source.cache_path}{pin}{alt}."
        )
    source.cache_path.parent.mkdir(parents=True, exist_ok=True)
    url = source.mirror_url or source.url
    _logger.info("downloading %s weights from %s to %s", source.name, url, source.cache_path)
    tmp, digest = _download(url, source, progress)
    try:
        if source.sha256 and digest != source.sha256:
            raise CheckpointError(
                f"the file downloaded from {url} for {source.name} has SHA-256 {digest}, not the pinned "
                f"{source.sha256}; it was deleted (a corrupted transfer, or the published file changed)."
            )
        if source.sha256 is None:
            _logger.warning(
                "%s weights from %s are not pinned; downloaded SHA-256 %s (pin it with '#sha256=%s' on the URL).",
                source.name,
                url,
                digest,
                digest,
            )
        final = _finalize(tmp, source, digest)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _verify_cached(path: Path, source: WeightsSource) -> Path | None:
    """Check a cache hit; returns the checkpoint path, or ``None`` after deleting a stale file (online mode)."""
    sidecar = _sidecar(path)
    recorded = sidecar.read_text().strip() if sidecar.is_file() else None
    if recorded is not None and (source.sha256 is None or recorded == source.sha256):
        return path
    if recorded is None:  # placed by hand (offline) or by an older version: hash it now
        digest = _sha256_file(path)
        if source.sha256 is None or digest == source.sha256:
            return _finalize(path, source, digest)
        what = f"has SHA-256 {digest}"
    else:
        what = f"was downloaded with SHA-256 {recorded}"
    path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    if is_offline():
        raise CheckpointError(
            f"the cached {source.name} weights {path} {what}, not the pinned {source.sha256}; the file was deleted: "
            f"place the right file (download {source.url}) at {source.cache_path}."
        )
    _logger.warning(
        "cached %s weights %s %s, not %s; downloading again", source.name, path, what, source.sha256
    )
    return None


def _finalize(path: Path, source: WeightsSource, digest: str) -> Path:
    """Move a verified file (a temp download or a hand-placed file) to its cache name, extracting a zip asset."""
    target = source.cache_path
    if _is_zip_asset(path):
        target = _extract(path, source)
        if path != target:
            path.unlink(missing_ok=True)
    elif path != target:
        os.replace(path, target)
    _sidecar(target).write_text(digest + "\n")
    return target


def _download(url: str, source: WeightsSource, progress: bool | None) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file next to the cache path; returns it and its SHA-256."""
    directory = source.cache_path.parent
    fd, name = tempfile.mkstemp(prefix=f".{source.cache_path.name}.", suffix=".part", dir=directory)
    tmp = Path(name)
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    hasher = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            ctype = (response.headers.get("Content-Type") or "").lower()
            if ctype.startswith("text/html"):
                raise CheckpointError(
                    f"{url} returned an HTML page, not a checkpoint (a broken or expired share link?); "
                    f"download it by hand and place it at {source.cache_path}, or set {ENV_MIRROR}."
                )
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress_bar(source.name, total, progress) as advance:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        if total is not None and received != total:
            raise CheckpointError(
                f"the download of {url} for {source.name} stopped after {received:,} of {total:,} bytes; "
                f"nothing was kept in the cache, try again."
            )
    except VisionZooError:
        tmp.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not download the {source.name} weights: {url} answered HTTP {e.code} {e.reason}; "
            f"place the file at {source.cache_path} by hand or set {ENV_MIRROR}."
        ) from None
    except (http.client.IncompleteRead, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"the download of {url} for {source.name} broke off after {received:,} bytes "
            f"({type(e).__name__}); nothing was kept in the cache, try again."
        ) from None
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"could not download the {source.name} weights from {url} ({reason}); place the file at "
            f"{source.cache_path} by hand, set {ENV_MIRROR} to an internal mirror, or use {ENV_OFFLINE}=1."
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, hasher.hexdigest()


def _user_agent() -> str:
    from . import __version__

    return f"visionzoo/{__version__} (+torch {torch.__version__})"


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """A rich download bar on stderr (shown when stderr is a terminal unless ``enabled`` says otherwise)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"downloading {label}", total=total)
        yield lambda n: bar.advance(task, n)


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------- zip assets
def _is_zip_asset(path: Path) -> bool:
    """A zip archive that *holds* a checkpoint -- not torch's own zip serialization (``<x>/data.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return not any(n.endswith("data.pkl") or n.endswith("/version") for n in names)


def _extract(path: Path, source: WeightsSource) -> Path:
    with zipfile.ZipFile(path) as zf:
        members = [
            i for i in zf.infolist() if not i.is_dir() and i.filename.lower().endswith(_CHECKPOINT_EXTS)
        ]
        members = [i for i in members if not os.path.basename(i.filename).startswith(".")]
        if source.member:
            wanted = source.member.strip("/")
            chosen = [i for i in zf.infolist() if i.filename == wanted]
            chosen = chosen or [
                i for i in zf.infolist() if os.path.basename(i.filename) == os.path.basename(wanted)
            ]
            if len(chosen) != 1:
                found = ", ".join(i.filename for i in members) or "none"
                path.unlink(missing_ok=True)
                raise CheckpointError(
                    f"the {source.name} zip archive has {'no' if not chosen else 'several'} member {wanted!r} "
                    f"(its checkpoints: {found}); it was deleted."
                )
            members = chosen
        if len(members) != 1:
            found = ", ".join(i.filename for i in members) or "none"
            path.unlink(missing_ok=True)
            raise CheckpointError(
                f"the {source.name} zip archive must hold exactly one checkpoint file "
                f"({', '.join(_CHECKPOINT_EXTS)}) or name one with '#member=<file>' on the URL, found {found}; "
                f"it was deleted."
            )
        member = members[0]
        target = source.cache_path.with_name(f"{source.prefix}-{_safe(os.path.basename(member.filename))}")
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    out.write(chunk)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)
    _logger.info("extracted %s from the %s archive to %s", member.filename, source.name, target)
    return target


# --------------------------------------------------------------------------------------------- reading
def _is_safetensors(path: Path) -> bool:
    if path.name.endswith(".safetensors"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < path.stat().st_size


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file as published (safetensors, or ``torch.load(weights_only=True)``), unconverted.

    Raises :class:`CheckpointError` naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"the checkpoint file {path} does not exist.")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any reader failure is one sentence about this file
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise CheckpointError(
                f"the checkpoint {path} pickles objects other than tensors ({found.group(1)}), which "
                f"torch.load(weights_only=True) refuses for safety; re-save only its state_dict (or 'model' entry) "
                f"from a trusted environment."
            ) from None
        detail = text.rsplit("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler" in text else text
        detail = " ".join(detail.split())[:120] or type(e).__name__
        raise CheckpointError(
            f"could not read the checkpoint {path}: it is neither a torch nor a safetensors file ({detail})."
        ) from None


# --------------------------------------------------------------------------------------------- loading
def _first(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def describe_mismatch(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> str | None:
    """One clause per kind of mismatch between ``state_dict`` and ``model`` (``None`` when it loads)."""
    target = model.state_dict()
    parts = []
    if strict:
        missing = [k for k in target if k not in state_dict]
        unexpected = [k for k in state_dict if k not in target]
        if missing:
            parts.append(
                f"{len(missing)} keys the model needs are missing (first: {_first([repr(k) for k in missing])})"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} keys are not in the model (first: {_first([repr(k) for k in unexpected])})"
            )
    shapes = [
        f"{k!r} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and torch.is_tensor(v) and tuple(v.shape) != tuple(target[k].shape)
    ]
    if shapes:
        parts.append(
            f"{len(shapes)} tensors have another shape (checkpoint vs model; first: {_first(shapes)})"
        )
    return "; ".join(parts) or None


def _model_label(model: nn.Module, cfg: Mapping[str, Any]) -> str:
    return f"{cfg.get('architecture') or type(model).__name__} ({type(model).__name__})"


def _describe_source(cfg: Mapping[str, Any], local: Path | None) -> str:
    if local is not None:
        return str(local)
    if cfg.get("state_dict") is not None:
        return "the given state_dict"
    if cfg.get("source") == "local-dir" or cfg.get("file"):
        return str(cfg.get("file"))
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    return str(cfg.get("url") or "?")


@contextlib.contextmanager
def _checked_load_state_dict(model: nn.Module, describe: Callable[[], str]) -> Iterator[None]:
    """Shadow ``model.load_state_dict`` (instance attribute) with a version that raises one CheckpointError."""
    bound = type(model).load_state_dict

    def load_state_dict(state_dict, strict: bool = True, assign: bool = False):
        problem = describe_mismatch(model, state_dict, strict=strict)
        if problem:
            raise CheckpointError(f"cannot load {describe()}: {problem}.")
        return bound(model, state_dict, strict=strict, assign=assign)

    object.__setattr__(model, "load_state_dict", load_state_dict)
    try:
        yield
    finally:
        model.__dict__.pop("load_state_dict", None)


def load_pretrained(
    model: nn.Module,
    pretrained_cfg: Mapping[str, Any] | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    filter_fn: Callable | None = None,
    strict: bool = True,
    cache_dir: str | os.PathLike | None = None,
    *,
    _timm_load: Callable | None = None,
) -> None:
    """timm's ``load_pretrained`` for zoo models: verified URL fetch and one-sentence errors (module docstring)."""
    timm_load = _timm_load or _ORIGINAL.get("load_pretrained") or _timm_load_pretrained()
    cfg = dict(pretrained_cfg or getattr(model, "pretrained_cfg", None) or {})
    if not cfg:
        raise CheckpointError(
            f"{type(model).__name__} has no pretrained_cfg; cannot load pretrained weights."
        )
    arch = cfg.get("architecture") or type(model).__name__
    local: Path | None = None
    has_other_source = (
        cfg.get("source") in ("hf-hub", "local-dir")
        or cfg.get("state_dict") is not None
        or cfg.get("file")
        or (cfg.get("hf_hub_id") and _has_hf_hub())
    )
    if not has_other_source:
        if not cfg.get("url"):
            raise CheckpointError(
                f"{arch} has no pretrained weights; use pretrained=False, or pass "
                f"pretrained_cfg_overlay=dict(file='weights.pth') or dict(url='https://...')."
            )
        local = fetch(cfg, cache=cache_dir)
        if cfg.get("custom_load"):
            cfg.update(file=str(local))
        else:
            cfg.update(state_dict=_read_or_evict(local))
    elif cfg.get("file") and cfg.get("source") != "local-dir" and not Path(cfg["file"]).is_file():
        raise CheckpointError(f"the checkpoint file {cfg['file']} given for {arch} does not exist.")
    elif cfg.get("source") == "local-dir" and not Path(str(cfg.get("file"))).is_dir():
        raise CheckpointError(f"the local-dir weights folder {cfg.get('file')} for {arch} does not exist.")

    where = _describe_source(cfg, local)

    def describe() -> str:
        return f"the checkpoint {where} into {_model_label(model, cfg)}"

    stage = ["read"]
    wrapped_filter = None
    if filter_fn is not None:

        def wrapped_filter(state_dict, model_arg=None):
            stage[0] = "filter"
            try:
                out = filter_fn(state_dict, model_arg) if model_arg is not None else filter_fn(state_dict)
            except VisionZooError:
                raise
            except Exception as e:  # noqa: BLE001 -- a filter failing on a foreign checkpoint is a user error
                raise CheckpointError(
                    f"cannot convert {describe()}: its checkpoint_filter_fn failed with "
                    f"{type(e).__name__}: {_one_line(e)}."
                ) from None
            stage[0] = "adapt"
            return out

    try:
        with _checked_load_state_dict(model, describe):
            timm_load(
                model,
                pretrained_cfg=cfg,
                num_classes=num_classes,
                in_chans=in_chans,
                filter_fn=wrapped_filter,
                strict=strict,
                cache_dir=cache_dir,
            )
    except VisionZooError:
        raise
    except Exception as e:  # noqa: BLE001 -- turned into one sentence; the original is chained for --debug
        if stage[0] == "read":
            raise CheckpointError(f"could not read {describe()}: {type(e).__name__}: {_one_line(e)}.") from e
        raise CheckpointError(f"cannot load {describe()}: {_one_line(e)}.") from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(e).__name__)


def _read_or_evict(path: Path) -> dict[str, Any]:
    """Read a cached file; an unreadable one is removed from the cache so the next call downloads it again."""
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        raise CheckpointError(f"{str(e).rstrip('.')}; the cached file was deleted.") from None


def _has_hf_hub() -> bool:
    try:
        from timm.models._hub import has_hf_hub

        return has_hf_hub(necessary=False)
    except ImportError:  # pragma: no cover
        return False


# --------------------------------------------------------------------------------------------- timm hook
_ORIGINAL: dict[str, Callable] = {}


def _timm_load_pretrained() -> Callable:
    from timm.models import _builder

    return getattr(_builder.load_pretrained, "__wrapped__", _builder.load_pretrained)


def _is_zoo_architecture(arch: str | None) -> bool:
    if not arch:
        return False
    from .models._registry import zoo_model_names

    return arch.split(".")[0] in zoo_model_names()


def install() -> None:
    """Route timm's ``load_pretrained`` through :func:`load_pretrained` for zoo architectures (idempotent)."""
    from timm.models import _builder

    current = _builder.load_pretrained
    if getattr(current, "_visionzoo_hook", False):
        return
    _ORIGINAL["load_pretrained"] = current

    @functools.wraps(current)
    def hooked_load_pretrained(
        model, pretrained_cfg=None, num_classes=1000, in_chans=3, filter_fn=None, strict=True, cache_dir=None
    ):
        cfg = pretrained_cfg or getattr(model, "pretrained_cfg", None) or {}
        if not _is_zoo_architecture(cfg.get("architecture")):
            return current(
                model,
                pretrained_cfg=pretrained_cfg,
                num_classes=num_classes,
                in_chans=in_chans,
                filter_fn=filter_fn,
                strict=strict,
                cache_dir=cache_dir,
            )
        return load_pretrained(
            model,
            pretrained_cfg=cfg,
            num_classes=num_classes,
            in_chans=in_chans,
            filter_fn=filter_fn,
            strict=strict,
            cache_dir=cache_dir,
            _timm_load=current,
        )

    hooked_load_pretrained._visionzoo_hook = True  # type: ignore[attr-defined]
    _builder.load_pretrained = hooked_load_pretrained


# --------------------------------------------------------------------------------------------- saving
def _unwrap_model(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if isinstance(inner, nn.Module) and hasattr(inner, "pretrained_cfg"):
            model = inner
            continue
        return model


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    model_args: dict[str, Any] | None = None,
    label_names: list[str] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (timm's ``save_for_hf`` layout) into ``save_directory``.

    ``timm.create_model('local-dir:<dir>', pretrained=True)`` then rebuilds and loads the model (after
    ``import visionzoo``). Constructor kwargs come from what ``timm.create_model`` recorded (``model._model_args``);
    pass ``model_args`` for a model built another way. With ``check`` the architecture is rebuilt on the meta
    device from the written config and compared key by key, so a config that would not load is caught here.
    """
    from timm.models._hub import save_for_hf

    model = _unwrap_model(model)
    if not getattr(model, "pretrained_cfg", None) or not model.pretrained_cfg.get("architecture"):
        raise ConfigError(
            f"save_pretrained needs a model built by timm.create_model (it has no pretrained_cfg): "
            f"got a {type(model).__name__}."
        )
    save_directory = Path(save_directory)
    model_config = {"label_names": list(label_names)} if label_names else None
    save_for_hf(
        model, str(save_directory), model_config=model_config, model_args=model_args, safe_serialization=True
    )
    if check:
        _check_saved(model, save_directory)
    return save_directory


def _check_saved(model: nn.Module, directory: Path) -> None:
    import timm
    from timm.models._hub import load_model_config_from_path

    _, arch, args = load_model_config_from_path(directory)
    try:
        rebuilt = timm.create_model(arch, pretrained=False, device="meta", **args)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"the config.json written to {directory} does not rebuild {arch} ({type(e).__name__}: {_one_line(e)}); "
            f"pass model_args=dict(...) with the constructor kwargs."
        ) from None
    problem = describe_mismatch(rebuilt, model.state_dict(), strict=True)
    if problem:
        raise ConfigError(
            f"the config.json written to {directory} rebuilds a different {arch} ({problem}); pass "
            f"model_args=dict(...) with the kwargs the model was created with."
        )


# --------------------------------------------------------------------------------------------- any checkpoint
def _strip_prefix(state: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _run_config(path: Path) -> dict[str, Any]:
    """``model.name``, ``model.kwargs`` and ``data.image_size`` of the training run a Lightning checkpoint belongs
    to, when its ``.hydra/config.yaml`` sits beside the ``checkpoints`` folder (``<run>/checkpoints/*.ckpt``)."""
    config = path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        model = OmegaConf.to_container(cfg.get("model", {}), resolve=True) or {}
        size = OmegaConf.select(cfg, "data.image_size", default=None)
    except Exception:  # noqa: BLE001 -- unresolvable interpolations: fall back to the caller's kwargs
        return {}
    kwargs = dict(model.get("kwargs") or {})
    kwargs.pop("pretrained", None)
    return {
        "name": model.get("name"),
        "kwargs": kwargs,
        "image_size": size if isinstance(size, int) else None,
    }


def model_from_checkpoint(name: str, checkpoint: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Build ``name`` and load our own trained weights into it, through timm's pretrained path (so the model's
    ``checkpoint_filter_fn``, stem/head adaptation and :func:`load_pretrained`'s one-sentence errors apply).

    ``checkpoint`` may be a :func:`save_pretrained` / ``push_to_hf_hub`` folder (``config.json`` + weights), a
    Lightning ``.ckpt`` from ``train.py`` (``state_dict`` with the task's ``model.`` prefix; constructor kwargs
    and the training image size are read from the run's ``.hydra/config.yaml`` next to ``checkpoints/``), or any
    state_dict file (``.pth`` / ``.safetensors``, official layouts included). ``num_classes`` defaults to the
    checkpoint's classifier size. Explicit ``kwargs`` win.
    """
    import timm

    path = Path(checkpoint)
    base = name.split(".")[0]
    image_size = None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} is a folder without config.json; expected a save_pretrained() folder."
            )
        model = timm.create_model(f"local-dir:{path}", pretrained=True, **kwargs)
        arch = (model.pretrained_cfg.get("architecture") or "").split(".")[0]
        if arch != base:
            raise ConfigError(f"{path} holds a {arch} model, not {base}.")
        return model
    raw = read_checkpoint(path)
    state: Mapping[str, Any] = raw
    if (
        isinstance(raw, Mapping)
        and isinstance(raw.get("state_dict"), Mapping)
        and "pytorch-lightning_version" in raw
    ):
        state = raw["state_dict"]
        run = _run_config(path)
        run_name, run_kwargs, image_size = (
            run.get("name"),
            dict(run.get("kwargs") or {}),
            run.get("image_size"),
        )
        if run_name and run_name.split(".")[0] != base:
            raise ConfigError(f"{path} was trained as {run_name} (its run config says so), not {base}.")
        hparams = raw.get("hyper_parameters") or {}
        if isinstance(hparams.get("num_classes"), int):
            run_kwargs.setdefault("num_classes", hparams["num_classes"])
        kwargs = {**run_kwargs, **kwargs}
        state = _strip_prefix(_strip_prefix(state, "model."), "_orig_mod.")
    state = dict(state)
    cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(base)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    if "num_classes" not in kwargs:
        classifier = cfg_dict.get("classifier")
        classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        inner = state.get("model") if isinstance(state.get("model"), Mapping) else state
        for c in classifiers:
            weight = inner.get(f"{c}.weight") if isinstance(inner, Mapping) else None
            if torch.is_tensor(weight):
                kwargs["num_classes"] = int(weight.shape[0])
                break
    overlay = dict(state_dict=state)
    if "num_classes" in kwargs:
        overlay["num_classes"] = kwargs["num_classes"]
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
    model.pretrained_cfg["file"] = str(path)
    if image_size:  # the run trained at its data config's size: predict at that size too
        channels = (model.pretrained_cfg.get("input_size") or (3,))[0]
        model.pretrained_cfg["input_size"] = (channels, image_size, image_size)
    return model
