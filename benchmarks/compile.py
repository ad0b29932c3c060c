"""Inductor ``torch.compile`` on CPU per family: compile time and inference speed-up over eager, full configs.

Usage::

    python benchmarks/compile.py                              # print the table
    python benchmarks/compile.py --write docs/benchmarks.md   # also (re)write the "## torch.compile" section

One model per family at its registered (full) size and its pretrained cfg's input size, eval mode,
``torch.inference_mode``, ``torch.set_num_threads(--threads)``. Compile time = the first call of
``torch.compile(model)`` (default inductor backend; tracing, lowering and C++ kernel builds) minus one eager call,
with a fresh dynamo state and inductor's on-disk cache pointed at an empty folder, so nothing is reused from earlier
runs. Then eager and compiled calls are interleaved (A B A B ...) for ``--rounds`` rounds; the speed-up is the
median over rounds of ``t(eager) / t(compiled)`` from the same round. Outputs are compared (relative error).
Arguments this script does not know (e.g. other benchmarks' from ``benchmarks/run_all.py``) are ignored.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
from _timing import cpu_model, interleaved, publish  # noqa: E402

import visionzoo  # noqa: E402, F401  (registers the models)

# (model, batch): one per family, at the registered size and the cfg's input size
CASES = [
    ("biformer_tiny", 8),
    ("sparsifiner_deit_small", 8),
    ("vit_small_llm", 8),
    ("reid_resnet50_lab", 32),
    ("qtseg", 4),
    ("herseg", 1),
]


def measure(name: str, batch: int, rounds: int) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    x = torch.randn(batch, *size)
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = model(x)
        eager_once = time.perf_counter() - t0
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        out = compiled(x)
        first = time.perf_counter() - t0
        rel = ((out - ref).double().norm() / ref.double().norm()).item()
        res = interleaved(
            {"eager": lambda: model(x), "compiled": lambda: compiled(x)}, rounds=rounds, warmup=1
        )
    ratios = [e / c for e, c in zip(res["eager"]["all"], res["compiled"]["all"])]
    return dict(
        name=name,
        batch=batch,
        size=f"{size[1]}x{size[2]}",
        compile_s=first - eager_once,
        eager_ms=res["eager"]["median"] * 1e3,
        compiled_ms=res["compiled"]["median"] * 1e3,
        speedup=statistics.median(ratios),
        spread=(min(ratios), max(ratios)),
        rel=rel,
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="model names to run (default: one per family)")
    parser.add_argument("--write", metavar="MARKDOWN", help="(re)write this script's section of that file")
    args, _ = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="visionzoo-inductor-")
    load = os.getloadavg()[0]
    rows = []
    for name, batch in CASES:
        if args.only and name not in args.only:
            continue
        r = measure(name, batch, args.rounds)
        print(
            f"{name}: compile {r['compile_s']:.1f} s, eager {r['eager_ms']:.1f} ms, compiled "
            f"{r['compiled_ms']:.1f} ms, speed-up {r['speedup']:.2f}x, rel err {r['rel']:.1e}",
            flush=True,
        )
        rows.append(r)
    lines = [
        "## torch.compile",
        "",
        f"`python benchmarks/compile.py --write docs/benchmarks.md` on {cpu_model()}, {args.threads} threads, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}, {args.rounds} interleaved rounds after "
        f"one warm-up, load average {load:.1f} at the start (1-minute, 2-core machine). Inductor (the default "
        "backend), inference, full-size models at their cfg input size; compile time = first compiled call minus "
        "one eager call, with an empty inductor cache; speed-up = median over rounds of eager / compiled time in "
        "the same round (min-max over rounds in brackets).",
        "",
        "| model | batch x input | compile time | eager | compiled | speed-up | rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {r['batch']} x {r['size']} | {r['compile_s']:.0f} s | {r['eager_ms']:.0f} ms | "
            f"{r['compiled_ms']:.0f} ms | {r['speedup']:.2f}x [{r['spread'][0]:.2f}-{r['spread'][1]:.2f}] | "
            f"{r['rel']:.1e} |"
        )
    lines += [
        "",
        "Sparsifiner: a compiled (or scripted / traced) model takes the gather form of the sparse attention, eager "
        "inference the CSR kernels; the two are different kernels (the relative error "
        "above; not investigated further) and the compiled gather form is the slower one.",
    ]
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main(sys.argv[1:])
