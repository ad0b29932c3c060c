"""k-reciprocal re-ranking of Re-ID query/gallery distances (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017, arXiv:1701.08398), vectorised in torch.

Steps, over all ``N = Q + G`` query and gallery features together (as in the authors' implementation):

1. **Original distance** ``d``: squared Euclidean (or ``1 - cosine``) between every pair, each column divided by its
   maximum and the matrix transposed, so that ``d[i, j] = dist(j, i) / max_k dist(k, i)`` (for a symmetric distance:
   row ``i`` scaled into ``[0, 1]``; the ranking of each row is unchanged).
2. **k-reciprocal neighbours** ``R(p, k1)``: the items among ``p``'s ``k1 + 1`` nearest (``p`` itself included) that
   also have ``p`` among their own ``k1 + 1`` nearest.
3. **Expansion**: for each ``c`` in ``R(p, k1)``, its set ``R(c, round(k1 / 2))`` is added when more than 2/3 of it
   lies in ``R(p, k1)``.
4. **Encoding** ``V[p]``: Gaussian-kernel weights ``exp(-d[p, j])`` on the expanded set, normalised to sum 1.
5. **Local query expansion**: ``V[p]`` replaced by the mean of ``V`` over ``p``'s ``k2`` nearest (itself included).
6. **Jaccard distance** ``1 - s / (2 - s)`` with ``s = sum_j min(V[q, j], V[g, j])``; the result is
   ``(1 - lambda) * jaccard + lambda * d`` for the query rows and gallery columns.

Ties in the neighbour rankings are broken by index (stable sort), so the result is deterministic. Memory is
``O(N^2)``: three dense ``N x N`` matrices live at the peak (Market-1501, ``N = 19281``: about 4.2 GiB in float32).
"""

from __future__ import annotations

import torch

__all__ = ["k_reciprocal_rerank", "rerank_memory_bytes"]

_CHUNK_ELEMENTS = 1 << 25  # elements per temporary block in the chunked steps (128 MiB in float32)


def rerank_memory_bytes(num_items: int, dtype: torch.dtype = torch.float32) -> int:
    """Approximate peak memory of :func:`k_reciprocal_rerank` for ``num_items = Q + G`` features."""
    return 3 * num_items * num_items * torch.empty((), dtype=dtype).element_size()


def _pairwise(feat: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "euclidean":
        sq = feat.pow(2).sum(1, keepdim=True)
        dist = (sq + sq.t()).addmm_(feat, feat.t(), alpha=-2.0)
    else:
        unit = torch.nn.functional.normalize(feat, dim=1)
        dist = 1.0 - unit @ unit.t()
    dist.clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def _ranked_neighbours(dist: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k)`` indices of each row's ``k`` smallest entries, ascending, ties by index."""
    n = dist.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=dist.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, n))
    for s in range(0, n, step):
        out[s : s + step] = torch.sort(dist[s : s + step], dim=1, stable=True).indices[:, :k]
    return out


def _reciprocal(neigh: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` mask: ``neigh[i, a]`` has ``i`` among its own first ``k`` neighbours."""
    rows = torch.arange(neigh.shape[0], device=neigh.device).view(-1, 1, 1)
    return (neigh[neigh] == rows).any(-1)


def _encode(dist: torch.Tensor, neigh: torch.Tensor, kk: int, kh: int) -> torch.Tensor:
    """Gaussian-kernel vectors ``V`` (N, N) on the expanded k-reciprocal sets (steps 2-4)."""
    n = dist.shape[0]
    fwd, half = neigh[:, :kk], neigh[:, :kh]
    recip, recip_h = _reciprocal(fwd), _reciprocal(half)
    v = torch.zeros_like(dist)
    step = max(1, _CHUNK_ELEMENTS // (kk * kk * kh))
    for s in range(0, n, step):
        f, r = fwd[s : s + step], recip[s : s + step]  # (B, kk)
        cand, cand_ok = half[f], recip_h[f]  # (B, kk, kh): each candidate's half-size reciprocal set
        in_r = ((cand.unsqueeze(-1) == f.view(-1, 1, 1, kk)) & r.view(-1, 1, 1, kk)).any(-1)
        overlap = (in_r & cand_ok).sum(-1)
        accept = r & (3 * overlap > 2 * cand_ok.sum(-1))  # |R_half(c) & R(p)| > 2/3 |R_half(c)|
        rows = torch.arange(s, s + f.shape[0], device=dist.device)
        own_rows, own_cols = rows.view(-1, 1).expand_as(f)[r], f[r]
        add = accept.unsqueeze(-1) & cand_ok
        add_rows, add_cols = rows.view(-1, 1, 1).expand_as(cand)[add], cand[add]
        all_rows, all_cols = torch.cat([own_rows, add_rows]), torch.cat([own_cols, add_cols])
        v[all_rows, all_cols] = torch.exp(-dist[all_rows, all_cols])  # duplicates write the same value
    return v.div_(v.sum(1, keepdim=True))


def _query_expansion(v: torch.Tensor, neigh: torch.Tensor) -> torch.Tensor:
    n, k2 = neigh.shape
    out = torch.empty_like(v)
    step = max(1, _CHUNK_ELEMENTS // (k2 * n))
    for s in range(0, n, step):
        out[s : s + step] = v[neigh[s : s + step]].mean(1)
    return out


def _jaccard(v: torch.Tensor, num_query: int) -> torch.Tensor:
    """``(Q, G)`` Jaccard distances between the query rows and the gallery rows of ``v``."""
    vq = v[:num_query]
    width = int((vq > 0).sum(1).max())
    vals, idx = vq.topk(width, dim=1)  # every non-zero entry of each query row (+ zero padding)
    vg_t = v[num_query:].t().contiguous()  # (N, G): gallery weights per feature dimension
    num_g = vg_t.shape[1]
    out = torch.empty(num_query, num_g, dtype=v.dtype, device=v.device)
    step = max(1, _CHUNK_ELEMENTS // (width * num_g))
    for s in range(0, num_query, step):
        shared = torch.minimum(vg_t[idx[s : s + step]], vals[s : s + step].unsqueeze(-1)).sum(1)  # (B, G)
        out[s : s + step] = 1.0 - shared / (2.0 - shared)
    return out


def k_reciprocal_rerank(
    qf: torch.Tensor,
    gf: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    max_items: int = 40_000,
) -> torch.Tensor:
    """``(Q, G)`` re-ranked distances (smaller = more similar) between query and gallery features.

    ``k1``, ``k2``, ``lambda_value``: the paper's settings (20, 6, 0.3 on Market-1501); ``lambda_value = 1`` gives
    the original (normalised) distance, ``0`` the Jaccard distance alone. ``k1 + 1`` and ``k2`` are capped at
    ``Q + G``. ``metric``: ``"euclidean"`` (squared, the paper's) or ``"cosine"`` for the original distance.
    Computes on the features' device, in float64 for float64 features and in float32 otherwise. ``Q + G`` above
    ``max_items`` is refused (the memory grows with its square).
    """
    qf, gf = torch.as_tensor(qf).detach(), torch.as_tensor(gf).detach()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1] or len(qf) == 0 or len(gf) == 0:
        raise ValueError(
            "query and gallery features must be non-empty (N, D) matrices with the same D, "
            f"got {tuple(qf.shape)} and {tuple(gf.shape)}."
        )
    if int(k1) != k1 or k1 < 1 or int(k2) != k2 or k2 < 1:
        raise ValueError(f"k1 and k2 must be integers >= 1, got k1={k1!r} and k2={k2!r}.")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}.")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")
    dtype = torch.float64 if qf.dtype == torch.float64 else torch.float32
    num_q, n = len(qf), len(qf) + len(gf)
    if n > max_items:
        raise ValueError(
            f"k-reciprocal re-ranking of {num_q} query + {len(gf)} gallery = {n} items needs about "
            f"{rerank_memory_bytes(n, dtype) / 2**30:.1f} GiB ({n} x {n} matrices), above max_items={max_items}: "
            "raise max_items if the memory is there, or evaluate on a smaller query/gallery set."
        )
    feat = torch.cat([qf.to(dtype), gf.to(device=qf.device, dtype=dtype)])
    if not bool(torch.isfinite(feat).all()):
        raise ValueError("query and gallery features must be finite for re-ranking (found NaN or inf).")
    k1, k2 = int(k1), int(k2)
    kk, kh, kq = min(k1 + 1, n), min(int(round(k1 / 2)) + 1, n), min(k2, n)

    dist = _pairwise(feat, metric)
    col_max = dist.amax(0, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    dist = (dist / col_max).t().contiguous()
    neigh = _ranked_neighbours(dist, max(kk, kq))
    v = _encode(dist, neigh, kk, kh)
    if kq > 1:
        v = _query_expansion(v, neigh[:, :kq])
    del neigh
    original = dist[:num_q, num_q:].clone()
    del dist
    jaccard = _jaccard(v, num_q)
    del v
    lam = float(lambda_value)
    return jaccard.mul_(1.0 - lam).add_(original, alpha=lam)
