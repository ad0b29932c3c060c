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
from _timing import cpu_model, interleaved, write_markdown_section  # noqa: E402

import visionzoo  # noqa: E402,F401
from visionzoo.models.layers.sparse_attention import keep_count, sparse_gather_attention  # noqa: E402
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
                "gathered attention only": lambda: sparse_gather_attention(q, k, v, idx, ours.scale),
            },
            rounds=rounds,
        )
    return _ms(res)


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


def section(attn: dict, full: dict, flops: dict, batch: int, rounds: int, cmd: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    kk = keep_count(197, 0.25)
    lines = [
        "## Sparsifiner",
        "",
        "Sparsifiner's attention (`visionzoo/models/layers/sparse_attention.py`) on DeiT-S shapes (197 tokens, dim 384, "
        f"6 heads), keep rate 0.25 ({kk} of 197 keys per non-cls query; the cls row is dense), inference, batch {batch} "
        "at 224, random weights. `sparse` computes only the kept connections (one `index_select` gathers the kept "
        "keys/values per query, (B, H, N-1, k, d), then batched 1 x k products); `dense_mask` is the official "
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
        "Where `sparse` is not faster, and why: at 197 tokens the dense `q @ k^T` and `attn @ v` are two large GEMMs "
        "that run near the machine's peak, while the sparse path does a gather (memory-bound copies of "
        f"k = {kk} keys and values, 64 floats each, for every query and head: at batch 8 that is 2 x 120 MB per "
        "layer, against a 7.4 MB dense score matrix) plus many tiny 1 x k x d products, "
        "and the predictor adds its own matmuls and two "
        "top-k selections. The attention matmuls are also a small part of DeiT-S's compute (the qkv/proj projections "
        "and the MLP dominate), so even a perfect kernel would save only a few percent of the whole model at 224. "
        "The official code does not speed anything up either (it simulates the sparsity with a dense mask); a real "
        "speed-up needs a block-sparse or CSR attention kernel, longer sequences, or token pruning (not implemented).",
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
    text = section(attn, full, flops, args.batch, args.rounds, cmd)
    if args.write:
        write_markdown_section(args.write, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
