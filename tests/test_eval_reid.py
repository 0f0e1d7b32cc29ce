"""Market-1501 re-id CMC / mAP (personsearch.evaluation.reid) against the reference loop and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from reference_eval import reference_reid

from personsearch.evaluation.reid import evaluate_reid


def random_split(seed, num_query=30, num_gallery=200, ids=15, cams=4, quantise=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids, num_query)
    q_cams = rng.integers(1, cams + 1, num_query)
    g_pids = rng.integers(-1, ids, num_gallery)  # -1 junk, 0 distractors
    g_cams = rng.integers(1, cams + 1, num_gallery)
    centres = rng.standard_normal((ids, 8))
    q = centres[q_pids] + rng.standard_normal((num_query, 8))
    g = centres[np.clip(g_pids, 0, None)] + rng.standard_normal((num_gallery, 8))
    dist = np.linalg.norm(q[:, None] - g[None], axis=2)
    if quantise:
        dist = np.round(dist)  # many ties
    return dist, q_pids, q_cams, g_pids, g_cams


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed, quantise):
    dist, q_pids, q_cams, g_pids, g_cams = random_split(seed, quantise=quantise)
    cmc, mean_ap, aps = reference_reid(dist, q_pids, q_cams, g_pids, g_cams)
    r = evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, kind="distance", batch_size=7)
    assert r.mAP == pytest.approx(mean_ap, abs=1e-12)
    assert [r.rank1, r.rank5, r.rank10] == cmc
    np.testing.assert_allclose(r.ap[~np.isnan(r.ap)], aps, atol=1e-12)
    # the same matrix as similarities gives the same numbers
    s = evaluate_reid(-dist, q_pids, g_pids, q_cams, g_cams, kind="similarity")
    assert s.mAP == pytest.approx(r.mAP, abs=1e-12) and s.rank1 == r.rank1


@pytest.mark.parametrize("seed", [3, 4])
def test_infinite_and_integer_scores_match_reference(seed):
    """Infinite distances (shared with dropped same-camera crops) and integer matrices, with
    ties everywhere: positions still follow gallery order among the kept crops."""
    dist, q_pids, q_cams, g_pids, g_cams = random_split(seed, num_query=40, quantise=True)
    rng = np.random.default_rng(seed)
    dist[rng.random(dist.shape) < 0.15] = np.inf
    dist[:, :3] = np.inf  # whole columns, junk and dropped crops among them
    cmc, mean_ap, aps = reference_reid(dist, q_pids, q_cams, g_pids, g_cams)
    r = evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, kind="distance", batch_size=16)
    assert r.mAP == pytest.approx(mean_ap, abs=1e-12) and [r.rank1, r.rank5, r.rank10] == cmc
    np.testing.assert_allclose(r.ap[~np.isnan(r.ap)], aps, atol=1e-12)
    finite = np.where(np.isinf(dist), 99, dist).astype(np.int64)
    cmc, mean_ap, _ = reference_reid(finite, q_pids, q_cams, g_pids, g_cams)
    r = evaluate_reid(finite, q_pids, g_pids, q_cams, g_cams, kind="distance")
    assert r.mAP == pytest.approx(mean_ap, abs=1e-12) and [r.rank1, r.rank5, r.rank10] == cmc


def test_nan_scores_are_rejected():
    dist, q_pids, q_cams, g_pids, g_cams = random_split(0)
    dist[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, kind="distance")


def test_hand_worked_cmc_and_ap():
    # query pid 1 camera 1; gallery ranked by distance:
    #   g0 pid 1 cam 1 (same camera: dropped), g1 pid 0 (distractor), g2 pid 1 cam 2,
    #   g3 pid -1 (junk, not in the gallery), g4 pid 2, g5 pid 1 cam 3
    dist = np.array([[0.1, 0.2, 0.3, 0.35, 0.4, 0.5]])
    g_pids = np.array([1, 0, 1, -1, 2, 1])
    g_cams = np.array([1, 2, 2, 1, 3, 3])
    r = evaluate_reid(dist, np.array([1]), g_pids, np.array([1]), g_cams, kind="distance")
    # kept ranking: g1 (miss), g2 (hit, rank 2), g4 (miss), g5 (hit, rank 4)
    assert r.rank1 == 0.0 and r.rank5 == 1.0
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.rank(2) == 1.0


def test_queries_without_a_correct_match_are_left_out():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    g_pids, g_cams = np.array([1, 5]), np.array([2, 2])
    # query 0 (pid 1, cam 1) finds g0 first; query 1 (pid 7) has no correct match at all
    r = evaluate_reid(dist, np.array([1, 7]), g_pids, np.array([1, 1]), g_cams, kind="distance")
    assert r.num_valid_queries == 1 and r.mAP == 1.0 and r.rank1 == 1.0
    assert np.isnan(r.ap[1])


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        evaluate_reid(np.zeros((2, 3)), [1, 2], [1, 2], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="kind"):
        evaluate_reid(np.zeros((1, 1)), [1], [1], [1], [2], kind="cosine")
