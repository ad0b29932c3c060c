"""Person re-identification metrics: CMC rank-k and mAP under the Market-1501 protocol.

Conventions (Zheng et al., ICCV 2015, as in the usual Re-ID evaluation code; written down because it matters):

* **Distance**: squared Euclidean (``metric="euclidean"``) or ``1 - cosine`` (``metric="cosine"``, features
  L2-normalised first). Ties are broken by gallery order (a stable sort), so the result is deterministic.
* **Per query, removed from its gallery ranking**: gallery items with the query's pid *and* camid (same person seen
  by the same camera: too easy) and junk items (pid ``-1``). Distractors (pid ``0`` on Market-1501) stay in the
  gallery: they are simply never a match (unless a query itself has pid 0, which the data module never builds).
* **Queries without any valid match** (no gallery item of their pid from another camera) are skipped: they count
  neither in CMC nor in mAP. ``num_valid_queries`` reports how many counted; with none at all the metrics raise.
* **CMC** rank-k = fraction of (valid) queries whose first correct match is within the top k of the filtered
  ranking. **AP** of a query = mean over its correct matches of precision at that match's rank (area under the
  non-interpolated precision-recall curve); **mAP** = mean AP over valid queries.
* Values are fractions in ``[0, 1]`` (multiply by 100 for the usual percent tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["compute_reid_metrics", "reid_distance", "reid_metrics_from_distance"]


def _as_long(x: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}.")
    return t.long().cpu()


def reid_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``(Q, G)`` distances between query and gallery features (smaller = more similar)."""
    qf = torch.as_tensor(qf).detach().float().cpu()
    gf = torch.as_tensor(gf).detach().float().cpu()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query and gallery features must be (N, D) with the same D, got {tuple(qf.shape)} and {tuple(gf.shape)}."
        )
    if metric == "euclidean":
        dist = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1).unsqueeze(0) - 2.0 * qf @ gf.t()
        return dist.clamp_min(0.0)
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf, dim=1)
        gn = torch.nn.functional.normalize(gf, dim=1)
        return 1.0 - qn @ gn.t()
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")


def compute_reid_metrics(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: torch.Tensor | Sequence[int],
    g_pids: torch.Tensor | Sequence[int],
    q_camids: torch.Tensor | Sequence[int],
    g_camids: torch.Tensor | Sequence[int],
    max_rank: int = 10,
    metric: str = "euclidean",
) -> dict[str, float]:
    """mAP and CMC rank-1/5/10 (see the module docstring for the protocol).

    Returns ``{"mAP", "rank1", "rank5", "rank10", "num_valid_queries"}`` plus ``rank{max_rank}`` when
    ``max_rank`` is another value; ranks beyond ``max_rank`` are not computed and are left out.
    """
    dist = reid_distance(qf, gf, metric)
    return reid_metrics_from_distance(dist, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)


def reid_metrics_from_distance(
    dist: torch.Tensor,
    q_pids: torch.Tensor | Sequence[int],
    g_pids: torch.Tensor | Sequence[int],
    q_camids: torch.Tensor | Sequence[int],
    g_camids: torch.Tensor | Sequence[int],
    max_rank: int = 10,
) -> dict[str, float]:
    """:func:`compute_reid_metrics` from a precomputed ``(Q, G)`` distance matrix (smaller = more similar), e.g.
    the k-reciprocal re-ranked one of :func:`visionzoo.tasks.reid_rerank.k_reciprocal_rerank`."""
    dist = torch.as_tensor(dist).detach().cpu()
    if dist.dim() != 2:
        raise ValueError(f"the distance matrix must be (Q, G), got shape {tuple(dist.shape)}.")
    q_pids, g_pids = _as_long(q_pids, "q_pids"), _as_long(g_pids, "g_pids")
    q_camids, g_camids = _as_long(q_camids, "q_camids"), _as_long(g_camids, "g_camids")
    num_q, num_g = dist.shape
    if not (len(q_pids) == len(q_camids) == num_q and len(g_pids) == len(g_camids) == num_g):
        raise ValueError(
            f"got {num_q} query / {num_g} gallery features but {len(q_pids)}/{len(q_camids)} query and "
            f"{len(g_pids)}/{len(g_camids)} gallery pids/camids: one of each per feature is needed."
        )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}.")

    order = torch.sort(dist, dim=1, stable=True).indices  # (Q, G)
    cmc_hits = torch.zeros(max_rank, dtype=torch.float64)
    ap_sum = 0.0
    valid = 0
    for i in range(num_q):
        idx = order[i]
        gp, gc = g_pids[idx], g_camids[idx]
        keep = ~(((gp == q_pids[i]) & (gc == q_camids[i])) | (gp == -1))
        matches = (gp[keep] == q_pids[i]).double()
        if matches.sum() == 0:
            continue
        valid += 1
        first = int(torch.nonzero(matches)[0])
        if first < max_rank:
            cmc_hits[first:] += 1
        hit_ranks = torch.nonzero(matches).flatten().double() + 1.0  # 1-based ranks of the correct matches
        precisions = torch.arange(1, len(hit_ranks) + 1, dtype=torch.float64) / hit_ranks
        ap_sum += float(precisions.mean())
    if valid == 0:
        raise ValueError(
            "no query has a valid gallery match (same pid from another camera): cannot compute Re-ID metrics."
        )
    cmc = cmc_hits / valid
    out = {"mAP": ap_sum / valid, "num_valid_queries": valid}
    for k in sorted({1, 5, 10, max_rank}):
        if k <= max_rank:
            out[f"rank{k}"] = float(cmc[k - 1])
    return out
