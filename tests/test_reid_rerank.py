"""k-reciprocal re-ranking: against a plain loop re-implementation, its limits, and a case it is meant to fix."""

from __future__ import annotations

import math

import pytest
import torch

from visionzoo.tasks.reid_metrics import compute_reid_metrics, reid_distance, reid_metrics_from_distance
from visionzoo.tasks.reid_rerank import k_reciprocal_rerank, rerank_memory_bytes


def loop_rerank(qf: torch.Tensor, gf: torch.Tensor, k1: int, k2: int, lam: float) -> torch.Tensor:
    """The algorithm step by step on Python lists and sets (float64), written from the paper's description."""
    feat = torch.cat([qf, gf]).double().tolist()
    n, nq = len(feat), len(qf)
    raw = [
        [sum((a - b) ** 2 for a, b in zip(feat[i], feat[j], strict=True)) for j in range(n)] for i in range(n)
    ]
    col_max = [max(raw[i][j] for i in range(n)) for j in range(n)]
    d = [
        [raw[j][i] / col_max[i] for j in range(n)] for i in range(n)
    ]  # columns scaled by their max, transposed
    rank = [sorted(range(n), key=lambda j, i=i: (d[i][j], j)) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in rank[i][: k + 1] if i in rank[j][: k + 1]}

    vectors = []
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, round(k1 / 2))
            if len(rc & r) > 2 / 3 * len(rc):
                expanded |= rc
        weights = {j: math.exp(-d[i][j]) for j in expanded}
        total = sum(weights.values())
        vectors.append([weights.get(j, 0.0) / total for j in range(n)])
    if k2 > 1:
        vectors = [[sum(vectors[m][j] for m in rank[i][:k2]) / k2 for j in range(n)] for i in range(n)]
    out = []
    for i in range(nq):
        row = []
        for g in range(nq, n):
            shared = sum(min(vectors[i][j], vectors[g][j]) for j in range(n))
            row.append((1 - lam) * (1 - shared / (2 - shared)) + lam * d[i][g])
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("seed", "k1", "k2"), [(0, 4, 2), (1, 4, 2), (2, 6, 3), (3, 3, 1), (4, 20, 6)])
def test_matches_loop_reimplementation(seed, k1, k2):
    gen = torch.Generator().manual_seed(seed)
    qf = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    gf = torch.randn(20, 8, generator=gen, dtype=torch.float64)
    expected = loop_rerank(qf, gf, k1, k2, 0.3)
    got = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=0.3)
    assert got.shape == (6, 20) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-9)
    got32 = k_reciprocal_rerank(qf.float(), gf.float(), k1=k1, k2=k2, lambda_value=0.3)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=0.0, atol=1e-6)


def test_chunked_steps_match_unchunked(monkeypatch):
    import visionzoo.tasks.reid_rerank as rr

    gen = torch.Generator().manual_seed(5)
    qf, gf = torch.randn(7, 5, generator=gen), torch.randn(30, 5, generator=gen)
    whole = k_reciprocal_rerank(qf, gf, k1=5, k2=3)
    monkeypatch.setattr(rr, "_CHUNK_ELEMENTS", 1)  # one row / query per block everywhere
    torch.testing.assert_close(k_reciprocal_rerank(qf, gf, k1=5, k2=3), whole, rtol=0.0, atol=1e-6)


def test_lambda_one_is_the_normalised_original_distance():
    gen = torch.Generator().manual_seed(7)
    qf, gf = (
        torch.randn(5, 6, generator=gen, dtype=torch.float64),
        torch.randn(15, 6, generator=gen, dtype=torch.float64),
    )
    got = k_reciprocal_rerank(qf, gf, k1=4, k2=2, lambda_value=1.0)
    plain = reid_distance(qf, gf).double()  # (computed in float32)
    scale = (
        reid_distance(qf, torch.cat([qf, gf])).double().amax(1, keepdim=True)
    )  # largest distance of each query
    torch.testing.assert_close(got, plain / scale, rtol=0.0, atol=1e-5)
    assert torch.equal(got.argsort(dim=1, stable=True), plain.argsort(dim=1, stable=True))
    # cosine base distance: lambda 1 keeps the cosine ranking
    got_cos = k_reciprocal_rerank(qf, gf, k1=4, k2=2, lambda_value=1.0, metric="cosine")
    plain_cos = reid_distance(qf, gf, "cosine")
    assert torch.equal(got_cos.argsort(dim=1, stable=True), plain_cos.argsort(dim=1, stable=True))


def _hub_example() -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], list[int], list[int]]:
    """The query (pid 1, at the origin) has a wrong nearest neighbour: g4 (pid 2) at distance 1.0, closer than
    its own pid's gallery items g0-g3 (distance 1.2, on an arc around it). But g4's own 5 nearest are the tight pid-2
    cluster g5-g9 (within 0.42), so the query is not among g4's k-nearest and g4 is not a k-reciprocal neighbour of
    the query, whereas g0-g3 have the query among theirs: the Jaccard distance ranks g0-g3 first."""
    arc = [(1.2 * math.cos(math.radians(a)), 1.2 * math.sin(math.radians(a))) for a in (90, 150, 210, 270)]
    hub = [(1.0, 0.0)]
    cluster = [(1.3, 0.0), (1.25, 0.15), (1.25, -0.15), (1.4, 0.1), (1.4, -0.1)]
    gf = torch.tensor(arc + hub + cluster)
    qf = torch.tensor([(0.0, 0.0)])
    return qf, gf, [1], [1] * 4 + [2] * 6, [0], [1] * 10


@pytest.mark.parametrize(("k1", "k2"), [(3, 1), (4, 1), (5, 3)])
def test_rerank_fixes_a_wrong_nearest_neighbour(k1, k2):
    qf, gf, qp, gp, qc, gc = _hub_example()
    plain = compute_reid_metrics(qf, gf, qp, gp, qc, gc)
    assert plain["rank1"] == 0.0 and plain["mAP"] < 0.7  # g4 ranked first
    dist = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=0.3)
    reranked = reid_metrics_from_distance(dist, qp, gp, qc, gc)
    assert reranked["rank1"] == 1.0 and reranked["mAP"] == pytest.approx(1.0)
    assert set(dist.argsort(1)[0, :4].tolist()) == {0, 1, 2, 3}
    # the plain distance through reid_metrics_from_distance is compute_reid_metrics
    assert reid_metrics_from_distance(reid_distance(qf, gf), qp, gp, qc, gc) == plain


def test_small_sets_cap_k_and_identical_features_stay_finite():
    gen = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(2, 4, generator=gen), torch.randn(3, 4, generator=gen)
    dist = k_reciprocal_rerank(qf, gf)  # k1 = 20 > Q + G = 5: every item is a neighbour
    assert dist.shape == (2, 3) and torch.isfinite(dist).all()
    same = k_reciprocal_rerank(torch.ones(2, 3), torch.ones(4, 3), k1=2, k2=2)
    assert torch.isfinite(same).all()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.zeros(3), torch.zeros(4, 3)), {}, r"non-empty \(N, D\) matrices with the same D, got \(3,\)"),
        ((torch.zeros(2, 3), torch.zeros(4, 5)), {}, r"same D, got \(2, 3\) and \(4, 5\)"),
        ((torch.zeros(0, 3), torch.zeros(4, 3)), {}, "non-empty"),
        ((torch.zeros(2, 3), torch.zeros(4, 3)), {"k1": 0}, "k1 and k2 must be integers >= 1, got k1=0"),
        ((torch.zeros(2, 3), torch.zeros(4, 3)), {"k2": 1.5}, "k2=1.5"),
        ((torch.zeros(2, 3), torch.zeros(4, 3)), {"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
        ((torch.zeros(2, 3), torch.zeros(4, 3)), {"metric": "l1"}, "metric must be 'euclidean' or 'cosine'"),
        ((torch.full((2, 3), float("nan")), torch.zeros(4, 3)), {}, "must be finite"),
    ],
)
def test_argument_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        k_reciprocal_rerank(*args, **kwargs)


def test_size_guard_names_the_size_and_memory():
    # Market-1501 size, checked before anything is allocated
    with pytest.raises(
        ValueError, match=r"3368 query \+ 15913 gallery = 19281 items needs about 4\.2 GiB"
    ) as err:
        k_reciprocal_rerank(torch.zeros(3368, 1), torch.zeros(15913, 1), max_items=10_000)
    assert "max_items=10000" in str(err.value)
    assert rerank_memory_bytes(19281) == 3 * 4 * 19281**2
    assert k_reciprocal_rerank(torch.randn(3, 2), torch.randn(5, 2), max_items=8).shape == (3, 5)
