"""Benchmark the Re-ID attention blocks on CPU: what each adds to ResNet-50's inference latency.

Usage::

    python benchmarks/reid.py                              # print the results
    python benchmarks/reid.py --write docs/benchmarks.md   # also (re)write the "## Re-ID attention blocks" section

The issue's goal: our lightweight block ("lab") adds no more than ~5% inference latency to ResNet-50 at 256x128,
batch 32, CPU, compared with SE, CBAM, ECA and non-local at the same positions. Every network is
``reid_resnet50_lab`` as trained (last stride 1, BNNeck), deployment forward (eval, ``torch.inference_mode``,
embedding only), one process, ``torch.set_num_threads(--threads)``; all candidates are interleaved (A B C ... A B C
...) for ``--rounds`` rounds after one warm-up call each. The overhead of a candidate is the median over rounds of
``t(candidate) / t(plain) - 1`` from the same round (back-to-back calls see the same machine state); latencies are
medians. Also reported: parameters and forward GMACs per image (``torch.utils.flop_counter``: convolutions and
matmuls only, so the blocks' elementwise gates do not show there, only in the time). Arguments this script does not
know (e.g. other benchmarks' from ``benchmarks/run_all.py``) are ignored.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
from _timing import cpu_model, interleaved, publish  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import visionzoo  # noqa: E402, F401  (registers the models)
from visionzoo.models.layers.reid_attention import create_reid_attn  # noqa: E402
from visionzoo.reid_placement import placement_label  # noqa: E402

SECTION = "## Re-ID attention blocks"
DEFAULT_POSITIONS = ["layer2.3", "layer3.5"]
RESNET50_LAYERS = (3, 4, 6, 3)
ALL_POSITIONS = [f"layer{s + 1}.{j}" for s, n in enumerate(RESNET50_LAYERS) for j in range(n)]
BLOCKS = ("lab", "se", "cbam", "eca", "nonlocal")


def candidates(every: bool) -> dict[str, dict]:
    """name -> ``reid_resnet50_lab`` kwargs: the plain network, each block at our default positions and, with
    ``every``, lab / SE / CBAM after every bottleneck (the way SE-/CBAM-ResNets use them)."""
    cands = {"plain": dict(attn_positions=[])}
    for block in BLOCKS:
        cands[f"{block} @ {placement_label(DEFAULT_POSITIONS)}"] = dict(
            attn_block=block, attn_positions=DEFAULT_POSITIONS
        )
    if every:
        for block in ("lab", "se", "cbam"):
            cands[f"{block} @ every bottleneck (16)"] = dict(attn_block=block, attn_positions=ALL_POSITIONS)
    return cands


def build(kwargs: dict) -> torch.nn.Module:
    return timm.create_model("reid_resnet50_lab", num_classes=0, last_stride=1, bnneck=True, **kwargs).eval()


def gmacs(model: torch.nn.Module, size: tuple[int, int]) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.randn(1, 3, *size))
    return counter.get_total_flops() / 2e9


def paired_ratios(plain, cand, rounds: int) -> list[float]:
    """``t(cand) / t(plain)`` from back-to-back calls, order alternating per round (cancels slow drifts)."""
    plain(), cand()
    ratios = []
    for r in range(rounds):
        order = (plain, cand) if r % 2 == 0 else (cand, plain)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t0
        ratios.append(times[cand] / times[plain])
    return ratios


def stage_inputs(backbone: torch.nn.Module, batch: int, size: tuple[int, int]) -> list[torch.Tensor]:
    """The feature map after each of layer1..layer4 (what a block placed in that stage sees)."""
    with torch.inference_mode():
        return backbone.forward_intermediates(
            torch.randn(batch, 3, *size), indices=[1, 2, 3, 4], intermediates_only=True
        )


def block_costs(
    backbone: torch.nn.Module, batch: int, size: tuple[int, int], rounds: int
) -> dict[str, list[float]]:
    """Median seconds of each block alone on each stage's map (index 0..3), and of the stage's last bottleneck."""
    costs: dict[str, list[float]] = {name: [] for name in ("bottleneck", *BLOCKS)}
    for stage, x in enumerate(stage_inputs(backbone, batch, size)):
        cands = {"bottleneck": getattr(backbone, f"layer{stage + 1}")[-1]}
        for name in BLOCKS:
            blk = create_reid_attn(name, x.shape[1]).eval()
            if name == "lab":  # as trained: a non-zero residual scale (the time does not depend on it)
                torch.nn.init.constant_(blk.gamma, 0.1)
            cands[name] = blk
        with torch.inference_mode():
            res = interleaved({n: partial(m, x) for n, m in cands.items()}, rounds=rounds, warmup=1)
        for name in cands:
            costs[name].append(res[name]["median"])
    return costs


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, q2, q3


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (args.height, args.width)
    specs = candidates(every=not args.no_every)
    models = {name: build(kw) for name, kw in specs.items()}
    plain_model = models["plain"]
    x = torch.randn(args.batch, 3, *size)
    stage_of = {f"layer{s + 1}.{j}": s for s, n in enumerate(RESNET50_LAYERS) for j in range(n)}

    with torch.inference_mode():
        plain_time = interleaved({"plain": partial(plain_model, x)}, rounds=args.rounds, warmup=1)["plain"][
            "median"
        ]
    costs = block_costs(plain_model, args.batch, size, args.block_rounds)
    plain_params = sum(p.numel() for p in plain_model.parameters())
    rows = [
        f"| plain | {plain_params / 1e6:.3f} | {gmacs(plain_model, size):.3f} | {plain_time * 1e3:.0f} | "
        f"{args.batch / plain_time:.1f} | 0 | 0 |"
    ]
    print(rows[-1], flush=True)
    for name, kwargs in specs.items():
        if name == "plain":
            continue
        m = models[name]
        with torch.inference_mode():
            q1, q2, q3 = _quartiles(paired_ratios(partial(plain_model, x), partial(m, x), args.rounds))
        block = kwargs["attn_block"]
        added = sum(costs[block][stage_of[pos]] for pos in kwargs["attn_positions"])
        params = sum(p.numel() for p in m.parameters())
        rows.append(
            f"| {name} | {params / 1e6:.3f} (+{(params - plain_params) / 1e3:.1f} k) | {gmacs(m, size):.3f} | "
            f"{plain_time * q2 * 1e3:.0f} | {args.batch / (plain_time * q2):.1f} | "
            f"{100 * (q2 - 1):+.1f} [{100 * (q1 - 1):+.1f}, {100 * (q3 - 1):+.1f}] | {100 * added / plain_time:+.1f} |"
        )
        print(rows[-1], flush=True)
    block_rows = []
    for stage, x_stage in enumerate(stage_inputs(plain_model, 1, size)):
        c, h, w = x_stage.shape[1:]
        block_rows.append(
            f"| layer{stage + 1} ({c} x {h} x {w}) | "
            + " | ".join(f"{costs[n][stage] * 1e3:.1f}" for n in ("bottleneck", *BLOCKS))
            + " |"
        )
    cmd = "python benchmarks/reid.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("write", "no_every")
    )
    lines = [
        SECTION,
        "",
        f"`{cmd}{'' if not args.no_every else ' --no-every'}` -- {datetime.date.today().isoformat()}, "
        f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}.",
        "",
        "ResNet-50 Re-ID backbone (`reid_resnet50_lab`: last stride 1, BNNeck, embedding forward, eval,"
        f" `inference_mode`) at batch {args.batch} x 3 x {size[0]} x {size[1]}. Two measurements of what the"
        " blocks add:",
        "",
        f"* **measured**: each network against the plain one in {args.rounds} back-to-back pairs (order"
        " alternating), median of t(network) / t(plain) - 1 with the quartiles in brackets; on this shared"
        " machine a pair still differs by several percent, so small overheads are inside the noise;",
        "* **additive**: the blocks' own time (each block alone on the map it sees, median of"
        f" {args.block_rounds} interleaved rounds, table below) summed over the positions, over the plain network's"
        f" median latency ({args.rounds} calls) -- inserting a block changes nothing else, so this is the overhead"
        " without the noise of two whole-network timings.",
        "",
        "GMACs per image count convolutions and matmuls only (FlopCounterMode), so elementwise gates do not show.",
        "",
        "| network | params (M) | GMACs / image | latency (ms / batch) | images/s | measured overhead (%) |"
        " additive overhead (%) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Each block alone on the map after each stage, batch {args.batch} (ms, median of {args.block_rounds}"
        " interleaved rounds), next to that stage's last bottleneck:",
        "",
        "| stage (C x H x W) | bottleneck | lab | SE | CBAM | ECA | non-local |",
        "|---|---|---|---|---|---|---|",
        *block_rows,
        "",
        "`lab` is our block (visionzoo/models/layers/reid_attention.py; the paper's own block could not be read);"
        " SE, CBAM, ECA and the non-local block are timm's (`timm.layers.get_attn`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9, help="whole-network pairs per candidate")
    ap.add_argument("--block-rounds", type=int, default=15, help="interleaved rounds of the blocks alone")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-every", action="store_true", help="skip the every-bottleneck candidates")
    ap.add_argument("--write", default=None, help="markdown file whose Re-ID section to (re)write")
    args, _unknown = ap.parse_known_args(argv)
    text = run(args)
    publish(text, args.write)


if __name__ == "__main__":
    main()
