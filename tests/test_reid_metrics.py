"""Re-ID metrics (Market-1501 protocol) against hand-computed rankings."""

from __future__ import annotations

import pytest
import torch

from visionzoo.tasks.reid_metrics import compute_reid_metrics, reid_distance

# 1-D features so the rankings are easy to read off: distance = |q - g|^2.
# gallery: (feature, pid, camid)
GALLERY = [
    (1.0, 2, 1),  # g0: wrong person for q0, the only match of q2
    (0.5, 1, 0),  # g1: q0's pid from q0's camera -> removed for q0
    (2.0, 1, 1),  # g2: match of q0
    (0.2, -1, 1),  # g3: junk -> always removed
    (3.0, 0, 2),  # g4: distractor -> stays, never a match
    (4.0, 1, 2),  # g5: match of q0
]
QUERIES = [
    (0.0, 1, 0),  # q0: filtered ranking g0, g2, g4, g5 -> matches at ranks 2 and 4
    (0.0, 3, 0),  # q1: no gallery item of pid 3 -> skipped
    (1.1, 2, 0),  # q2: g0 is nearest -> rank 1, AP 1
]


def _split(rows):
    f = torch.tensor([[r[0]] for r in rows])
    return f, torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def _run(queries=QUERIES, gallery=GALLERY, **kw):
    qf, qp, qc = _split(queries)
    gf, gp, gc = _split(gallery)
    return compute_reid_metrics(qf, gf, qp, gp, qc, gc, **kw)


def test_hand_computed_ranking_with_junk_and_same_camera_exclusion():
    m = _run()
    assert m["num_valid_queries"] == 2
    # q0: AP = (1/2 + 2/4) / 2 = 0.5 ; q2: AP = 1
    assert m["mAP"] == pytest.approx(0.75)
    assert m["rank1"] == pytest.approx(0.5)  # only q2 hits at rank 1
    assert m["rank5"] == pytest.approx(1.0)
    assert m["rank10"] == pytest.approx(1.0)


def test_single_query_ranks_exact():
    m = _run(queries=[QUERIES[0]])
    assert m["mAP"] == pytest.approx(0.5)
    assert m["rank1"] == 0.0 and m["rank5"] == 1.0
    # first match at filtered rank 2: rank-k for k >= 2 is 1
    m2 = _run(queries=[QUERIES[0]], max_rank=2)
    assert m2["rank1"] == 0.0 and m2["rank2"] == 1.0
    assert "rank5" not in m2 and "rank10" not in m2


def test_junk_and_same_camera_items_would_change_the_result():
    # same-camera item g1 relabelled to another camera becomes a rank-2 match (raw ranking g3, g1, ...)
    gallery = list(GALLERY)
    gallery[1] = (0.5, 1, 5)
    m = _run(queries=[QUERIES[0]], gallery=gallery)
    # filtered ranking: g1 (match), g0, g2 (match), g4, g5 (match) -> AP = (1/1 + 2/3 + 3/5) / 3
    assert m["rank1"] == 1.0
    assert m["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_distractors_stay_in_gallery():
    # without the distractor g4, q0's third item is g5: AP = (1/2 + 2/3) / 2
    gallery = [g for i, g in enumerate(GALLERY) if i != 4]
    m = _run(queries=[QUERIES[0]], gallery=gallery)
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a valid gallery match"):
        _run(queries=[QUERIES[1]])


def test_cosine_metric():
    qf = torch.tensor([[1.0, 0.0]])
    gf = torch.tensor([[10.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    # cosine: g0 nearest (wrong pid), then g1 (match), g2 (match)
    m = compute_reid_metrics(qf, gf, [7], [8, 7, 7], [0], [1, 1, 1], metric="cosine")
    assert m["rank1"] == 0.0
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    d = reid_distance(qf, gf, "euclidean")
    assert d[0].tolist() == pytest.approx([81 + 1, 1.0, 2.0])


def _naive(qf, gf, qp, gp, qc, gc, max_rank):
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    aps, cmc, valid = [], [0.0] * max_rank, 0
    for i in range(len(qf)):
        ranked = sorted(range(len(gf)), key=lambda j: (float(dist[i, j]), j))
        ranked = [j for j in ranked if int(gp[j]) != -1 and not (gp[j] == qp[i] and gc[j] == qc[i])]
        hits = [int(gp[j] == qp[i]) for j in ranked]
        if not any(hits):
            continue
        valid += 1
        first = hits.index(1)
        for k in range(first, max_rank):
            cmc[k] += 1
        found, precs = 0, []
        for r, h in enumerate(hits, 1):
            if h:
                found += 1
                precs.append(found / r)
        aps.append(sum(precs) / len(precs))
    return sum(aps) / valid, [c / valid for c in cmc]


def test_matches_naive_reference_on_random_data():
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(12, 4, generator=g), torch.randn(40, 4, generator=g)
    qp, gp = torch.randint(0, 5, (12,), generator=g), torch.randint(-1, 5, (40,), generator=g)
    qc, gc = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (40,), generator=g)
    m = compute_reid_metrics(qf, gf, qp, gp, qc, gc, max_rank=10)
    mAP, cmc = _naive(qf.double(), gf.double(), qp, gp, qc, gc, 10)
    assert m["mAP"] == pytest.approx(mAP, abs=1e-6)
    assert [m["rank1"], m["rank5"], m["rank10"]] == pytest.approx([cmc[0], cmc[4], cmc[9]], abs=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one of each per feature"):
        compute_reid_metrics(torch.zeros(2, 3), torch.zeros(3, 3), [1], [1, 2, 3], [0, 0], [1, 1, 1])
