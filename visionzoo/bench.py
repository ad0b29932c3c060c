"""Throughput, latency and memory of one model, with its share of the machine's matmul rate (``visionzoo benchmark``).

What one :func:`benchmark` call measures, all in one process and one run:

* inference (eval mode, ``torch.inference_mode``): per-call latency of a batch, ``steps`` calls after ``warmup``;
  reported as images/s (batch / median latency) and latency p50 / p95;
* a training step (train mode, forward + ``mean()`` loss + backward + SGD step): images/s, p50 / p95;
* peak memory of one inference call and one training step: ``torch.cuda.max_memory_allocated`` on CUDA; on the
  CPU the peak of torch's own allocations from the profiler's memory events (activations, temporaries, gradients;
  no allocator caching, no RSS noise), both relative to what was live before the call;
* FLOPs per image (forward, :mod:`visionzoo.flops`: the model's algorithm, counted on the meta device);
* the fp32 matmul rate of the machine (an ``n x n`` GEMM, ``n`` = 2048 on CPU / 4096 on CUDA), timed *between*
  the inference calls (A B A B ...) so that both see the same machine state, and the inference's achieved FLOP/s
  as a fraction of it.

Timing uses ``time.perf_counter`` with ``torch.cuda.synchronize`` on CUDA. Medians and percentiles over few steps
on a shared machine are noisy: compare models within one run, not across machines. This module is the
library form of what ``benchmarks/_timing.py`` does for the repository's benchmark scripts.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["benchmark", "gemm_rate", "interleaved", "peak_memory"]


def interleaved(
    candidates: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Time each candidate ``rounds`` times, interleaved (A B A B ...), so that slow phases of a shared machine hit
    every candidate alike. Returns per name: ``median`` / ``min`` / ``all`` (seconds, ``all`` in round order, so
    ``all[i]`` of two candidates were measured back to back)."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: dict(median=statistics.median(ts), min=min(ts), all=ts) for name, ts in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak extra bytes torch allocates on ``device`` while ``fn()`` runs (``None`` if it cannot be measured)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a private API moved: report nothing rather than something wrong
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
    return int(peak)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what the profiler's native (kineto) side prints straight to file descriptor 2 (start/stop
    markers, a GPU probe on CPU-only machines); Python-level errors still propagate as exceptions."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook frontends)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def gemm_rate(device: torch.device, n: int | None = None) -> tuple[Callable[[], None], float]:
    """A timed fp32 ``n x n`` matmul closure and its FLOP count (2 n^3)."""
    n = n or (4096 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def run() -> None:
        torch.mm(a, b, out=out)
        _sync(device)

    return run, 2.0 * n**3


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark(
    name: str,
    batch: int = 8,
    size: int | None = None,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    steps: int = 10,
    warmup: int = 2,
    device: str | None = None,
    train: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure ``timm.create_model(name, **model_kwargs)``; returns a JSON-ready dict (see the module docstring)."""
    import timm

    from .flops import model_complexity

    model_kwargs = dict(model_kwargs or {})
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but torch.cuda.is_available() is False.")
    steps, warmup = max(1, steps), max(0, warmup)
    model = timm.create_model(name, pretrained=False, **model_kwargs)
    cfg_size = tuple(model.pretrained_cfg.get("input_size") or (3, 224, 224))
    input_size = (cfg_size[0], size, size) if size else cfg_size
    complexity = model_complexity(name, input_size=input_size, **model_kwargs)
    flops_per_image = complexity["flops"]

    model = model.to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, *input_size, device=dev).contiguous(memory_format=memory_format)
    fwd: nn.Module | Callable = torch.compile(model) if compile else model
    amp_dtype = torch.bfloat16

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype) if amp else contextlib.nullcontext()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            fwd(x)
        _sync(dev)

    gemm, gemm_flops = gemm_rate(dev)
    model.eval()
    for _ in range(warmup):
        infer()
    gemm()
    infer_times, gemm_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        infer()
        infer_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gemm()
        gemm_times.append(time.perf_counter() - t0)
    infer_peak = peak_memory(infer, dev)

    result: dict[str, Any] = {
        "model": name,
        "model_kwargs": model_kwargs,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": batch,
        "input_size": list(input_size),
        "amp": "bf16" if amp else None,
        "channels_last": channels_last,
        "compile": compile,
        "steps": steps,
        "warmup": warmup,
        "params": complexity["params"],
        "gflops_per_image": flops_per_image / 1e9,
    }
    med = statistics.median(infer_times)
    gemm_per_s = gemm_flops / statistics.median(gemm_times)
    achieved = batch / med * flops_per_image
    result["inference"] = {
        "img_per_s": batch / med,
        "latency_ms_p50": 1e3 * med,
        "latency_ms_p95": 1e3 * _percentile(infer_times, 0.95),
        "peak_memory_mib": None if infer_peak is None else infer_peak / 2**20,
        "achieved_gflop_per_s": achieved / 1e9,
    }
    result["matmul_fp32_gflop_per_s"] = gemm_per_s / 1e9
    result["fraction_of_matmul_rate"] = achieved / gemm_per_s

    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = fwd(x)
            out.float().mean().backward()
            opt.step()
            _sync(dev)

        for _ in range(warmup):
            train_step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            train_step()
            times.append(time.perf_counter() - t0)
        train_peak = peak_memory(train_step, dev)
        tmed = statistics.median(times)
        result["train"] = {
            "img_per_s": batch / tmed,
            "step_ms_p50": 1e3 * tmed,
            "step_ms_p95": 1e3 * _percentile(times, 0.95),
            "peak_memory_mib": None if train_peak is None else train_peak / 2**20,
        }
    return result
