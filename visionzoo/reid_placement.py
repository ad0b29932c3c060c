"""Where should the Re-ID attention blocks go? Accuracy vs inference latency per placement.

Eisenbach et al. (ICRA 2023, arXiv 2302.14574) answer this by architecture search: train one network per
placement of the block, then keep the placements on the speed/accuracy Pareto front. This module is that loop
around our runner, in two steps::

    # 1. train one model per placement (a Hydra multirun; print the command for a named search space)
    python -m visionzoo.reid_placement sweep --space stage-ends -- data.root=/data/market1501 trainer=gpu
    python train.py -m model=reid_resnet50 data=market1501 'model.attn_positions=[],[layer1.2],...' ...

    # 2. tabulate: mAP / rank-1 of each run (its metrics.json) next to the latency of its network, measured here
    python -m visionzoo.reid_placement table logs/<task_name>/multiruns/<time> --out placement/

Latency is the deployment forward (eval mode, ``torch.inference_mode``, embedding only: no classifier) at
``--batch-size`` x 3 x ``--input-size`` on this machine, every placement timed interleaved with the plain
ResNet-50 (``attn_positions=[]``, always added) for ``--rounds`` rounds; the overhead is the median over rounds of
``t(placement) / t(plain) - 1`` from back-to-back calls, which a busy neighbour slows alike. ``table`` writes
``placement.md``, ``placement.csv`` and ``placement.png`` (mAP vs latency overhead, Pareto front drawn).

Protocol: the placements are **selected on validation** -- the Pareto front is computed from each run's ``val/*``
(the identity-disjoint hold-out of the training identities, see :mod:`visionzoo.datamodules.reid`) -- and the test
set (query + gallery) is **reported once**, for the selected placements only: the table's test columns are filled
for the front and left empty for the others, so the test set never chooses a placement.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .bench import interleaved
from .errors import ConfigError

__all__ = [
    "PlacementRun",
    "collect_runs",
    "measure_latency",
    "pareto_front",
    "placement_label",
    "search_space",
    "sweep_command",
    "write_report",
]

RESNET50_LAYERS: tuple[int, ...] = (3, 4, 6, 3)
SPACES = ("stage-ends", "singles", "stage-all", "end-combos")
# model kwargs that do not change the network's forward cost (besides the attention blocks themselves)
_NOT_ARCHITECTURE = ("attn_positions", "attn_block", "pretrained", "pretrained_cfg_overlay", "drop_rate")


# ------------------------------------------------------------------------------------------------ search spaces
def search_space(name: str, layers: Sequence[int] = RESNET50_LAYERS) -> list[list[str]]:
    """Placements (lists of ``"layerN.j"``) of a named search space; the plain network ``[]`` comes first.

    * ``stage-ends``: one block after the last bottleneck of one stage (4 + 1 runs for ResNet-50);
    * ``singles``: one block after any one bottleneck (16 + 1);
    * ``stage-all``: a block after every bottleneck of one stage (4 + 1);
    * ``end-combos``: every subset of the stage ends (2^4 = 16 runs, the plain one included).
    """
    ends = [f"layer{s + 1}.{n - 1}" for s, n in enumerate(layers)]
    if name == "stage-ends":
        return [[]] + [[e] for e in ends]
    if name == "singles":
        return [[]] + [[f"layer{s + 1}.{j}"] for s, n in enumerate(layers) for j in range(n)]
    if name == "stage-all":
        return [[]] + [[f"layer{s + 1}.{j}" for j in range(n)] for s, n in enumerate(layers)]
    if name == "end-combos":
        return [[e for i, e in enumerate(ends) if mask >> i & 1] for mask in range(2 ** len(ends))]
    raise ConfigError(f"unknown search space {name!r}: expected one of {', '.join(SPACES)}.")


def sweep_command(
    placements: Iterable[Sequence[str]], overrides: Sequence[str] = (), data: str = "market1501"
) -> str:
    """The ``python train.py -m ...`` line that trains one model per placement."""
    values = ",".join("[" + ",".join(p) + "]" for p in placements)
    args = [
        "python",
        "train.py",
        "-m",
        "model=reid_resnet50",
        f"data={data}",
        f"model.attn_positions={values}",
    ]
    return " ".join(shlex.quote(a) for a in [*args, *overrides])


def placement_label(positions: Sequence[Sequence[int]] | Sequence[str]) -> str:
    """``[(1, 3), (2, 5)]`` -> ``"layer2.3+layer3.5"``; ``[]`` -> ``"none"``."""
    names = [p if isinstance(p, str) else f"layer{int(p[0]) + 1}.{int(p[1])}" for p in positions]
    return "+".join(names) if names else "none"


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class PlacementRun:
    """One network of the search: its model settings, its scores (mean over runs) and, later, its latency."""

    model_name: str
    model_kwargs: dict[str, Any]
    positions: list[tuple[int, int]]
    attn_block: str
    metrics: dict[str, float] = field(default_factory=dict)  # validation scores: what the search selects on
    test_metrics: dict[str, float] = field(
        default_factory=dict
    )  # test scores: reported for the selected only
    runs: list[str] = field(default_factory=list)
    params: int | None = None
    latency_ms: float | None = None
    overhead: float | None = None

    @property
    def label(self) -> str:
        return placement_label(self.positions)

    @property
    def network(self) -> tuple[str, str]:
        """The network without its attention blocks: runs with the same ``network`` share one plain reference."""
        kwargs = {k: v for k, v in self.model_kwargs.items() if k not in _NOT_ARCHITECTURE}
        return self.model_name, json.dumps(kwargs, sort_keys=True, default=str)

    @property
    def key(self) -> tuple:
        return *self.network, self.attn_block if self.positions else "-", tuple(self.positions)


def _normalised_positions(model_name: str, kwargs: dict[str, Any]) -> list[tuple[int, int]]:
    import timm

    from .models.reid import DEFAULT_ATTN_POSITIONS, parse_attn_positions

    layers = kwargs.get("layers")
    if layers is None:  # the registered variant's depth: build it on the meta device to read it
        with torch.device("meta"):
            model = timm.create_model(model_name, **{**kwargs, "pretrained": False, "num_classes": 0})
        return list(model.attn_positions)
    return parse_attn_positions(kwargs.get("attn_positions", DEFAULT_ATTN_POSITIONS), layers)


def _scores(raw: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        k[len(prefix) :]: float(v)
        for k, v in raw.items()
        if k.startswith(prefix) and k.count("/") == 1 and isinstance(v, int | float)
    }


def collect_runs(
    multirun_dir: str | Path, select_prefix: str = "val/", report_prefix: str = "test/"
) -> list[PlacementRun]:
    """One :class:`PlacementRun` per distinct network in a Hydra multirun folder (runs of the same network, e.g.
    several seeds, are averaged). A job counts when it has ``.hydra/config.yaml`` and a ``metrics.json`` with
    ``<select_prefix>mAP``: those validation scores become ``metrics`` (what the search selects on), the
    ``report_prefix`` ones ``test_metrics`` (reported for the selected placements only)."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ConfigError(
            f"multirun folder '{root}' does not exist: pass the folder `python train.py -m` wrote."
        )
    jobs = sorted(p.parent.parent for p in root.glob("**/.hydra/config.yaml"))
    groups: dict[tuple, PlacementRun] = {}
    per_group: dict[tuple, list[dict[str, float]]] = {}
    per_group_test: dict[tuple, list[dict[str, float]]] = {}
    without_val: list[str] = []
    for job in jobs:
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            continue
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        kwargs = dict(model_cfg.get("kwargs") or {})
        name = str(model_cfg["name"])
        raw = json.loads(metrics_file.read_text())
        if f"{select_prefix}mAP" not in raw:
            if f"{report_prefix}mAP" in raw:
                without_val.append(str(job))
            continue
        scores = _scores(raw, select_prefix)
        run = PlacementRun(
            model_name=name,
            model_kwargs=kwargs,
            positions=_normalised_positions(name, kwargs),
            attn_block=str(kwargs.get("attn_block", "lab")),
        )
        groups.setdefault(run.key, run).runs.append(str(job))
        per_group.setdefault(run.key, []).append(scores)
        per_group_test.setdefault(run.key, []).append(_scores(raw, report_prefix))
    if not groups and without_val:
        raise ConfigError(
            f"the runs under '{root}' (e.g. '{without_val[0]}') have {report_prefix}mAP but no {select_prefix}mAP: "
            "the placement search selects on validation, so train with a validation split (data.val_id_fraction > 0)."
        )
    if not groups:
        raise ConfigError(
            f"no finished Re-ID run under '{root}': expected job folders with .hydra/config.yaml and a metrics.json "
            f"holding {select_prefix}mAP."
        )
    for key, run in groups.items():
        run.metrics = _mean_scores(per_group[key])
        run.test_metrics = _mean_scores(per_group_test[key])
    return sorted(groups.values(), key=lambda r: (len(r.positions), r.positions))


def _mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the runs that all have it."""
    names = set.intersection(*(set(s) for s in scores)) if scores else set()
    return {m: statistics.fmean(s[m] for s in scores) for m in sorted(names)}


# ------------------------------------------------------------------------------------------------ latency
def _build_for_latency(run: PlacementRun) -> torch.nn.Module:
    import timm

    import visionzoo  # noqa: F401  (registers the zoo models)

    kwargs = {**run.model_kwargs, "pretrained": False, "num_classes": 0}
    kwargs.pop("pretrained_cfg_overlay", None)
    return timm.create_model(run.model_name, **kwargs).eval()


def measure_latency(
    runs: list[PlacementRun],
    batch_size: int = 32,
    input_size: Sequence[int] = (256, 128),
    rounds: int = 5,
    threads: int | None = None,
) -> PlacementRun:
    """Time every network of ``runs`` interleaved with its plain counterpart; fill ``latency_ms``, ``overhead`` and
    ``params`` in place. Returns the plain network's entry (added to ``runs`` when the search had none)."""
    if threads:
        torch.set_num_threads(threads)
    ref = runs[0]
    if any(r.network != ref.network for r in runs):
        raise ConfigError(
            "the runs hold different base networks (model name or kwargs besides the attention blocks differ): "
            "tabulate one network's placement search at a time."
        )
    plain = next((r for r in runs if not r.positions), None)
    if plain is None:
        plain = PlacementRun(ref.model_name, {**ref.model_kwargs, "attn_positions": []}, [], ref.attn_block)
        runs.insert(0, plain)
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, *input_size)
    models = {r.label + f"#{i}": _build_for_latency(r) for i, r in enumerate(runs)}
    for r, m in zip(runs, models.values(), strict=True):
        r.params = sum(p.numel() for p in m.parameters())

    def call(m: torch.nn.Module):
        return lambda: m(x)

    with torch.inference_mode():
        res = interleaved({k: call(m) for k, m in models.items()}, rounds=rounds, warmup=1)
    base = res[next(k for k, r in zip(models, runs, strict=True) if r is plain)]["all"]
    for r, k in zip(runs, models, strict=True):
        ts = res[k]["all"]
        r.latency_ms = res[k]["median"] * 1e3
        r.overhead = statistics.median(t / b - 1.0 for t, b in zip(ts, base, strict=True))
    return plain


# ------------------------------------------------------------------------------------------------ report
def pareto_front(runs: Sequence[PlacementRun], metric: str = "mAP") -> list[PlacementRun]:
    """Runs no other run beats on both latency overhead (lower) and ``metric`` (higher), by ascending latency."""
    scored = [r for r in runs if r.overhead is not None and metric in r.metrics]
    front = []
    for r in sorted(scored, key=lambda r: (r.overhead, -r.metrics[metric])):
        if not front or r.metrics[metric] > front[-1].metrics[metric]:
            front.append(r)
    return front


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def write_report(runs: list[PlacementRun], out_dir: str | Path, title: str = "", metric: str = "mAP") -> Path:
    """``placement.md`` (table), ``placement.csv`` and ``placement.png`` (scatter + Pareto front) in ``out_dir``;
    returns the Markdown file. The front is chosen on the validation ``metric``; test scores are shown for the
    front's placements only (module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    front = {id(r) for r in pareto_front(runs, metric)}
    header = [
        "placement",
        "block",
        "runs",
        "params (M)",
        "latency (ms)",
        "overhead (%)",
        "val mAP (%)",
        "val rank-1 (%)",
        "test mAP (%)",
        "test rank-1 (%)",
    ]
    rows = []
    for r in sorted(runs, key=lambda r: (r.overhead is None, r.overhead or 0.0)):
        test = r.test_metrics if id(r) in front else {}
        rows.append(
            [
                r.label + (" *" if id(r) in front else ""),
                r.attn_block if r.positions else "-",
                str(len(r.runs)),
                "-" if r.params is None else f"{r.params / 1e6:.3f}",
                "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                "-" if r.overhead is None else f"{100 * r.overhead:+.1f}",
                _pct(r.metrics.get("mAP")),
                _pct(r.metrics.get("rank1")),
                _pct(test.get("mAP")),
                _pct(test.get("rank1")),
            ]
        )
    lines = [f"# {title or 'Attention placement search'}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"`*` = on the Pareto front (no other placement is both faster and better in validation {metric}): the "
        "placements the search selects, on the validation identities. Test (query + gallery) scores are reported "
        "for those only, once; `-` elsewhere, so the test set chooses nothing.",
    ]
    md = out / "placement.md"
    md.write_text("\n".join(lines) + "\n")
    with open(out / "placement.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["placement", "block", "runs", "params", "latency_ms", "overhead", "selected"]
            + ["val_mAP", "val_rank1", "test_mAP", "test_rank1"]
        )
        for r in runs:
            test = r.test_metrics if id(r) in front else {}
            writer.writerow(
                [r.label, r.attn_block, len(r.runs), r.params, r.latency_ms, r.overhead, id(r) in front]
                + [r.metrics.get("mAP"), r.metrics.get("rank1"), test.get("mAP"), test.get("rank1")]
            )
    _plot(runs, out / "placement.png", metric)
    return md


def _plot(runs: Sequence[PlacementRun], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in runs if r.overhead is not None and metric in r.metrics]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(
        [100 * r.overhead for r in scored], [100 * r.metrics[metric] for r in scored], color="tab:blue"
    )
    for r in scored:
        ax.annotate(
            r.label,
            (100 * r.overhead, 100 * r.metrics[metric]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    front = pareto_front(scored, metric)
    if front:
        ax.plot(
            [100 * r.overhead for r in front],
            [100 * r.metrics[metric] for r in front],
            color="tab:red",
            label="Pareto front",
            lw=1,
        )
        ax.legend(loc="lower right")
    ax.set_xlabel("inference latency overhead vs plain ResNet (%)")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m visionzoo.reid_placement", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sw = sub.add_parser("sweep", help="print the multirun command for a search space")
    sw.add_argument("--space", choices=SPACES, default="stage-ends")
    sw.add_argument("--layers", type=int, nargs="+", default=list(RESNET50_LAYERS))
    sw.add_argument("--data", default="market1501")
    sw.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    tb = sub.add_parser("table", help="tabulate accuracy vs latency of a finished multirun")
    tb.add_argument("multirun_dir")
    tb.add_argument("--out", default=None, help="output folder (default: the multirun folder)")
    tb.add_argument("--batch-size", type=int, default=32)
    tb.add_argument("--input-size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    tb.add_argument("--rounds", type=int, default=5)
    tb.add_argument("--threads", type=int, default=None)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "sweep":
            print(sweep_command(search_space(args.space, args.layers), args.overrides, args.data))
            return 0
        runs = collect_runs(args.multirun_dir)
        measure_latency(runs, args.batch_size, args.input_size, args.rounds, args.threads)
        md = write_report(
            runs, args.out or args.multirun_dir, title=f"Attention placement search: {args.multirun_dir}"
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"table, csv and plot: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
