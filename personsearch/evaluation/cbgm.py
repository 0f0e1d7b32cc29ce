"""Context Bipartite Graph Matching (CBGM), the re-scoring step SeqNet (Li & Miao, AAAI 2021) adds
to search evaluation. Off by default; the published tables without "+CBGM" do not use it.

SeqNet's definition, for one query:
1. Take the k1 highest-similarity gallery detections among the query's candidates; the images
   they lie in are re-scored (k1 = 10 on CUHK-SYSU, 30 on PRW).
2. For each such image, build a complete bipartite graph between the query image's persons (the
   query itself plus the k2 - 1 most confident other detections of the query image; k2 = 3 on
   CUHK-SYSU, 4 on PRW) and every detection of the gallery image, weighted by similarity.
3. Find the maximum-weight matching (Kuhn-Munkres). If the query person is matched to a gallery
   detection, that detection's similarity becomes the largest weight among the matched pairs.

Similarities here are float32 values of float64 dot products, like the rest of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personsearch.boxes import paired_iou

#: A context detection overlapping the query box by more than this is the query person itself
#: (SeqNet's query-image pass puts the query box first and suppresses overlaps with NMS at 0.4).
QUERY_OVERLAP_IOU = 0.4


@dataclass(frozen=True)
class CBGMOptions:
    """CBGM's two sizes: re-scored gallery detections (k1) and query-image persons (k2)."""

    k1: int = 10
    k2: int = 3

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError(f"CBGM needs k1 >= 1 and k2 >= 1, got k1={self.k1}, k2={self.k2}")


#: SeqNet's settings per benchmark.
CBGM_DEFAULTS = {"cuhk-sysu": CBGMOptions(k1=10, k2=3), "prw": CBGMOptions(k1=30, k2=4)}


@dataclass(frozen=True)
class QueryContext:
    """The persons detected in each query image (flat arrays, one row per detection).

    `query_index` says which query's image a row belongs to. Rows overlapping the query's own
    box (IoU > 0.4, when boxes are given) are the query person and are ignored.
    """

    query_index: np.ndarray  #: (K,) int index into the protocol's queries
    feats: np.ndarray  #: (K, D) L2-normalised features
    scores: np.ndarray  #: (K,) detection confidence
    boxes: np.ndarray | None = None  #: (K, 4) x1 y1 x2 y2, optional

    def persons_per_query(self, query_boxes: np.ndarray, keep: int) -> list[np.ndarray]:
        """For every query, the float64 features of its `keep` most confident context persons."""
        query_boxes = np.asarray(query_boxes, dtype=np.float64).reshape(-1, 4)
        index = np.asarray(self.query_index, dtype=np.int64).reshape(-1)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        feats = np.asarray(self.feats)
        usable = np.ones(len(index), dtype=bool)
        if self.boxes is not None:
            boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
            usable = paired_iou(boxes, query_boxes[index]) <= QUERY_OVERLAP_IOU
        # group by query, most confident first (stable: earlier rows win ties)
        order = np.lexsort((-scores, index))
        order = order[usable[order]]
        out: list[np.ndarray] = []
        starts = np.searchsorted(index[order], np.arange(len(query_boxes) + 1))
        for q in range(len(query_boxes)):
            rows = order[starts[q] : starts[q + 1]][:keep]
            out.append(feats[rows].astype(np.float64))
        return out


def top_candidate_images(sims: np.ndarray, images: np.ndarray, k1: int) -> np.ndarray:
    """The distinct images holding the k1 highest-similarity candidate detections."""
    top = np.argsort(-np.asarray(sims), kind="stable")[:k1]
    return np.unique(np.asarray(images)[top])


def rescore_image(
    query_sims: np.ndarray, context_feats: np.ndarray, gallery_feats: np.ndarray
) -> np.ndarray:
    """Re-score one gallery image's detections for one query by context matching.

    `query_sims` (n,) are the query's similarities to the image's n detections, `context_feats`
    (k, D) the other query-image persons, `gallery_feats` (n, D) the image's detections. Returns
    the new similarities (only the detection matched to the query can change).
    """
    from scipy.optimize import linear_sum_assignment

    query_sims = np.asarray(query_sims, dtype=np.float32)
    if len(context_feats):
        context = (context_feats @ np.asarray(gallery_feats, dtype=np.float64).T).astype(np.float32)
        weights = np.vstack([query_sims[None, :], context])
    else:
        weights = query_sims[None, :]
    rows, cols = linear_sum_assignment(weights, maximize=True)
    new = query_sims.copy()
    matched_query = cols[rows == 0]
    if len(matched_query):
        new[matched_query[0]] = weights[rows, cols].max()
    return new
