"""Small timing / memory helpers for CPU benchmarks on a shared, noisy machine.

* :func:`interleaved` runs the candidates A B A B ... in one process and reports medians, so slow phases of the
  machine hit every candidate alike.
* :func:`peak_alloc_bytes` measures the peak of torch's *own* CPU allocations during one call, from the
  profiler's allocation/free events (``profile_memory=True``): the running sum of allocated minus freed bytes,
  in time order, relative to what was live before the call. It counts every tensor torch allocates (activations,
  temporaries, gradients) and nothing else (no Python objects, no allocator caching, no RSS noise from other
  processes) -- the CPU analogue of ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable

import torch

from visionzoo.bench import interleaved  # one implementation, shared with the package

__all__ = ["interleaved", "peak_alloc_bytes", "gemm_flops", "cpu_model", "publish", "write_markdown_section"]


def peak_alloc_bytes(fn: Callable[[], object]) -> int | None:
    """Peak extra bytes torch allocated on the CPU while ``fn()`` ran (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # private API moved: report nothing rather than something wrong
        return None
    mem = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak


def gemm_flops(n: int = 2048, rounds: int = 7) -> float:
    """Median fp32 FLOP/s of an ``n x n`` by ``n x n`` matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    res = interleaved({"mm": lambda: torch.mm(a, b, out=out)}, rounds=rounds, warmup=2)
    return 2 * n**3 / res["mm"]["median"]


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu`` (falls back to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def write_markdown_section(path: str, section: str) -> None:
    """Replace the ``## <heading>`` section that ``section`` starts with (up to the next ``## ``) in ``path``,
    or append it; every benchmark script owns one section of docs/benchmarks.md."""
    import os
    import re

    heading = section.splitlines()[0]
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text.rstrip("\n") + "\n")


def publish(section: str, path: str | None) -> None:
    """Print a benchmark's markdown section, or (re)write it in ``path`` (``--write``) and say so."""
    if not path:
        print(section)
        return
    write_markdown_section(path, section)
    print(f"wrote the '{section.splitlines()[0]}' section of {path}")
