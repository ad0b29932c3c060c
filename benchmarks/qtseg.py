"""Benchmark QTSeg on CPU: visionzoo's ``qtseg`` vs the official code (tpnam0901/QTSeg), same weights.

Usage::

    python benchmarks/qtseg.py                                  # print the results
    python benchmarks/qtseg.py --official /path/to/QTSeg        # also time the official model, interleaved
    python benchmarks/qtseg.py --write docs/benchmarks.md       # also (re)write the "## QTSeg" section

Everything runs in one process with ``torch.set_num_threads(2)``: inference (``torch.inference_mode``, eval
mode) at batch 4 x 3 x 512 x 512, candidates interleaved (A B A B ...) for ``--rounds`` rounds after one warm-up
call each; medians are reported. The official model is built from its own ``src/`` (``configs.base.Config`` =
the ISIC / BUSI / BKAI / DSB2018 setting, ``encoder_pretrained`` cleared) and given our weights (the key names are
the same), and its logits are compared with ours. Also reported, at 512 x 512, batch 1:

* parameters;
* ``torch.utils.flop_counter.FlopCounterMode`` (counts matmul / conv multiply-adds, reported as GMACs);
* fvcore ``FlopCountAnalysis + ActivationCountAnalysis`` -- the official ``eval.py`` convention behind the paper's
  "2.60 G FLOPs" -- when fvcore is installed (it is not a visionzoo dependency).

FLOPs are counted with the explicit-softmax attention path (``fused_attn = False``), which the counters see.
Arguments this script does not know (e.g. BiFormer's, from ``benchmarks/run_all.py``) are ignored, and an
``--official`` path that is not a QTSeg checkout is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
from _timing import cpu_model, interleaved, peak_alloc_bytes, write_markdown_section  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import visionzoo  # noqa: E402, F401  (registers the models)
from visionzoo.models.qtseg import TokenAttention  # noqa: E402

MIB = 2**20
SECTION = "## QTSeg"


# ------------------------------------------------------------------------------------------------ official code
def official_src(path: str | None) -> str | None:
    """The ``src`` folder of a QTSeg checkout (``path`` or ``path/src``), or None when it is not one."""
    if not path:
        return None
    for cand in (os.path.join(path, "src"), path):
        if os.path.isfile(os.path.join(cand, "networks", "models.py")) and os.path.isfile(
            os.path.join(cand, "configs", "base.py")
        ):
            return os.path.abspath(cand)
    return None


def _git_rev(path: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", path, "log", "-1", "--format=commit %h (%cs)"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() or "commit unknown"
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown (not a git checkout)"


def load_official(src: str) -> torch.nn.Module:
    """``networks.models.QTSeg(configs.base.Config())`` from a checkout's ``src`` (its modules are top-level
    packages named ``configs`` / ``networks``, so ``src`` goes on ``sys.path``)."""
    if src not in sys.path:
        sys.path.insert(0, src)
    from configs.base import Config  # type: ignore[import-not-found]
    from networks.models import QTSeg as OfficialQTSeg  # type: ignore[import-not-found]

    cfg = Config()
    cfg.encoder_pretrained = ""  # weights come from ours
    cfg.decoder_pretrained = ""
    return OfficialQTSeg(cfg)


# ------------------------------------------------------------------------------------------------ counts
def explicit_attention(model: torch.nn.Module, enabled: bool = True) -> None:
    for m in model.modules():
        if isinstance(m, TokenAttention):
            m.fused_attn = not enabled


def flop_counter_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds counted by ``FlopCounterMode`` (it reports 2 FLOPs per MAC). Grad mode stays on: its module
    tracker needs it; nothing is backpropagated."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def fvcore_counts(model: torch.nn.Module, x: torch.Tensor) -> dict | None:
    """fvcore's FLOPs (one per multiply-add; also norms and upsampling) and activations, or None without fvcore."""
    try:
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
    except ImportError:
        return None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops = FlopCountAnalysis(model, (x,))
        acts = ActivationCountAnalysis(model, (x,))
        for analysis in (flops, acts):
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
        by_op = dict(flops.by_operator())
        return dict(flops=flops.total(), acts=acts.total(), by_op=by_op)


# ------------------------------------------------------------------------------------------------ timing
def _infer(model, x):
    def run():
        with torch.inference_mode():
            model(x)

    return run


def bench(official: str | None, batch: int, side: int, rounds: int) -> dict:
    torch.manual_seed(0)
    ours = timm.create_model("qtseg").eval()
    models = {"visionzoo": ours}
    notes = []
    src = official_src(official)
    if official and src is None:
        notes.append(f"`--official {official}` is not a QTSeg checkout (no src/networks/models.py): skipped")
    if src is not None:
        off = load_official(src).eval()
        off.load_state_dict(ours.state_dict(), strict=True)  # same key names, no conversion
        models["official"] = off
        notes.append(f"official code: `{src}`, {_git_rev(src)}")

    x1 = torch.randn(1, 3, side, side)
    result: dict = dict(batch=batch, side=side, rounds=rounds, notes=notes, models={})
    for name, model in models.items():
        row: dict = dict(params=sum(p.numel() for p in model.parameters()))
        if name == "visionzoo":
            explicit_attention(model)
        row["macs"] = flop_counter_macs(model, x1)
        row["fvcore"] = fvcore_counts(model, x1)
        if name == "visionzoo":
            explicit_attention(model, False)
        result["models"][name] = row

    x = torch.randn(batch, 3, side, side)
    with torch.inference_mode():
        logits = {name: (m(x) if name == "visionzoo" else m(x)[0]) for name, m in models.items()}
    if "official" in logits:
        result["max_abs_diff"] = (logits["visionzoo"] - logits["official"]).abs().max().item()
        result["max_abs_logit"] = logits["official"].abs().max().item()

    for name, model in models.items():
        print(f"peak memory {name} ...", flush=True)
        peak = peak_alloc_bytes(_infer(model, x))
        result["models"][name]["peak"] = peak
    print(f"timing {', '.join(models)}: batch {batch} x {side}px, {rounds} rounds ...", flush=True)
    times = interleaved({name: _infer(m, x) for name, m in models.items()}, rounds=rounds)
    for name, t in times.items():
        result["models"][name].update(median_s=t["median"], min_s=t["min"], all_s=t["all"])
    return result


# ------------------------------------------------------------------------------------------------ report
def _g(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v / 1e9:.4f}{unit}"


def _paired(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of ``slow_i / fast_i`` (the two calls of a round run back to back, so a slow phase of
    the shared machine mostly hits both)."""
    return statistics.median(a / b for a, b in zip(slow, fast))


def render(cmd: str, res: dict, env: dict) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    batch, side = res["batch"], res["side"]
    lines = [
        SECTION,
        "",
        "`qtseg` (`visionzoo/models/qtseg.py`) against the official model (`src/networks/models.py` of "
        "tpnam0901/QTSeg, built from its own `configs.base.Config`) with the same weights (identical key names), "
        f"CPU inference at batch {batch} x 3 x {side} x {side}, eval mode, `torch.inference_mode()`.",
        "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, `torch.set_num_threads(2)`, "
        f"torch {torch.__version__}, timm {timm.__version__}; a shared VM",
        f"- date: {now}; {res['rounds']} interleaved rounds after 1 warm-up call each; medians",
        f"- load average (1 min) at start / end: {env['load_start']:.2f} / {env['load_end']:.2f}; "
        f"whole benchmark wall time {env['wall_s'] / 60:.1f} min",
        "- peak memory: peak of torch's own CPU allocations during one inference call (profiler allocation "
        "events, relative to what was live before the call)",
    ]
    if max(env["load_start"], env["load_end"]) > 0.75 * (os.cpu_count() or 1):
        lines.append(
            "- other jobs shared the cores while this ran (see the load average): absolute times are not clean; "
            "the per-round paired ratio (both candidates run back to back) is the most robust number"
        )
    lines += [f"- note: {n}" for n in res["notes"]]
    lines += [
        "",
        "| impl | ms / batch (median) | img/s | all rounds (ms) | inference peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        rounds = ", ".join(f"{t * 1e3:.0f}" for t in row["all_s"])
        peak = "n/a" if row.get("peak") is None else f"{row['peak'] / MIB:,.0f}"
        lines.append(
            f"| {name} | {row['median_s'] * 1e3:,.0f} | {batch / row['median_s']:.2f} | {rounds} | {peak} |"
        )
    ours = res["models"]["visionzoo"]
    off = res["models"].get("official")
    if off is not None:
        lines += [
            "",
            f"Throughput ratio visionzoo / official: **{off['median_s'] / ours['median_s']:.2f}x** (ratio of the "
            f"medians; median of the per-round paired ratios {_paired(off['all_s'], ours['all_s']):.2f}x, "
            f"of the per-candidate best rounds {off['min_s'] / ours['min_s']:.2f}x); inference peak memory ratio "
            + (f"{ours['peak'] / off['peak']:.2f}." if ours.get("peak") and off.get("peak") else "n/a."),
            "",
            f"Max |logit difference| visionzoo vs official (same weights, batch {batch}): "
            f"{res['max_abs_diff']:.2e} (largest |logit| {res['max_abs_logit']:.3f}).",
        ]
    lines += [
        "",
        f"Counts at {side} x {side}, batch 1 (explicit-softmax attention so the counters see the attention matmuls):",
        "",
        "| impl | params | FlopCounterMode GMACs | fvcore FLOPs (G) | fvcore activations (G) | "
        "fvcore FLOPs + activations (G, the paper's convention) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        fv = row["fvcore"]
        fl, ac = (fv["flops"], fv["acts"]) if fv else (None, None)
        total = None if fv is None else fl + ac
        lines.append(
            f"| {name} | {row['params']:,} | {row['macs'] / 1e9:.4f} | {_g(fl)} | {_g(ac)} | {_g(total)} |"
        )
    if ours["fvcore"] is not None:
        ln = ours["fvcore"]["by_op"].get("layer_norm", 0)
        off_ln = off["fvcore"]["by_op"].get("layer_norm", 0) if off and off["fvcore"] else None
        extra = (
            f" (official: {off_ln / 1e6:.3f} M, its token LayerNorms only: its hand-written LayerNorm2d is "
            "mean / pow / sqrt, which fvcore does not count)"
            if off_ln is not None
            else ""
        )
        lines += [
            "",
            f"fvcore counts {ln / 1e9:.4f} G for `layer_norm` in visionzoo's model{extra}: our LayerNorm2d is "
            "`F.layer_norm` (5 FLOPs per element). Without it the fvcore totals are the same op for op; the paper "
            "reports 9.21 M parameters and 2.60 G FLOPs (fvcore FLOPs + activations, official `eval.py`).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument(
        "--official", default=None, help="path to a checkout of tpnam0901/QTSeg (or its src/)"
    )
    parser.add_argument(
        "--write", default=None, help=f"markdown file whose '{SECTION}' section is (re)written"
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring arguments for other benchmarks: {' '.join(unknown)}", flush=True)
    torch.set_num_threads(2)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in unknown]
    cmd = "python benchmarks/qtseg.py " + " ".join(shown)
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    res = bench(args.official, args.batch, args.side, args.rounds)
    env = dict(load_start=load_start, load_end=os.getloadavg()[0], wall_s=time.perf_counter() - t0)
    section = render(cmd.strip(), res, env)
    print(section)
    if args.write:
        write_markdown_section(args.write, section)
        print(f"wrote the '{SECTION}' section of {args.write}")


if __name__ == "__main__":
    main()
