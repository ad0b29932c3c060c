"""Benchmark HER-Seg (``herseg``) on CPU at 1024x1024: inference throughput, training-step time and peak memory.

Usage::

    python benchmarks/herseg.py                               # print the results
    python benchmarks/herseg.py --write docs/benchmarks.md    # also (re)write the "## HER-Seg" section
    python benchmarks/herseg.py --official /path/to/HER-Seg   # also time the official code in the same run

Everything runs in one process with ``torch.set_num_threads(2)`` (``--threads``). With ``--official`` (a checkout
of xq141839/HER-Seg; its ``model.py`` imports cv2, torchvision, tqdm and its vendored ``sam2`` package, all of which
the zoo's environment already has) the official ``MHRMedSeg(dim=96, img_size=1024)`` gets our weights under its key
names (:func:`to_official_state_dict`) and the candidates are interleaved (A B A B ...) for ``--rounds`` rounds after
one warm-up call each; medians are reported. Cases:

* inference, batch 1 at 1024 (``torch.inference_mode``, eval mode): images/s;
* a training step, batch 1 at 1024 (train mode, forward + backward of the official loss's Dice term on a random
  mask): seconds per step;
* peak memory of one call: the peak of torch's own CPU allocations during the call (profiler allocation events,
  relative to what was live before; activations, temporaries and gradients -- see ``_timing.peak_alloc_bytes``);
* FLOPs per image with ``torch.utils.flop_counter.FlopCounterMode`` (SDPA forced to its math path so the decoder
  attention is counted), reported as GMACs = FLOPs / 2 to compare with the paper's thop figure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
from _timing import cpu_model, gemm_flops, interleaved, peak_alloc_bytes, write_markdown_section  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import visionzoo  # noqa: E402, F401  (registers the models)
from visionzoo.models.layers.rope import rope_2d_tables  # noqa: E402

MIB = 2**20
SIDE = 1024


# ------------------------------------------------------------------------------------------------ official code
def load_official(path: str, img_size: int = SIDE) -> torch.nn.Module:
    """``MHRMedSeg(dim=96, img_size)`` from a checkout of xq141839/HER-Seg (its ``model.py``, unmodified)."""
    path = os.path.abspath(path)
    if path not in sys.path:
        sys.path.insert(0, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers is deprecated
        module = importlib.import_module("model")
    if not hasattr(module, "MHRMedSeg"):
        raise ImportError(f"{path}/model.py has no MHRMedSeg: is it a checkout of xq141839/HER-Seg?")
    return module.MHRMedSeg(dim=96, img_size=img_size)


def to_official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our herseg state_dict under the official names: the same keys plus each DLA block's RoPE table
    ``attn.rope.rotations`` ``(H, W, C/2, 2)`` for the model's nominal ``img_size`` grid."""
    out = dict(model.state_dict())
    gh, gw = (s // model.patch_size for s in model.img_size)
    cos, sin = rope_2d_tables(gh, gw, model.embed_dim)
    table = torch.stack([cos, sin], dim=-1).reshape(gh, gw, model.embed_dim // 2, 2)
    blocks = sorted(
        {
            m.group(1)
            for k in out
            if (m := re.match(r"(image_encoder\.layers\.\d+\.blocks\.\d+)\.attn\.qk\.", k))
        }
    )
    for block in blocks:
        out[f"{block}.attn.rope.rotations"] = table.clone()
    return out


# ------------------------------------------------------------------------------------------------ cases
def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)


def _infer(model, x):
    def run():
        model.eval()
        with torch.inference_mode():
            model(x)

    return run


def _train(model, x, target):
    def run():
        model.train()
        model.zero_grad(set_to_none=True)
        _dice_loss(model(x), target).backward()

    return run


def flops(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOPs (2 x MACs) of one eval forward, total and per top-level module."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.eval()
    # the official prompt encoder returns a view of a parameter, which FlopCounterMode's module tracker rejects
    # while parameters require grad: count with every parameter frozen, then restore the flags
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(x)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    by_module = counter.get_flop_counts()
    out = {"total": float(counter.get_total_flops())}
    for name in ("image_encoder", "neck", "prompt_encoder", "mask_decoder"):
        key = next((k for k in by_module if k.split(".")[-1] == name), None)
        out[name] = float(sum(by_module[key].values())) if key else 0.0
    return out


def bench(rounds: int, official: str | None) -> dict:
    torch.manual_seed(0)
    ours = timm.create_model("herseg").eval()
    models = {"ours": ours}
    result: dict = {}
    x = torch.randn(1, 3, SIDE, SIDE)
    target = (torch.rand(1, 1, SIDE, SIDE) > 0.5).float()
    if official:
        off = load_official(official)
        missing, unexpected = off.load_state_dict(to_official_state_dict(ours), strict=False)
        # the official weights our model does not build (its forward never uses them) keep their own init
        unused = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
                  "prompt_encoder.mask_downscaling.", "mask_decoder.output_hypernetworks_mlps.1.",
                  "mask_decoder.output_hypernetworks_mlps.2.")  # fmt: skip
        if unexpected or [k for k in missing if not k.startswith(unused)]:
            raise RuntimeError(f"official HER-Seg keys do not match ours: {unexpected[:3]} {missing[:3]}")
        models["official"] = off.eval()
        with torch.no_grad():
            result["max_abs_diff"] = (ours(x) - off(x)).abs().max().item()
        print(f"  official vs ours: max |logit diff| {result['max_abs_diff']:.2e}", flush=True)
    result["flops"] = {k: flops(m, x) for k, m in models.items()}
    print("  FLOPs counted", flush=True)
    n = 2048
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    inf = interleaved(
        {**{k: _infer(m, x) for k, m in models.items()}, "gemm": lambda: torch.mm(a, b, out=c)}, rounds=rounds
    )
    result["gemm_flops"] = 2 * n**3 / inf.pop("gemm")["median"]
    result["inf"] = inf
    print("  inference: done", flush=True)
    result["train"] = interleaved({k: _train(m, x, target) for k, m in models.items()}, rounds=rounds)
    print("  training step: done", flush=True)
    result["mem_train"] = {k: peak_alloc_bytes(_train(m, x, target)) for k, m in models.items()}
    result["mem_inf"] = {k: peak_alloc_bytes(_infer(m, x)) for k, m in models.items()}
    result["params"] = sum(p.numel() for p in ours.parameters())
    result["trainable"] = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    return result


# ------------------------------------------------------------------------------------------------ report
def _mib(b):
    return "n/a" if b is None else f"{b / MIB:,.0f}"


def render(cmd: str, rounds: int, gemm: float, r: dict, env: dict) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    impls = list(r["inf"])
    lines = [
        "## HER-Seg",
        "",
        "`herseg` (the released HER-Seg, 3.53 M parameters) against the official `MHRMedSeg(dim=96, img_size=1024)` "
        "from xq141839/HER-Seg (unmodified, our weights loaded under its key names), CPU, batch 1 at 1024x1024. "
        "Same math: the official outputs match ours to float32 precision (below and `tests/test_herseg.py`). "
        "Ours differs in the order of work only: the decoder runs once on the batch (official: a Python loop over "
        "samples), one RoPE table per call, built from the token grid, serves every block and rotates Q and K in one "
        "complex multiply (official: a stored table per block, Q and K rotated separately), the decoder attention "
        "uses SDPA and only the used hypernetwork MLP runs.",
        "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, `torch.set_num_threads({env['threads']})`, "
        f"torch {torch.__version__}, timm {timm.__version__}; a shared VM",
        f"- date: {now}; {rounds} interleaved rounds per case after 1 warm-up call each; medians",
        "- training step: train mode (drop path 0.1 as released), forward + backward of a Dice loss on a random "
        "mask, gradients of every trainable parameter",
        "- peak memory: peak of torch's own CPU allocations during one call (profiler allocation events, "
        "relative to what was live before the call; includes activations, temporaries and gradients; the CPU "
        "analogue of `torch.cuda.max_memory_allocated`)",
        f"- load average (1 min) at start / end: {env['load_start']:.2f} / {env['load_end']:.2f}; "
        f"whole benchmark wall time {env['wall_s'] / 60:.1f} min",
        f"- fp32 GEMM rate (2048² matmul, median) at the start: {gemm / 1e9:.1f} GFLOP/s; interleaved with the "
        f"inference rounds: {r['gemm_flops'] / 1e9:.1f} GFLOP/s",
        "",
        "| impl | inference img/s | inference ms (median / min) | train step s (median / min) "
        "| train peak MiB | inference peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for k in impls:
        inf, trn = r["inf"][k], r["train"][k]
        lines.append(
            f"| {k} | {1 / inf['median']:.2f} | {inf['median'] * 1e3:.0f} / {inf['min'] * 1e3:.0f} "
            f"| {trn['median']:.2f} / {trn['min']:.2f} | {_mib(r['mem_train'][k])} | {_mib(r['mem_inf'][k])} |"
        )
    if "official" in impls:
        o, u = "official", "ours"
        mem_t = (
            f"{r['mem_train'][u] / r['mem_train'][o]:.2f}"
            if r["mem_train"][o] and r["mem_train"][u]
            else "n/a"
        )
        mem_i = f"{r['mem_inf'][u] / r['mem_inf'][o]:.2f}" if r["mem_inf"][o] and r["mem_inf"][u] else "n/a"
        lines += [
            "",
            "Ratios ours / official (speed: higher is better, from the medians / from the fastest rounds; memory: "
            "lower is better): inference speed "
            f"**{r['inf'][o]['median'] / r['inf'][u]['median']:.2f}x / {r['inf'][o]['min'] / r['inf'][u]['min']:.2f}x**, "
            f"train-step speed **{r['train'][o]['median'] / r['train'][u]['median']:.2f}x / "
            f"{r['train'][o]['min'] / r['train'][u]['min']:.2f}x**, train peak memory **{mem_t}**, "
            f"inference peak memory **{mem_i}**.",
            "",
            f"Official code at 1024: max |logit difference| vs ours {r['max_abs_diff']:.2e}.",
        ]
    lines += [
        "",
        "FLOPs per 1024² image (`torch.utils.flop_counter.FlopCounterMode`, SDPA on its math path so the decoder "
        "attention is counted; GMACs = FLOPs / 2):",
        "",
        "| impl | total GMACs | encoder | neck | decoder | prompt encoder |",
        "|---|---|---|---|---|---|",
    ]
    for k, f in r["flops"].items():
        g = {n: v / 2e9 for n, v in f.items()}
        lines.append(
            f"| {k} | {g['total']:.3f} | {g['image_encoder']:.3f} | {g['neck']:.3f} | {g['mask_decoder']:.3f} "
            f"| {g['prompt_encoder']:.3f} |"
        )
    fl = r["flops"]["ours"]["total"]
    ips = 1 / r["inf"]["ours"]["median"]
    lines += [
        "",
        f"Parameters: {r['params']:,} ({r['trainable']:,} trainable; the rest are the prompt encoder's point / "
        "mask-prompt weights and hypernetwork MLPs 1-2, which the released forward never uses). Ours achieves "
        f"{ips * fl / 1e9:.1f} GFLOP/s = {ips * fl / r['gemm_flops']:.1%} of the interleaved GEMM rate.",
        "",
        "Notes: the paper's 9.39 G is thop's count of multiply-adds in nn.Module layers (conv, linear, norms); it "
        "misses the linear-attention and decoder-attention matmuls and counts some elementwise work. "
        "FlopCounterMode counts every matmul / conv (2 FLOPs per MAC) and no elementwise ops, interpolation or "
        "norms. Absolute numbers on this shared VM move a lot with the load of other jobs: with both cores busy "
        "elsewhere every op waits for a descheduled OpenMP thread and a call can take 10x its quiet time, so the "
        "medians and their ratio are noisy; the fastest rounds (min) are the better estimate of the quiet machine, "
        "and `--threads 1` (one OpenMP thread: nothing to wait for) gives the steadiest ratios when others load it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official", default=None, help="path to a checkout of xq141839/HER-Seg")
    parser.add_argument(
        "--write", default=None, help="markdown file whose '## HER-Seg' section is (re)written"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/herseg.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    print("GEMM rate ...", flush=True)
    gemm = gemm_flops()
    print(f"  {gemm / 1e9:.1f} GFLOP/s", flush=True)
    result = bench(args.rounds, args.official)
    env = dict(
        load_start=load_start,
        load_end=os.getloadavg()[0],
        wall_s=time.perf_counter() - t0,
        threads=args.threads,
    )
    section = render(cmd.strip(), args.rounds, gemm, result, env)
    print(section)
    if args.write:
        write_markdown_section(args.write, section)
        print(f"wrote the '## HER-Seg' section of {args.write}")


if __name__ == "__main__":
    main()
