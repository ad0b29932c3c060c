"""Benchmark Sparsifiner's attention paths on CPU: ``sparse`` (gather) vs ``dense_mask`` vs plain timm DeiT.

Usage::

    python benchmarks/sparsifiner.py                           # print the results
    python benchmarks/sparsifiner.py --write docs/benchmarks.md  # also (re)write the "## Sparsifiner" section

One process, ``torch.set_num_threads(2)``, inference (``torch.inference_mode``), DeiT-S shapes at 224 (197 tokens,
dim 384, 6 heads), batch 8, random weights (the timing does not depend on them; the predictor picks
``ceil(0.25 * 197) = 50`` keys per query either way). Candidates are interleaved (A B A B ...) for ``--rounds`` rounds
after one warm-up call each; medians are reported. Cases:

* attention only: one layer on a fixed input: ``sparse``, ``dense_mask``, and timm's ``Attention`` (fused SDPA), plus
  the parts of the sparse path (the connectivity predictor + top-k alone, the gathered attention alone);
* whole model: ``sparsifiner_deit_small`` with ``attn_impl`` sparse / dense_mask vs timm's ``deit_small_patch16_224``
  with the same backbone weights;
* attention FLOPs per image (``visionzoo.models.sparsifiner.sparsifiner_flops``): what the sparse path computes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cpu_model, interleaved, publish  # noqa: E402

import visionzoo  # noqa: E402,F401
from visionzoo.models.layers.sparse_attention import (  # noqa: E402
    dense_mask_attention,
    keep_count,
    sparse_csr_attention,
    sparse_gather_attention,
)
from visionzoo.models.sparsifiner import sparsifiner_flops  # noqa: E402


def _ms(res: dict) -> dict[str, float]:
    return {k: v["median"] * 1e3 for k, v in res.items()}


def attention_only(batch: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_small").eval()
    deit = timm.create_model("deit_small_patch16_224").eval()
    ours, theirs = model.blocks[0].attn, deit.blocks[0].attn
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if "mask_predictor" not in k})
    x = torch.randn(batch, model.num_tokens, model.embed_dim)
    B, N, C = x.shape
    q, k, v = ours.qkv(x).reshape(B, N, 3, ours.num_heads, ours.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    idx = ours.connectivity(q, k)

    def run(impl):
        def fn():
            ours.attn_impl = impl
            return ours(x)

        return fn

    with torch.inference_mode():
        res = interleaved(
            {
                "sparse": run("sparse"),
                "dense_mask": run("dense_mask"),
                "timm (SDPA)": lambda: theirs(x),
                "predictor + top-k only": lambda: ours.connectivity(q, k),
                "kept connections only, CSR kernels": lambda: sparse_csr_attention(q, k, v, idx, ours.scale),
                "kept connections only, gather": lambda: sparse_gather_attention(q, k, v, idx, ours.scale),
            },
            rounds=rounds,
        )
    return _ms(res)


def core_scaling(rounds: int) -> dict[tuple[int, int], dict[str, float]]:
    """The attention core alone (random q/k/v, 6 heads of 64, keep rate 0.25) at 197 / 577 / 1025 tokens."""
    out = {}
    for n, b in ((197, 8), (577, 8), (1025, 2)):
        torch.manual_seed(0)
        q, k, v = (torch.randn(b, 6, n, 64) for _ in range(3))
        idx = torch.rand(b, 6, n - 1, n).topk(keep_count(n, 0.25), dim=-1, sorted=False).indices
        with torch.inference_mode():
            res = interleaved(
                {
                    "csr": lambda q=q, k=k, v=v, idx=idx: sparse_csr_attention(q, k, v, idx, 0.125),
                    "dense_mask": lambda q=q, k=k, v=v, idx=idx: dense_mask_attention(q, k, v, idx, 0.125),
                    "dense": lambda q=q, k=k, v=v: ((q * 0.125) @ k.transpose(-2, -1)).softmax(-1) @ v,
                },
                rounds=rounds,
            )
        out[(n, b)] = _ms(res)
        print(f"core {n} tokens, batch {b}: {out[(n, b)]}", flush=True)
    return out


def whole_model(batch: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_small").eval()
    deit = timm.create_model("deit_small_patch16_224").eval()
    deit.load_state_dict({k: v for k, v in model.state_dict().items() if "mask_predictor" not in k})
    x = torch.randn(batch, 3, 224, 224)

    def run(impl):
        def fn():
            model.set_attn_impl(impl)
            return model(x)

        return fn

    with torch.inference_mode():
        res = interleaved(
            {"sparse": run("sparse"), "dense_mask": run("dense_mask"), "timm deit_small": lambda: deit(x)},
            rounds=rounds,
        )
    return _ms(res)


def section(attn: dict, full: dict, flops: dict, scaling: dict, batch: int, rounds: int, cmd: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    kk = keep_count(197, 0.25)
    lines = [
        "## Sparsifiner",
        "",
        "Sparsifiner's attention (`visionzoo/models/layers/sparse_attention.py`) on DeiT-S shapes (197 tokens, dim 384, "
        f"6 heads), keep rate 0.25 ({kk} of 197 keys per non-cls query; the cls row is dense), inference, batch {batch} "
        "at 224, random weights. `sparse` computes only the kept connections; in inference it uses torch's CSR "
        "kernels (`torch.sparse.sampled_addmm` for the kept scores, a softmax over each row's kept values, "
        "`torch.sparse.mm` with v), under autograd it gathers the kept keys/values per query ((B, H, N-1, k, d), then "
        "batched 1 x k products); both forms are timed alone below. `dense_mask` is the official "
        "simulation (full `q @ k^T`, `-inf` outside the kept keys); `timm` is the plain dense DeiT attention "
        "(fused SDPA). `sparse` and `dense_mask` agree to 1e-5 (tests).",
        "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, `torch.set_num_threads(2)`, "
        f"torch {torch.__version__}, timm {timm.__version__}; a shared VM",
        f"- date: {now}; {rounds} interleaved rounds per case after 1 warm-up call each; medians. The layer and "
        "whole-model tables are timed in separate interleaved groups on a shared, noisy VM: compare within a table.",
        "",
        "| attention layer (one block) | ms |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in attn.items()],
        "",
        "| whole model, batch 8 | ms | img/s |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.1f} | {batch / v * 1e3:.1f} |" for k, v in full.items()],
        "",
        "Attention FLOPs per image, 12 layers (`sparsifiner_flops`; 1 multiply-add = 2 FLOPs):",
        "",
        "| | GFLOPs |",
        "|---|---:|",
        f"| `q k^T` + `attn v`, dense | {flops['attn_dense'] / 1e9:.3f} |",
        f"| `q k^T` + `attn v`, kept connections only | {flops['attn_sparse'] / 1e9:.3f} |",
        f"| connectivity predictor (sparse form, top-k selections not counted) | {flops['predictor'] / 1e9:.3f} |",
        f"| qkv + output projections (unchanged) | {flops['linear'] / 1e9:.3f} |",
        "",
        f"Attention-matmul FLOPs fall by {flops['attn_reduction']:.1%}; with the predictor's own cost by "
        f"{flops['attn_with_predictor_reduction']:.1%}; the whole MHSA layer (projections included) by "
        f"{flops['mhsa_reduction']:.1%}. (The paper's 48-69 % 'MHSA FLOPs' uses its own, unpublished counting code.)",
        "",
        "Reading the tables: in inference `sparse` runs the kept connections on torch's CSR kernels (SDDMM, a row "
        "softmax, SpMM, plus the sort of each row's kept indices that CSR requires). That is several times faster "
        "than the gather form (kept for training, being differentiable; it copies 2 x 120 MB per layer at batch 8) "
        "but no faster than the official masked simulation (slower at 197 tokens, level at 577 and 1,025) and about "
        "half as fast as plain dense attention: at these "
        "sizes the dense products are efficient GEMMs, while the CSR kernels are memory-bound and the index sort "
        "alone costs several ms per layer. The connectivity predictor (its matmuls, the coefficient top-8 and above "
        f"all the top-{kk} selection over 197 keys for every query and head) comes on top. The last table shows the "
        "attention core alone at longer sequences: CSR stays level with the masked path and behind dense. So on this "
        "CPU the sparsity does not turn into time; that needs a fused block-sparse kernel (GPU) or token pruning "
        "(not implemented). The official code does not speed anything up either (it runs the masked simulation).",
        "",
        "| attention core alone (no qkv/proj, no predictor): tokens, batch | CSR (ms) | dense_mask (ms) | dense (ms) |",
        "|---|---:|---:|---:|",
        *[
            f"| {n}, {b} | {r['csr']:.1f} | {r['dense_mask']:.1f} | {r['dense']:.1f} |"
            for (n, b), r in scaling.items()
        ],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--write", default=None, help="markdown file whose '## Sparsifiner' section to (re)write"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    with torch.device("meta"):
        flops = sparsifiner_flops(timm.create_model("sparsifiner_deit_small"))
    attn = attention_only(args.batch, args.rounds)
    for k, v in attn.items():
        print(f"attention {k:28s} {v:8.2f} ms")
    full = whole_model(args.batch, args.rounds)
    for k, v in full.items():
        print(f"model     {k:28s} {v:8.1f} ms  {args.batch / v * 1e3:6.1f} img/s")
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in flops.items()})
    cmd = "python benchmarks/sparsifiner.py" + (f" --write {args.write}" if args.write else "")
    scaling = core_scaling(args.rounds)
    text = section(attn, full, flops, scaling, args.batch, args.rounds, cmd)
    publish(text, args.write)


if __name__ == "__main__":
    main()
