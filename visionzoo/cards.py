"""Model cards: ``docs/models/<family>.md`` and the README model table, generated from metadata.

One YAML file per family, ``docs/models/meta/<family>.yaml``, holds what code cannot know: the paper, the
official code, what the paper reports (params, GMACs, accuracy, with the source), and the card's prose.
Everything code can know is measured when the cards are generated: parameters and GMACs
(:mod:`visionzoo.flops`, on the meta device, deterministic), weights URLs, pins, mirror file names and licences
(the registered ``pretrained_cfg``).

    python -m visionzoo.cards            # regenerate every card and the README table
    python -m visionzoo.cards --check    # exit 1 and name the stale files (tests/test_cards.py does the same)

Metadata schema (``docs/models/meta/biformer.yaml`` is the worked example)::

    family: BiFormer                       # display name; the card is docs/models/<yaml stem>.md
    task: classification                   # or segmentation
    paper: {title, authors, venue, id, url}
    code: {repo, license, commit}
    gmacs_note: fvcore                     # how the paper counted (shown in the column header)
    metrics_source: official README ...    # where the reported numbers come from
    variants:
      - model: biformer_tiny               # a registered zoo model
        params_paper: 13.1 M
        gmacs_paper: 2.2
        metrics: [{dataset: ImageNet-1k, metric: top-1, value: 81.4}]
    body: |                                # the card after the header and model table (markdown);
      ...{{ weights_table }}...            # tokens: {{ weights_table }}, {{ weights_notes }} (cfg notes)

The generated card starts with the family title, the paper/code line and the model table, then ``body``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["README_END", "README_START", "check", "load_metadata", "render", "write"]

README_START = "<!-- models:start -->"
README_END = "<!-- models:end -->"
_TOKENS = ("{{ weights_table }}", "{{ weights_notes }}")
_LICENSES = {
    "mit": "MIT",
    "apache-2.0": "Apache-2.0",
    "bsd-3-clause": "BSD-3-Clause",
    "agpl-3.0": "AGPL-3.0",
    "gpl-3.0": "GPL-3.0",
    "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "other": "other",
}


class CardError(ValueError):
    """Metadata that cannot produce a card (one sentence)."""


def repo_root() -> Path:
    """The checkout that holds ``docs/models/meta`` (cards are a repository feature, not a wheel one)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "docs" / "models" / "meta").is_dir():
        raise CardError(f"no docs/models/meta folder under {root}: run this from a visionzoo checkout.")
    return root


def load_metadata(root: Path) -> dict[str, dict[str, Any]]:
    """``{family file stem: metadata}`` for every ``docs/models/meta/*.yaml``, validated."""
    import timm
    import yaml

    import visionzoo  # noqa: F401  (registers the models)

    out = {}
    for path in sorted((root / "docs" / "models" / "meta").glob("*.yaml")):
        meta = yaml.safe_load(path.read_text()) or {}
        for key in ("family", "task", "paper", "code", "variants", "body"):
            if key not in meta:
                raise CardError(f"{path} lacks the '{key}' field.")
        for v in meta["variants"]:
            if not timm.is_model(v.get("model", "")):
                raise CardError(f"{path}: variant {v.get('model')!r} is not a registered model.")
        unknown = [t for t in _tokens_in(meta["body"]) if t not in _TOKENS]
        if unknown:
            raise CardError(f"{path}: unknown template tokens {unknown}; known: {list(_TOKENS)}.")
        out[path.stem] = meta
    return out


def _tokens_in(text: str) -> list[str]:
    import re

    return re.findall(r"\{\{[^}]*\}\}", text)


# --------------------------------------------------------------------------------------------- measuring
def _measure(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    from .flops import model_complexity

    out = {}
    for v in meta["variants"]:
        size = v.get("gmacs_input_size") or meta.get("gmacs_input_size")
        out[v["model"]] = model_complexity(v["model"], input_size=tuple(size) if size else None)
    return out


def _weights(model: str) -> list[dict[str, Any]]:
    import timm

    from .hub import weights_source

    rows = []
    for tagged in timm.list_pretrained(f"{model}.*"):
        cfg = timm.models.get_pretrained_cfg(tagged).to_dict()
        cfg.setdefault("architecture", model)
        row = {
            "name": tagged,
            "license": cfg.get("license"),
            "hf_hub_id": cfg.get("hf_hub_id"),
            "notes": cfg.get("notes"),
        }
        if cfg.get("url"):
            src = weights_source(cfg, cache="/")  # names only; the cache location does not matter here
            row.update(url=src.url, sha256=src.sha256, mirror_name=src.mirror_name, member=src.member)
        rows.append(row)
    return rows


def _license(value: str | None) -> str:
    return _LICENSES.get((value or "").lower(), value or "-")


# --------------------------------------------------------------------------------------------- rendering
def _metric_columns(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    cols: list[tuple[str, str]] = []
    for v in meta["variants"]:
        for m in v.get("metrics") or ():
            key = (m["dataset"], m["metric"])
            if key not in cols:
                cols.append(key)
    return cols


def _fmt_metric(value: Any) -> str:
    return "–" if value is None else str(value)


def _card(stem: str, meta: Mapping[str, Any], measured: Mapping[str, Mapping[str, Any]]) -> str:
    paper, code = meta["paper"], meta["code"]
    sizes = {tuple(measured[v["model"]]["input_size"][1:]) for v in meta["variants"]}
    size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "input"
    side = size.split("x")[0] if len(set(size.split("x"))) == 1 else size
    note = f"paper, {meta['gmacs_note']}" if meta.get("gmacs_note") else "paper"
    metric_cols = _metric_columns(meta)
    header = [
        "timm name",
        "params (ours, counted)",
        "params (paper)",
        f"GMACs @{side} (ours)",
        f"GMACs ({note})",
        *(f"{d} {m} (paper)" for d, m in metric_cols),
    ]
    lines = [
        f"<!-- generated by `python -m visionzoo.cards` from docs/models/meta/{stem}.yaml: edit that file -->",
        f"# {meta['family']}",
        "",
        f"*{paper['title']}*, " + ", ".join(str(paper[k]) for k in ("authors", "venue") if paper.get(k)),
        f"([{paper['id']}]({paper['url']})); official code {code['repo']} ({code['license']}), commit {code['commit']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for v in meta["variants"]:
        m = measured[v["model"]]
        values = {(x["dataset"], x["metric"]): x["value"] for x in v.get("metrics") or ()}
        row = [
            f"`{v['model']}`",
            f"{m['params']:,}",
            str(v.get("params_paper", "–")),
            f"{m['gmacs']:.2f}",
            _fmt_metric(v.get("gmacs_paper")),
            *(_fmt_metric(values.get(c)) for c in metric_cols),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if meta.get("metrics_source"):
        lines += ["", f"Reported numbers (paper columns): {' '.join(str(meta['metrics_source']).split())}."]
    body = meta["body"].rstrip("\n") + "\n"
    body = body.replace("{{ weights_table }}", _weights_table(meta).rstrip("\n"))
    body = body.replace("{{ weights_notes }}", _weights_notes(meta).rstrip("\n"))
    return "\n".join(lines) + "\n\n" + body


def _weights_table(meta: Mapping[str, Any]) -> str:
    lines = [
        "| weights | published file | SHA-256 | mirror file (`VISIONZOO_WEIGHTS_URL`) | licence |",
        "|---|---|---|---|---|",
    ]
    for v in meta["variants"]:
        for w in _weights(v["model"]):
            if w.get("url"):
                name = w["url"].rstrip("/").rsplit("/", 1)[-1] or w["url"]
                if w.get("member"):
                    name += f" → {w['member']}"
                published = f"[{name}]({w['url']})"
                sha = f"`{w['sha256'][:16]}…`" if w.get("sha256") else "not pinned"
                mirror = f"`{w['mirror_name']}`"
            else:
                published = f"hf-hub:{w['hf_hub_id']}" if w.get("hf_hub_id") else "–"
                sha, mirror = "–", "–"
            lines.append(f"| `{w['name']}` | {published} | {sha} | {mirror} | {_license(w['license'])} |")
    return "\n".join(lines) + "\n"


def _weights_notes(meta: Mapping[str, Any]) -> str:
    """The registered ``notes`` of every pretrained cfg of the family, one bullet each."""
    lines = []
    for v in meta["variants"]:
        for w in _weights(v["model"]):
            if w.get("notes"):
                lines.append(f"- `{w['name']}`: {' '.join(str(w['notes']).split())}")
    return "\n".join(lines) + "\n" if lines else "No notes.\n"


def _readme_table(metas: Mapping[str, Mapping[str, Any]], measured: Mapping[str, Mapping[str, Any]]) -> str:
    import timm

    lines = [
        README_START,
        "<!-- generated by `python -m visionzoo.cards` from docs/models/meta/*.yaml -->",
        "| model | family | task | params | GMACs (input) | reported (paper) | weights | licence | card |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stem, meta in metas.items():
        for v in meta["variants"]:
            m = measured[v["model"]]
            reported = (
                "; ".join(f"{x['dataset']} {x['metric']} {x['value']}" for x in v.get("metrics") or ()) or "–"
            )
            tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{v['model']}.*")]
            licences = sorted({_license(w["license"]) for w in _weights(v["model"])}) or ["–"]
            size = "x".join(map(str, m["input_size"][1:]))
            lines.append(
                f"| `{v['model']}` | {meta['family']} | {meta['task']} | {m['params'] / 1e6:.1f} M "
                f"| {m['gmacs']:.2f} ({size}) | {reported} | {', '.join(f'`{t}`' for t in tags) or '–'} "
                f"| {', '.join(licences)} | [{meta['family']}](docs/models/{stem}.md) |"
            )
    lines.append(README_END)
    return "\n".join(lines)


def _splice_readme(text: str, table: str) -> str:
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise CardError(
            f"README.md has no {README_START} ... {README_END} markers (add them under '## Models')."
        )
    return text[:start] + table + text[end + len(README_END) :]


def render(root: Path | None = None) -> dict[Path, str]:
    """``{path: generated text}`` for every card and README.md (nothing is written)."""
    root = root or repo_root()
    metas = load_metadata(root)
    measured: dict[str, dict[str, Any]] = {}
    files: dict[Path, str] = {}
    for stem, meta in metas.items():
        m = _measure(meta)
        measured.update(m)
        files[root / "docs" / "models" / f"{stem}.md"] = _card(stem, meta, m)
    readme = root / "README.md"
    files[readme] = _splice_readme(readme.read_text(), _readme_table(metas, measured))
    return files


def check(root: Path | None = None) -> list[Path]:
    """The generated files whose committed text differs from what the metadata generates."""
    return [p for p, text in render(root).items() if not p.is_file() or p.read_text() != text]


def write(root: Path | None = None) -> list[Path]:
    """Regenerate the cards and the README table; returns the files that changed."""
    changed = []
    for path, text in render(root).items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def uncovered(root: Path | None = None) -> list[str]:
    """Zoo models that no family metadata lists (they get no card and no README row)."""
    import visionzoo

    root = root or repo_root()
    listed = {v["model"] for meta in load_metadata(root).values() for v in meta["variants"]}
    return [n for n in visionzoo.list_models() if n not in listed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionzoo.cards", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    try:
        root = repo_root()
        if args.check:
            stale = check(root)
            for p in stale:
                print(f"stale: {p.relative_to(root)} (run python -m visionzoo.cards)")
            return 1 if stale else 0
        for p in write(root):
            print(f"wrote {p.relative_to(root)}")
        missing = uncovered(root)
        if missing:
            print(f"no card yet (add docs/models/meta/<family>.yaml): {', '.join(missing)}", file=sys.stderr)
        return 0
    except CardError as e:
        print(f"visionzoo.cards: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
