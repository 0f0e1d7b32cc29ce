"""Re-id on crops (Market-1501 protocol): CMC and mAP from a query x gallery score matrix.

Per query, the gallery is ranked by score; crops with the query's identity AND camera are
dropped (same-camera re-detections are too easy), junk crops (pid -1) are not in the gallery,
distractors (pid 0) stay as negatives. CMC rank-k = fraction of queries whose first correct
match is within the top k; AP is non-interpolated (mean precision at each correct match). Both
average over queries that keep at least one correct match. Equal scores keep gallery order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

JUNK_PID = -1


@dataclass(frozen=True)
class ReidResult:
    """Scalars mAP and rank1/5/10 (fractions), plus the full CMC curve and per-query AP."""

    mAP: float  # noqa: N815 - the field's name for it
    rank1: float
    rank5: float
    rank10: float
    num_valid_queries: int
    cmc: np.ndarray = field(repr=False)  #: cmc[k-1] = rank-k accuracy
    ap: np.ndarray = field(repr=False)  #: per query; NaN where the query has no correct match

    def rank(self, k: int) -> float:
        return float(self.cmc[min(k, len(self.cmc)) - 1]) if len(self.cmc) else 0.0


def evaluate_reid(
    scores: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    *,
    kind: Literal["similarity", "distance"] = "similarity",
    max_rank: int = 50,
    batch_size: int = 256,
) -> ReidResult:
    """Evaluate a Q x G matrix of similarities (higher = closer) or distances (`kind`)."""
    scores = np.asarray(scores)
    q_pids = np.asarray(query_pids, dtype=np.int64).reshape(-1)
    g_pids = np.asarray(gallery_pids, dtype=np.int64).reshape(-1)
    q_cams = np.asarray(query_cams, dtype=np.int64).reshape(-1)
    g_cams = np.asarray(gallery_cams, dtype=np.int64).reshape(-1)
    if scores.shape != (len(q_pids), len(g_pids)) or len(q_cams) != len(q_pids) or len(g_cams) != len(g_pids):
        raise ValueError(
            f"score matrix {scores.shape} does not match {len(q_pids)} queries x {len(g_pids)} gallery"
        )
    if kind not in ("similarity", "distance"):
        raise ValueError(f"kind must be 'similarity' or 'distance', got {kind!r}")
    not_junk = g_pids != JUNK_PID
    scores, g_pids, g_cams = scores[:, not_junk], g_pids[not_junk], g_cams[not_junk]

    num_queries, num_gallery = scores.shape
    depth = max(1, min(max_rank, num_gallery))
    first_hit = np.full(num_queries, -1, dtype=np.int64)
    ap = np.full(num_queries, np.nan)
    for lo in range(0, num_queries, batch_size):
        hi = min(lo + batch_size, num_queries)
        block = scores[lo:hi].astype(np.float64)
        order = np.argsort(-block if kind == "similarity" else block, axis=1, kind="stable")
        pids, cams = g_pids[order], g_cams[order]
        same_pid = pids == q_pids[lo:hi, None]
        kept = ~(same_pid & (cams == q_cams[lo:hi, None]))
        good = same_pid & kept
        rank = np.cumsum(kept, axis=1) - 1  # position among the kept crops
        has_good = good.any(axis=1)
        first_hit[lo:hi] = np.where(has_good, np.where(good, rank, num_gallery).min(axis=1), -1)
        hits_so_far = np.cumsum(good, axis=1)
        precision = np.where(good, hits_so_far / np.maximum(rank + 1, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[lo:hi] = np.where(has_good, precision.sum(axis=1) / good.sum(axis=1), np.nan)

    valid = first_hit >= 0
    if valid.any():
        cmc = (first_hit[valid, None] < np.arange(1, depth + 1)[None, :]).mean(axis=0)
        mean_ap = float(np.mean(ap[valid]))
    else:
        cmc, mean_ap = np.zeros(depth), 0.0

    def at(k: int) -> float:
        return float(cmc[min(k, depth) - 1])

    return ReidResult(mean_ap, at(1), at(5), at(10), int(valid.sum()), cmc, ap)
