"""Person-search evaluation: mAP and top-k over a SearchProtocol, as the field computes them.

The protocol (../shared/evaluation.md): for each query, every detection of every gallery image it
is searched in is a candidate scored by cosine similarity. In an image that holds the query
person, the highest-similarity detection whose IoU with the person's box reaches
min(0.5, wh / ((w+10)(h+10))) is the one positive; everything else is a negative.
AP = (1 / count_gt) * sum over positives of the precision at the positive's score, with tied
scores forming one threshold (scikit-learn's `average_precision_score` semantics); top-k is a hit
when fewer than k negatives score at least as high as the best positive (ties count against the
system, so a constant feature cannot score a perfect top-1).

Everything below needs only each positive's score and, per positive, the weighted number of
candidates scoring at least as much (a listed image named twice counts twice). Two paths compute
the similarities: a sparse one for short gallery lists (only listed image x query pairs, grouped
per image into small matrix products; queries without a positive are skipped, and each positive
is compared only with its own query's candidates that reach the query's lowest positive) and a
dense one (one matrix product per batch of queries against every detection, counts by
comparison) for long lists and the full-gallery protocols.

A similarity is the float64 dot product rounded to float32, so rankings and ties do not depend on
the BLAS kernel or the batch size. The sparse path computes float32 products first (half the
memory traffic) and recomputes exactly only the candidates within their proven error bound of a
positive's score, so its numbers are those of the exact computation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import numpy as np

from personsearch.data.scenes import SearchProtocol
from personsearch.evaluation.boxes import paired_iou, search_iou_threshold
from personsearch.evaluation.cbgm import (
    CBGMOptions,
    QueryContext,
    rescore_image,
    top_candidate_images,
)

Duplicates = Literal["original", "first"]
T = TypeVar("T")
TOP_K = (1, 5, 10)

#: Use the sparse path while the listed (query, image) pairs are under this fraction of all of them.
SPARSE_FRACTION = 0.1
#: Largest number of (positive, candidate) comparisons materialised at once.
_CHUNK_ELEMENTS = 1 << 23
#: Threads for the sparse path's per-image products, and the images that make one worth it.
_MAX_THREADS = 4
_IMAGES_PER_THREAD = 500
#: Candidates that make a second thread worth it when counting.
_ELEMENTS_PER_THREAD = 500_000


def similarity(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """Cosine similarities (dot products of L2-normalised features): float64 sums stored as float32."""
    q = np.asarray(query_feats, dtype=np.float64)
    g = np.asarray(gallery_feats, dtype=np.float64)
    return (q @ g.T).astype(np.float32)


@dataclass(frozen=True)
class GalleryDetections:
    """Detections grouped per gallery image (indices into SearchProtocol.images), thresholded.

    Rows are sorted by image; image g's detections are rows offsets[g]:offsets[g+1]. Features
    stay in the caller's array (`source_feats`, row `feat_rows[i]` for detection i) until a path
    needs them all in order: the sparse path reads them image by image, without a full copy.
    """

    image: np.ndarray  #: (M,) int64, sorted
    boxes: np.ndarray  #: (M, 4) x1 y1 x2 y2
    scores: np.ndarray  #: (M,)
    offsets: np.ndarray  #: (G + 1,) int64
    source_feats: np.ndarray  #: (N, D) L2-normalised features as given (N >= M)
    feat_rows: np.ndarray  #: (M,) row of source_feats holding each detection's feature
    #: A proven upper bound of every source_feats row's norm (a validated results file knows
    #: one), or None: the evaluator then computes one, reading every feature once.
    norm_bound: float | None = None

    @classmethod
    def from_flat(
        cls,
        det_image: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        feats: np.ndarray,
        num_images: int,
        det_thresh: float = 0.5,
        norm_bound: float | None = None,
    ) -> GalleryDetections:
        """Keep detections scored at least `det_thresh` (NaN scores never are) and group them by
        image (stable). `feats` are kept as given, not copied."""
        det_image = np.asarray(det_image, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores).reshape(-1)
        boxes = np.asarray(boxes).reshape(-1, 4)
        feats = np.asarray(feats)
        if not (len(det_image) == len(scores) == len(boxes) == len(feats)):
            raise ValueError(
                f"detection arrays disagree in length: image {len(det_image)}, boxes {len(boxes)}, "
                f"scores {len(scores)}, feats {len(feats)}"
            )
        if len(det_image) and (det_image.min() < 0 or det_image.max() >= num_images):
            raise ValueError(f"det_image must index {num_images} images")
        keep = np.flatnonzero(scores >= det_thresh)
        order = keep[np.argsort(det_image[keep], kind="stable")]
        image = det_image[order]
        offsets = np.searchsorted(image, np.arange(num_images + 1)).astype(np.int64)
        return cls(image, boxes[order], scores[order], offsets, feats, order, norm_bound)

    @cached_property
    def feats(self) -> np.ndarray:
        """(M, D) every detection's feature, in row order (a copy, made on first use)."""
        return self.source_feats.take(self.feat_rows, axis=0)

    @property
    def num_images(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Detections per image."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class SearchResult:
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


@dataclass(frozen=True)
class _Entries:
    """The protocol flattened: one row per evaluated listed entry, queries in order."""

    query: np.ndarray  #: (E,) query index
    image: np.ndarray  #: (E,) gallery image index
    gt: np.ndarray  #: (E, 4) float32 query person's box, NaN where absent
    holds: np.ndarray  #: (E,) bool
    count_gt: np.ndarray  #: (Q,) holding entries, every entry counted
    named_query: np.ndarray  #: (N,) every listed entry (evaluated or not): query index
    named_image: np.ndarray  #: (N,) ... and image index
    own_image: np.ndarray  #: (Q,) index of the query's own image, -1 if not a gallery image
    camera: np.ndarray  #: (Q,) query camera


def _flatten_protocol(protocol: SearchProtocol, duplicates: Duplicates) -> _Entries:
    if duplicates not in ("original", "first"):
        raise ValueError(f"duplicates must be 'original' or 'first', got {duplicates!r}")
    queries = protocol.queries
    num_images = len(protocol.images)
    lengths = np.array([len(t.gallery) for t in queries], dtype=np.int64)
    named_query = np.repeat(np.arange(len(queries), dtype=np.int64), lengths)
    if len(queries) and lengths.sum():
        named_image = np.concatenate([t.gallery for t in queries])
        gt = np.concatenate([t.gt_boxes for t in queries])
    else:
        named_image = np.zeros(0, dtype=np.int64)
        gt = np.zeros((0, 4), dtype=np.float32)
    if len(named_image) and (named_image.min() < 0 or named_image.max() >= num_images):
        raise ValueError(f"{protocol.name}: gallery indices outside the {num_images} images")
    holds = ~np.isnan(gt[:, 0])
    count_gt = np.bincount(named_query[holds], minlength=len(queries)).astype(np.int64)
    query, image = named_query, named_image  # every listed entry is evaluated (OIM)
    if duplicates == "first":
        # SeqNet: an image listed twice is evaluated once, with its first entry's box
        _, first = np.unique(named_query * num_images + named_image, return_index=True)
        evaluated = np.sort(first)
        query, image, gt, holds = query[evaluated], image[evaluated], gt[evaluated], holds[evaluated]
    index = protocol.image_index()
    own = np.array([index.get(t.image, -1) for t in queries], dtype=np.int64)
    camera = np.array([t.camera for t in queries], dtype=np.int64)
    return _Entries(
        query=query,
        image=image,
        gt=gt,
        holds=holds,
        count_gt=count_gt,
        named_query=named_query,
        named_image=named_image,
        own_image=own,
        camera=camera,
    )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for every (s, n): the vectorised gather index."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.cumsum(lengths) - lengths
    return np.repeat(starts - seg_start, lengths) + np.arange(total, dtype=np.int64)


def _qualifying_pairs(entries: _Entries, gallery: GalleryDetections) -> tuple[np.ndarray, np.ndarray]:
    """(entry, detection) pairs whose IoU with the entry's ground truth reaches the threshold."""
    holding = np.flatnonzero(entries.holds)
    counts = gallery.counts[entries.image[holding]]
    which = np.repeat(np.arange(len(holding)), counts)
    det = _ranges(gallery.offsets[entries.image[holding]], counts)
    gt = entries.gt[holding].astype(np.float64)
    ok = paired_iou(gallery.boxes[det], gt[which]) >= search_iou_threshold(gt)[which]
    return holding[which[ok]], det[ok]


def _positive_scores(
    qual_entry: np.ndarray, qual_sim: np.ndarray, entry_query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per entry with a qualifying detection: (query, highest similarity) - its one positive."""
    if len(qual_entry) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, qual_entry[1:] != qual_entry[:-1]])
    return entry_query[qual_entry[starts]], np.maximum.reduceat(qual_sim, starts)


def _count_at_least(
    sims: np.ndarray,
    pair_bounds: np.ndarray,
    pair_query: np.ndarray,
    pair_weight: np.ndarray | None,
    pos_query: np.ndarray,
    pos_score: np.ndarray,
    exact: _ExactPairs | None,
    row_det: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Per positive: weighted count of its query's candidates scoring >= it.

    Pair p's candidates are rows pair_bounds[p]:pair_bounds[p + 1] of `sims` (any pair order);
    `pos_query` is sorted. A candidate can only count for a positive of its own query, and only
    if it reaches that query's lowest positive: one pass over every candidate keeps those
    (usually few), and only they are compared with their query's positives. With `exact`
    given, `sims` are fast float32 products within `exact.bound` of the exact values:
    candidates clearly above or below a positive are decided from them, and only those inside
    the error band are recomputed exactly (`row_det(pairs, rows)` names their detections).
    """
    num = len(pos_query)
    count = np.zeros(num, dtype=np.int64)
    if num == 0 or len(sims) == 0:
        return count
    upper, lower = _band(pos_query, pos_score, exact)
    num_queries = max(int(pair_query.max(initial=-1)), int(pos_query[-1])) + 1
    pos_bounds = np.searchsorted(pos_query, np.arange(num_queries + 1))
    # each query's lowest threshold (+inf without a positive): a candidate below it counts nowhere
    has_pos = np.flatnonzero(pos_bounds[1:] > pos_bounds[:-1])
    floor = np.full(num_queries, np.inf, dtype=np.float32)
    floor[has_pos] = np.minimum.reduceat(lower, pos_bounds[has_pos])
    pair_floor = np.repeat(floor[pair_query], np.diff(pair_bounds))
    kept = np.concatenate(_in_threads(
        lambda rows: rows.start + np.flatnonzero(sims[rows] >= pair_floor[rows]),
        len(sims), _ELEMENTS_PER_THREAD,
    ))
    pair = np.searchsorted(pair_bounds, kept, side="right") - 1
    query = pair_query[pair]
    per_row = pos_bounds[query + 1] - pos_bounds[query]
    bands: list[tuple[np.ndarray, np.ndarray]] = []  # (positive, kept index)
    for lo, hi in _chunks(per_row, _CHUNK_ELEMENTS):
        n = per_row[lo:hi]
        owner = _ranges(pos_bounds[query[lo:hi]], n)  # every (kept row, positive of its query)
        row = np.repeat(np.arange(lo, hi), n)
        values = sims[kept[row]]
        weight = None if pair_weight is None else pair_weight[pair[row]]
        above = values >= upper[owner]
        count += _weighted_count(above, owner, weight, num)
        if exact is not None:
            band = np.flatnonzero((values >= lower[owner]) & ~above)
            bands.append((owner[band], row[band]))
    if exact is not None and bands:
        owner = np.concatenate([b[0] for b in bands])
        row = np.concatenate([b[1] for b in bands])
        weight = None if pair_weight is None else pair_weight[pair[row]]
        det = row_det(pair[row], kept[row])
        above = exact(pos_query[owner], det) >= pos_score[owner]
        count += _weighted_count(above, owner, weight, num)
    return count


def _band(
    pos_query: np.ndarray, pos_score: np.ndarray, exact: _ExactPairs | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per positive, (upper, lower) float32 thresholds on approximate similarities: a candidate
    at least `upper` surely scores at least the positive, one under `lower` surely does not.
    Without `exact` the similarities are exact and both are the score."""
    if exact is None:
        score = np.asarray(pos_score, dtype=np.float32)
        return score, score
    bound = exact.bound[pos_query]
    score64 = pos_score.astype(np.float64)
    upper = np.nextafter((score64 + bound).astype(np.float32), np.float32(np.inf))
    lower = np.nextafter((score64 - bound).astype(np.float32), np.float32(-np.inf))
    return upper, lower


def _weighted_count(
    flags: np.ndarray, owner: np.ndarray, weight: np.ndarray | None, size: int
) -> np.ndarray:
    """Per owner: how many (or how much weight) of its flags are set."""
    if weight is None:
        return np.bincount(owner[flags], minlength=size).astype(np.int64)
    return np.bincount(owner[flags], weights=weight[flags], minlength=size).astype(np.int64)


def _chunks(lengths: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive [lo, hi) spans of `lengths` summing to about `budget` (at least one item)."""
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(lengths):
        start = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, start + budget, side="right")))
        yield lo, hi
        lo = hi


class _ExactPairs:
    """Exact similarities of chosen (query, detection) pairs, and the error bound of float32 products.

    Float32 products of D-dim vectors are within gamma_D * |q| * |f| of the true dot product
    (gamma_D = D u / (1 - D u), u = 2^-24, any summation order); casting the inputs to float32
    and rounding the exact value to float32 add at most 3 u |q| |f| more. Detections are rows
    of `feats`, `det_norm()` a bound on their norms (_max_row_norm: streaming every row is cheaper
    than gathering the chosen ones), asked for on first use of `bound`. Pairs computed once are
    remembered: the positives found first come back in the error bands of the counting.
    """

    def __init__(self, queries: np.ndarray, feats: np.ndarray, det_norm: Callable[[], float]) -> None:
        self.queries = queries
        self.feats = feats
        self._det_norm = det_norm
        self._known_keys = np.zeros(0, dtype=np.int64)
        self._known_values = np.zeros(0, dtype=np.float32)

    @cached_property
    def bound(self) -> np.ndarray:
        """(Q,) per query: how far a float32 product may be from the exact similarity."""
        dim = self.queries.shape[1]
        u = 2.0**-24
        gamma = dim * u / (1 - dim * u)
        return (gamma + 4 * u) * _row_norms(self.queries) * self._det_norm() * 1.001

    def __call__(self, query: np.ndarray, det: np.ndarray, threads: int = _MAX_THREADS) -> np.ndarray:
        """Exact similarities of pairs (query[i], detection row det[i]), on up to `threads`."""
        keys = np.asarray(query, dtype=np.int64) * len(self.feats) + det
        out = np.empty(len(keys), dtype=np.float32)
        at = np.minimum(np.searchsorted(self._known_keys, keys), len(self._known_keys) - 1)
        known = (self._known_keys[at] == keys) if len(self._known_keys) else np.zeros(len(keys), bool)
        out[known] = self._known_values[at[known]]
        missing = np.flatnonzero(~known)
        out[missing] = self._compute(query[missing], det[missing], threads)
        keys = np.r_[self._known_keys, keys[missing]]
        order = np.argsort(keys)
        self._known_keys = keys[order]
        self._known_values = np.r_[self._known_values, out[missing]][order]
        return out

    def _compute(self, query: np.ndarray, det: np.ndarray, threads: int, chunk: int = 1024) -> np.ndarray:
        out = np.empty(len(query), dtype=np.float32)

        def part(span: slice) -> None:
            for lo in range(span.start, span.stop, chunk):
                hi = min(lo + chunk, span.stop)
                q = self.queries.take(query[lo:hi], axis=0)
                f = self.feats.take(det[lo:hi], axis=0)
                # cast to float64 (exactly) and summed there: float32 x float32 products are exact
                out[lo:hi] = np.einsum("ij,ij->i", q, f, dtype=np.float64)

        _in_threads(part, len(query), 2 * chunk, threads)
        return out


def _max_row_norm(x: np.ndarray, threads: int = _MAX_THREADS, chunk: int = 8192) -> float:
    """Upper bound of the largest row norm of `x` (computed in slices, on up to `threads`)."""
    starts = range(0, len(x), chunk)
    maxima = np.zeros(len(starts))

    def part(span: slice) -> None:
        for i in range(span.start, span.stop):
            maxima[i] = _row_norms(x[starts[i] : starts[i] + chunk]).max()

    _in_threads(part, len(starts), 2, threads)
    return float(maxima.max(initial=0.0))


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Upper bounds of the rows' Euclidean norms, without a converted copy of `x`.

    Computed in `x`'s own precision; the squared norm's rounding error is at most gamma_D times
    itself, which the 1 / (1 - gamma_D) factor covers.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    eps = np.finfo(x.dtype).eps / 2
    gamma = x.shape[1] * eps / (1 - x.shape[1] * eps) if x.ndim == 2 else 0.0
    squares = np.einsum("ij,ij->i", x, x).astype(np.float64)
    return np.sqrt(squares / (1 - gamma)) * (1 + 2 * eps)


def _finish(
    name: str,
    ks: tuple[int, ...],
    count_gt: np.ndarray,
    pos_query: np.ndarray,
    pos_score: np.ndarray,
    cand_at_least: np.ndarray,
) -> SearchResult:
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
    return SearchResult(name, ks, ap, hits, count_gt, count_tp)


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
) -> SearchResult:
    """Evaluate one search protocol.

    `gallery` holds the detections of every image in `protocol.images` (see
    GalleryDetections.from_flat), `query_feats` one L2-normalised feature per query, in protocol
    order. `duplicates` picks the original (OIM) handling of images listed twice or SeqNet's
    ("first"). `cbgm` turns on SeqNet's context re-scoring; it needs `query_context`.
    `batch_size` queries share one matrix product on the dense path (it changes no number).
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
        query_boxes = np.stack([t.box for t in protocol.queries]) if protocol.queries else np.zeros((0, 4))
        context = query_context.persons_per_query(query_boxes, cbgm.k2 - 1)
    ks = tuple(int(k) for k in ks)
    listed_pairs = sum(len(t.gallery) for t in protocol.queries)
    all_pairs = len(protocol.queries) * len(protocol.images)
    fits_keys = (len(protocol.queries) + 1) * (len(gallery.image) + 1) < 2**32
    if protocol.unlisted == "none" and fits_keys and listed_pairs <= SPARSE_FRACTION * max(all_pairs, 1):
        with ThreadPoolExecutor(1) as background:
            count_gt, pos_query, pos_score, cand = _sparse(
                protocol, gallery, query_feats, duplicates, cbgm, context, background
            )
        return _finish(protocol.name, ks, count_gt, pos_query, pos_score, cand)
    entries = _flatten_protocol(protocol, duplicates)
    qual_entry, qual_det = _qualifying_pairs(entries, gallery)
    pos_query, pos_score, cand = _dense(
        protocol, entries, gallery, query_feats, qual_entry, qual_det, cbgm, context, batch_size
    )
    return _finish(protocol.name, ks, entries.count_gt, pos_query, pos_score, cand)


def _sparse(
    protocol: SearchProtocol,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    duplicates: Duplicates,
    cbgm: CBGMOptions | None,
    context: list[np.ndarray] | None,
    background: ThreadPoolExecutor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates = listed images only: similarities of each (query, listed image) pair.

    Pairs are laid out image by image, so each image's detections meet the queries listing it
    in one small matrix product (memory-bound: float32 unless CBGM needs exact values first).
    Without CBGM, the `background` thread streams the detections' norm bound and finds the
    positives' exact scores while this one prepares and computes the products (numpy releases
    the GIL). Returns count_gt and, per positive, its query, score and candidates at least as
    high.
    """
    fast = cbgm is None
    if fast:
        # detections are named by their row in the caller's array: no reordered copy is made
        known = gallery.norm_bound
        det_norm = (
            (lambda: known) if known is not None
            else background.submit(_max_row_norm, gallery.source_feats, 1).result
        )
        exact = _ExactPairs(query_feats, gallery.source_feats, det_norm)
    entries = _flatten_protocol(protocol, duplicates)
    qual_entry, qual_det = _qualifying_pairs(entries, gallery)
    if fast:

        def find_positives() -> tuple[np.ndarray, np.ndarray]:
            qual_sim = exact(entries.query[qual_entry], gallery.feat_rows[qual_det], threads=1)
            exact.bound  # noqa: B018 - computed here, off the main thread
            return _positive_scores(qual_entry, qual_sim, entries.query)

        positives = background.submit(find_positives)
    # a query without any positive scores 0 whatever its candidates: its pairs are skipped
    has_positive = np.zeros(len(entries.count_gt), dtype=bool)
    has_positive[entries.query[qual_entry]] = True
    searched = np.flatnonzero(has_positive[entries.query])
    pair_query, pair_image, weight, entry_pair = _unique_pairs(
        entries.query[searched], entries.image[searched], not fast
    )
    pair_len = gallery.counts[pair_image]
    pair_bounds = np.r_[0, np.cumsum(pair_len)]  # pair p's detections are these rows of `sims`
    sims = _pair_similarities(
        np.asarray(query_feats, dtype=np.float32 if fast else np.float64),
        gallery,
        pair_query,
        pair_image,
        pair_bounds[:-1],
    )
    if fast:
        pos_query, pos_score = positives.result()
    else:
        exact = None
        if context is not None:
            by_query = _stable_argsort(pair_query)  # images stay sorted within each query
            _cbgm_sparse(
                sims, pair_query[by_query], pair_image[by_query], pair_bounds[:-1][by_query],
                pair_len[by_query], gallery, cbgm, context,
            )
        pair_of = entry_pair[np.searchsorted(searched, qual_entry)]
        qual_sim = sims[pair_bounds[pair_of] + (qual_det - gallery.offsets[pair_image[pair_of]])]
        pos_query, pos_score = _positive_scores(qual_entry, qual_sim, entries.query)

    def row_det(pair: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return gallery.feat_rows[gallery.offsets[pair_image[pair]] + (rows - pair_bounds[pair])]

    cand = _count_at_least(
        sims, pair_bounds, pair_query, weight if (weight != 1).any() else None,
        pos_query, pos_score, exact, row_det,
    )
    return entries.count_gt, pos_query, pos_score, cand


def _stable_argsort(values: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers: numpy's radix sort when they fit 16 bits (ten
    times faster than its sort of int64)."""
    if len(values) and values.max() < 1 << 16:
        values = values.astype(np.uint16)
    return np.argsort(values, kind="stable")


def _unique_pairs(
    query: np.ndarray, image: np.ndarray, entry_pairs: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct (query, image) pairs sorted by image then query, how many entries name each
    pair, and (with `entry_pairs`) each entry's pair: np.unique of the pairs, by radix sorts.
    Entries come query by query, so one stable pass by image leaves each image's queries in
    order."""
    if len(query) and (query[1:] < query[:-1]).any():
        order = _stable_argsort(query)
        order = order[_stable_argsort(image[order])]
    else:
        order = _stable_argsort(image)
    q, g = query[order], image[order]
    first = np.r_[True, (q[1:] != q[:-1]) | (g[1:] != g[:-1])] if len(q) else np.zeros(0, bool)
    entry_pair = None
    if entry_pairs:
        entry_pair = np.empty(len(q), dtype=np.int64)
        entry_pair[order] = np.cumsum(first) - 1
    if first.all():  # no pair named twice: the usual case
        return q, g, np.ones(len(q), dtype=np.int64), entry_pair
    starts = np.flatnonzero(first)
    return q[starts], g[starts], np.diff(np.r_[starts, len(q)]), entry_pair


def _pair_similarities(
    queries: np.ndarray,
    gallery: GalleryDetections,
    pair_query: np.ndarray,
    pair_image: np.ndarray,
    pair_start: np.ndarray,
) -> np.ndarray:
    """Similarities of every (query, image) pair's detections, pairs given grouped by image.

    Float32 products when `queries` is float32 (fast, approximate), else float64 rounded to
    float32 (exact). Gathering each image's query rows is the memory-bound part; it moves 6x
    fewer bytes than gathering each query's detection rows.
    """
    total = int(gallery.counts[pair_image].sum())
    out = np.empty(total, dtype=np.float32)
    bounds = np.searchsorted(pair_image, np.arange(gallery.num_images + 1))
    images = np.flatnonzero((np.diff(bounds) > 0) & (gallery.counts > 0))
    feats, rows, offsets = gallery.source_feats, gallery.feat_rows, gallery.offsets
    # an image whose features are consecutive rows of the caller's array is read in place
    breaks = np.r_[0, np.cumsum(np.diff(rows) != 1)]  # breaks[i]: jumps among rows[0..i]
    first_row = np.minimum(offsets[:-1], max(len(rows) - 1, 0))
    last_row = np.maximum(offsets[1:] - 1, first_row)
    consecutive = breaks[last_row] == breaks[first_row] if len(rows) else np.ones(0, dtype=bool)
    # plain Python ints in the loop: it runs once per image, numpy scalars cost more
    bound, start, first = bounds.tolist(), pair_start.tolist(), offsets.tolist()
    in_place = consecutive.tolist()

    def products(chunk: list[int]) -> None:
        for g in chunk:
            b0, b1, lo, hi = bound[g], bound[g + 1], first[g], first[g + 1]
            if in_place[g]:
                image_feats = feats[rows[lo] : rows[lo] + hi - lo]
            else:
                image_feats = feats.take(rows[lo:hi], axis=0)
            block = np.dot(queries.take(pair_query[b0:b1], axis=0), image_feats.T)
            out[start[b0] : start[b0] + block.size] = block.ravel()

    # numpy releases the GIL in its gathers and BLAS products: a few threads share the images
    # (interleaved, so each gets a like share), each product on one BLAS thread
    todo = images.tolist()
    threads = min(_cpu_count(), _MAX_THREADS, max(1, len(todo) // _IMAGES_PER_THREAD))
    with _single_threaded_blas():
        if threads == 1:
            products(todo)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(products, [todo[t::threads] for t in range(threads)]))
    return out


def _in_threads(
    function: Callable[[slice], T], total: int, min_chunk: int, max_threads: int = _MAX_THREADS
) -> list[T]:
    """Run `function` over consecutive slices of range(total), on a few threads when it is big
    enough (the numpy kernels called release the GIL: gathers, products, einsum); its results
    in order."""
    threads = min(_cpu_count(), max_threads, max(1, total // min_chunk))
    if threads == 1:
        return [function(slice(0, total))]
    cuts = np.linspace(0, total, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]))


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Keep BLAS to one thread: waking its thread pool costs ten times more than each of the
    thousands of tiny per-image products (threadpoolctl, when installed, does the switching)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _cbgm_sparse(
    sims: np.ndarray,
    pair_query: np.ndarray,
    pair_image: np.ndarray,
    pair_start: np.ndarray,
    pair_len: np.ndarray,
    gallery: GalleryDetections,
    cbgm: CBGMOptions,
    context: list[np.ndarray],
) -> None:
    """Apply CBGM in place to the listed-pair similarities, query by query."""
    query_bounds = np.searchsorted(pair_query, np.arange(len(context) + 1))
    for q in range(len(context)):
        pairs = np.arange(query_bounds[q], query_bounds[q + 1])
        pairs = pairs[pair_len[pairs] > 0]
        if not len(pairs):
            continue
        rows = _ranges(pair_start[pairs], pair_len[pairs])
        images = np.repeat(pair_image[pairs], pair_len[pairs])
        for g in top_candidate_images(sims[rows], images, cbgm.k1):
            p = pairs[np.searchsorted(pair_image[pairs], g)]
            span = slice(pair_start[p], pair_start[p] + pair_len[p])
            lo, hi = gallery.offsets[g], gallery.offsets[g + 1]
            sims[span] = rescore_image(sims[span], context[q], gallery.feats[lo:hi])


def _dense(
    protocol: SearchProtocol,
    entries: _Entries,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    qual_entry: np.ndarray,
    qual_det: np.ndarray,
    cbgm: CBGMOptions | None,
    context: list[np.ndarray] | None,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates = every detection, weighted per query (listed multiplicity, unlisted 0 or 1):
    one matrix product per batch of queries against every detection.

    Without CBGM the products are float32 (half the work of float64, on BLAS's threads) and, as
    on the sparse path, only candidates within the proven error bound of a positive's score are
    recomputed exactly. They run over the caller's feature rows in place (a dropped detection
    gets weight 0) unless most rows were dropped, when the kept ones are copied first.
    """
    num_queries = len(entries.count_gt)
    fast = cbgm is None
    if fast and len(gallery.feat_rows) >= 0.7 * len(gallery.source_feats):
        feats, det_column = gallery.source_feats, gallery.feat_rows
    else:
        feats, det_column = gallery.feats, np.arange(len(gallery.image))
    # the image of every column, and an extra zero-weight column for columns of dropped rows
    column_image = np.full(len(feats), gallery.num_images, dtype=np.int64)
    column_image[det_column] = gallery.image
    exact = None
    if fast:
        queries = np.asarray(query_feats, dtype=np.float32)
        feats32 = np.asarray(feats, dtype=np.float32)
        known = gallery.norm_bound
        exact = _ExactPairs(query_feats, feats, lambda: known if known is not None else _max_row_norm(feats))
    else:
        queries = np.asarray(query_feats, dtype=np.float64)
    out_query, out_score, out_cand = [], [], []
    for q0 in range(0, num_queries, batch_size):
        q1 = min(q0 + batch_size, num_queries)
        image_weights = _image_weights(protocol, entries, q0, q1)
        # take() keeps rows contiguous (fancy indexing along axis 1 returns a strided array,
        # which made every later pass over it several times slower)
        weights = np.concatenate([image_weights, np.zeros((q1 - q0, 1), np.int8)], axis=1).take(
            column_image, axis=1
        )
        if fast:
            sims = queries[q0:q1] @ feats32.T
        else:
            sims = _batch_similarity(queries[q0:q1], feats)
            if context is not None:
                for local in range(q1 - q0):
                    _cbgm_dense_row(sims[local], weights[local], gallery, cbgm, context[q0 + local])
        in_batch = (entries.query[qual_entry] >= q0) & (entries.query[qual_entry] < q1)
        entry, column = qual_entry[in_batch], det_column[qual_det[in_batch]]
        if fast:
            qual_sim = exact(entries.query[entry], column)
        else:
            qual_sim = sims[entries.query[entry] - q0, column]
        pos_query, pos_score = _positive_scores(entry, qual_sim, entries.query)
        cand = _count_dense(sims, weights, q0, pos_query, pos_score, *_band(pos_query, pos_score, exact), exact)
        out_query.append(pos_query)
        out_score.append(pos_score)
        out_cand.append(cand)
    if not out_query:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0, dtype=np.float32), empty
    return np.concatenate(out_query), np.concatenate(out_score), np.concatenate(out_cand)


def _count_dense(
    sims: np.ndarray,
    weights: np.ndarray,
    q0: int,
    pos_query: np.ndarray,
    pos_score: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    exact: _ExactPairs | None,
) -> np.ndarray:
    """Per positive (sorted by query): weighted count of candidates scoring >= it, from one
    batch's similarities to every column (queries q0...). `sims` is overwritten.

    Weight-0 columns are set to -inf first, so every other column counts once by comparison;
    the few counted more than once (an image listed twice) add their extra weight after, from
    exact values. With `exact`, `sims` are float32 products: a candidate at least `upper` counts,
    one under `lower` does not, and only rows with candidates in between look for them.
    """
    np.putmask(sims, weights == 0, np.float32(-np.inf))
    cand = np.zeros(len(pos_query), dtype=np.int64)
    band_pos, band_column = [], []
    step = max(1, _CHUNK_ELEMENTS // max(sims.shape[1], 1))
    for c in range(0, len(pos_query), step):
        rows = sims[pos_query[c : c + step] - q0]
        above = rows >= upper[c : c + step, None]
        count = np.count_nonzero(above, axis=1)
        cand[c : c + step] += count
        if exact is None:
            continue
        # a positive's own detection is always in its band (its float32 value is within the
        # bound of its exact score) and counts: only rows with more need looking at
        in_band = np.count_nonzero(rows >= lower[c : c + step, None], axis=1) - count
        for r in np.flatnonzero(in_band > 1):
            columns = np.flatnonzero((rows[r] >= lower[c + r]) & ~above[r])
            band_pos.append(np.full(len(columns), c + r))
            band_column.append(columns)
        cand[c : c + step] += in_band == 1
    if exact is not None and band_pos:
        pos = np.concatenate(band_pos)
        above = exact(pos_query[pos], np.concatenate(band_column)) >= pos_score[pos]
        cand += np.bincount(pos[above], minlength=len(cand))
    # (query, column) pairs counted w >= 2 times: w - 1 more for every positive of the query
    local, column = np.divmod(np.flatnonzero(weights >= 2), weights.shape[1])
    if len(local):
        extra = weights[local, column].astype(np.int64) - 1
        value = sims[local, column] if exact is None else exact(q0 + local, column)
        bounds = np.searchsorted(pos_query, q0 + np.arange(len(weights) + 1))
        per_pair = bounds[local + 1] - bounds[local]
        owner = _ranges(bounds[local], per_pair)
        pair = np.repeat(np.arange(len(local)), per_pair)
        counted = value[pair] >= pos_score[owner]
        cand += np.bincount(owner[counted], weights=extra[pair][counted], minlength=len(cand)).astype(np.int64)
    return cand


def _batch_similarity(queries64: np.ndarray, feats: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Queries x all detections, converting the detections to float64 a chunk at a time."""
    out = np.empty((len(queries64), len(feats)), dtype=np.float32)
    for lo in range(0, len(feats), chunk):
        block = np.asarray(feats[lo : lo + chunk], dtype=np.float64)
        out[:, lo : lo + chunk] = queries64 @ block.T
    return out


def _image_weights(protocol: SearchProtocol, entries: _Entries, q0: int, q1: int) -> np.ndarray:
    """(q1 - q0) x G: how many times each image's detections are candidates for each query."""
    num_images = len(protocol.images)
    if protocol.unlisted == "all":
        weights = np.ones((q1 - q0, num_images), dtype=np.int8)
    elif protocol.unlisted == "other-cameras":
        weights = (protocol.image_cameras[None, :] != entries.camera[q0:q1, None]).astype(np.int8)
    elif protocol.unlisted == "none":
        weights = np.zeros((q1 - q0, num_images), dtype=np.int8)
    else:
        raise ValueError(f"unknown unlisted mode {protocol.unlisted!r}")
    # the query's own image and every named image are not unlisted negatives
    own = entries.own_image[q0:q1]
    has_own = own >= 0
    weights[np.flatnonzero(has_own), own[has_own]] = 0
    named = (entries.named_query >= q0) & (entries.named_query < q1)
    weights[entries.named_query[named] - q0, entries.named_image[named]] = 0
    evaluated = (entries.query >= q0) & (entries.query < q1)
    np.add.at(weights, (entries.query[evaluated] - q0, entries.image[evaluated]), 1)
    return weights


def _cbgm_dense_row(
    sims: np.ndarray,
    det_weights: np.ndarray,
    gallery: GalleryDetections,
    cbgm: CBGMOptions,
    context: np.ndarray,
) -> None:
    """Apply CBGM in place to one query's similarity row over all detections."""
    candidates = np.flatnonzero(det_weights > 0)
    if not len(candidates):
        return
    for g in top_candidate_images(sims[candidates], gallery.image[candidates], cbgm.k1):
        lo, hi = gallery.offsets[g], gallery.offsets[g + 1]
        sims[lo:hi] = rescore_image(sims[lo:hi], context, gallery.feats[lo:hi])
