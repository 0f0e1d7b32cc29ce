"""Person-search evaluation: mAP and top-k over a SearchProtocol, as the field computes them.

The protocol (docs/evaluation.md): for each query, every detection of every gallery image it
is searched in is a candidate scored by cosine similarity. In an image that holds the query
person, the highest-similarity detection whose IoU with the person's box reaches
min(0.5, wh / ((w+10)(h+10))) is the one positive; everything else is a negative.
AP = (1 / count_gt) * sum over positives of the precision at the positive's score, with tied
scores forming one threshold (scikit-learn's `average_precision_score` semantics); top-k is a hit
when fewer than k negatives score at least as high as the best positive (ties count against the
system, so a constant feature cannot score a perfect top-1).

Everything below needs only each positive's score and, per positive, the weighted number of
candidates scoring at least as much (a listed image named twice counts twice). Two kernels
compute them, with identical numbers: a sparse one (_search_sparse: only the listed image x
query pairs) for short gallery lists and a dense one (_search_dense: every query against every
detection) for long lists and the full-gallery protocols. `evaluate_search` picks one
(`path="auto"`) or takes the one asked for.

A similarity is the float64 dot product rounded to float32, so rankings and ties do not depend on
the BLAS kernel or the batch size. Both kernels compute float32 products first and recompute
exactly only the candidates within their proven error bound of a positive's score (CBGM, which
re-scores similarities, works on exact ones throughout), so their numbers are those of the exact
computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from personsearch.data.scenes import SearchProtocol
from personsearch.evaluation._search_common import Duplicates, GalleryDetections
from personsearch.evaluation._search_dense import search_dense
from personsearch.evaluation._search_sparse import search_sparse
from personsearch.evaluation.cbgm import CBGMOptions, QueryContext

# GalleryDetections and Duplicates are this module's API; they live in _search_common because
# both kernels need them too (importing them from here would be a cycle).
__all__ = [
    "Duplicates",
    "GalleryDetections",
    "SearchPath",
    "SearchScores",
    "TOP_K",
    "evaluate_search",
    "similarity",
]

SearchPath = Literal["auto", "sparse", "dense"]
TOP_K = (1, 5, 10)

#: `path="auto"` takes the sparse path while the listed (query, image) pairs are under this
#: fraction of all of them (and the protocol has no unlisted candidates).
SPARSE_FRACTION = 0.1


def similarity(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """Cosine similarities (dot products of L2-normalised features): float64 sums stored as float32."""
    q = np.asarray(query_feats, dtype=np.float64)
    g = np.asarray(gallery_feats, dtype=np.float64)
    return (q @ g.T).astype(np.float32)


@dataclass(frozen=True)
class SearchScores:
    """Per-query outcomes of a search evaluation, and their means."""

    protocol: str
    ks: tuple[int, ...]
    ap: np.ndarray  #: (Q,) average precision (already scaled by count_tp / count_gt)
    hits: np.ndarray  #: (Q, len(ks)) bool, top-k hit per k
    count_gt: np.ndarray  #: (Q,) listed entries holding the query person
    count_tp: np.ndarray  #: (Q,) positives found

    @property
    def mAP(self) -> float:  # noqa: N802 - the field's name for it
        return float(self.ap.mean()) if len(self.ap) else 0.0

    def top(self, k: int) -> float:
        """Fraction of queries with a positive among the k best-scored candidates."""
        column = self.ks.index(k)
        return float(self.hits[:, column].mean()) if len(self.hits) else 0.0

    def summary(self) -> dict[str, float]:
        """{"mAP": ..., "top1": ..., "top5": ..., ...} as fractions in 0..1."""
        out = {"mAP": self.mAP}
        out.update({f"top{k}": self.top(k) for k in self.ks})
        return out


def _finish(
    name: str,
    ks: tuple[int, ...],
    count_gt: np.ndarray,
    pos_query: np.ndarray,
    pos_score: np.ndarray,
    cand_at_least: np.ndarray,
) -> SearchScores:
    """AP and top-k from every positive's (query, score, weighted candidates scoring >= it)."""
    num_queries = len(count_gt)
    order = np.lexsort((-pos_score.astype(np.float64), pos_query))
    q, s, cand = pos_query[order], pos_score[order], cand_at_least[order]
    n = len(q)
    ap = np.zeros(num_queries)
    hits = np.zeros((num_queries, len(ks)), dtype=bool)
    count_tp = np.bincount(q, minlength=num_queries).astype(np.int64)
    if n:
        # positives scoring >= this one within its query: the end of its run of equal scores
        group_start = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
        run_end = np.flatnonzero(np.r_[(q[1:] != q[:-1]) | (s[1:] != s[:-1]), True])
        run_of = np.cumsum(np.r_[True, (q[1:] != q[:-1]) | (s[1:] != s[:-1])]) - 1
        first_of_query = group_start[np.cumsum(np.r_[True, q[1:] != q[:-1]]) - 1]
        pos_at_least = run_end[run_of] - first_of_query + 1
        precision = pos_at_least / cand
        ap = np.bincount(q, weights=precision, minlength=num_queries)
        ap = np.divide(ap, count_gt, out=np.zeros(num_queries), where=count_gt > 0)
        # the best positive opens each query's group
        negatives_above = cand[group_start] - pos_at_least[group_start]
        hits[q[group_start]] = negatives_above[:, None] < np.asarray(ks)[None, :]
    return SearchScores(name, ks, ap, hits, count_gt, count_tp)


def evaluate_search(
    protocol: SearchProtocol,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    *,
    duplicates: Duplicates = "original",
    ks: tuple[int, ...] = TOP_K,
    cbgm: CBGMOptions | None = None,
    query_context: QueryContext | None = None,
    batch_size: int = 1024,
    path: SearchPath = "auto",
) -> SearchScores:
    """Evaluate one search protocol.

    `gallery` holds the detections of every image in `protocol.images` (see
    GalleryDetections.from_flat), `query_feats` one L2-normalised feature per query, in protocol
    order. `duplicates` picks the original (OIM) handling of images listed twice or SeqNet's
    ("first"). `cbgm` turns on SeqNet's context re-scoring; it needs `query_context`.
    `batch_size` queries share one matrix product on the dense path (it changes no number).
    `path` picks the kernel: "sparse" (listed images only, so only for protocols without
    unlisted candidates), "dense", or "auto", the faster for the protocol; all give the same
    numbers.
    """
    query_feats = np.asarray(query_feats)
    if query_feats.ndim != 2 or len(query_feats) != len(protocol.queries):
        raise ValueError(
            f"{protocol.name}: need {len(protocol.queries)} query features, got shape {query_feats.shape}"
        )
    if gallery.num_images != len(protocol.images):
        raise ValueError(
            f"{protocol.name}: detections grouped over {gallery.num_images} images, "
            f"protocol has {len(protocol.images)}"
        )
    if len(gallery.feat_rows) and gallery.source_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(
            f"feature sizes differ: queries {query_feats.shape[1]}, detections {gallery.source_feats.shape[1]}"
        )
    context = None
    if cbgm is not None:
        if query_context is None:
            raise ValueError("CBGM needs the query images' context detections (query_context)")
        query_boxes = (
            np.stack([t.box for t in protocol.queries]) if protocol.queries else np.zeros((0, 4))
        )
        context = query_context.persons_per_query(query_boxes, cbgm.k2 - 1)
    ks = tuple(int(k) for k in ks)
    if _chosen_path(protocol, gallery, path) == "sparse":
        found = search_sparse(protocol, gallery, query_feats, duplicates, cbgm, context)
    else:
        found = search_dense(protocol, gallery, query_feats, duplicates, cbgm, context, batch_size)
    return _finish(protocol.name, ks, *found)


def _chosen_path(protocol: SearchProtocol, gallery: GalleryDetections, path: SearchPath) -> str:
    """The kernel `path` names; "auto": sparse while the listed pairs are few (it computes only
    them), dense otherwise."""
    if path not in ("auto", "sparse", "dense"):
        raise ValueError(f"path must be 'auto', 'sparse' or 'dense', got {path!r}")
    if path == "sparse" and protocol.unlisted != "none":
        # the sparse kernel never looks at an unlisted image: it would miss those candidates
        raise ValueError(
            f"{protocol.name}: the sparse path scores listed images only, but this protocol "
            f"also counts unlisted ones (unlisted={protocol.unlisted!r}); use 'dense' or 'auto'"
        )
    if path != "auto":
        return path
    listed_pairs = sum(len(t.gallery) for t in protocol.queries)
    all_pairs = len(protocol.queries) * len(protocol.images)
    fits_keys = (len(protocol.queries) + 1) * (len(gallery.image) + 1) < 2**32
    few = listed_pairs <= SPARSE_FRACTION * max(all_pairs, 1)
    return "sparse" if protocol.unlisted == "none" and fits_keys and few else "dense"
