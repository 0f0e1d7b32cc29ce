"""The sparse search-evaluation kernel: listed images only (private; the API is
personsearch.evaluation.search, which picks this path for short gallery lists).

Only the listed image x query pairs are compared, grouped per image into small matrix products;
queries without a positive are skipped, and each positive is compared only with its own
query's candidates that reach the query's lowest positive. The products are float32 (half the
memory traffic of float64) and only the candidates within their proven error bound of a
positive's score are recomputed exactly, so the numbers are those of the exact computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from personsearch.data.scenes import SearchProtocol
from personsearch.evaluation._search_common import (
    CHUNK_ELEMENTS,
    MAX_THREADS,
    Duplicates,
    ExactPairs,
    GalleryDetections,
    cpu_count,
    flatten_protocol,
    in_threads,
    max_row_norm,
    positive_scores,
    qualifying_pairs,
    ranges,
    score_band,
)
from personsearch.evaluation.cbgm import CBGMOptions, rescore_image, top_candidate_images

#: Images that make one more thread worth it for the per-image products.
_IMAGES_PER_THREAD = 500
#: Candidates that make a second thread worth it when counting.
_ELEMENTS_PER_THREAD = 500_000


def search_sparse(
    protocol: SearchProtocol,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    duplicates: Duplicates,
    cbgm: CBGMOptions | None,
    context: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """count_gt and, per positive, its query, score and weighted candidates scoring at least as
    much, for a protocol without unlisted candidates (`protocol.unlisted == "none"`)."""
    with ThreadPoolExecutor(1) as background:
        return _sparse(protocol, gallery, query_feats, duplicates, cbgm, context, background)


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
            (lambda: known)
            if known is not None
            else background.submit(max_row_norm, gallery.source_feats, 1).result
        )
        exact = ExactPairs(query_feats, gallery.source_feats, det_norm)
    entries = flatten_protocol(protocol, duplicates)
    qual_entry, qual_det = qualifying_pairs(entries, gallery)
    if fast:

        def find_positives() -> tuple[np.ndarray, np.ndarray]:
            qual_sim = exact(entries.query[qual_entry], gallery.feat_rows[qual_det], threads=1)
            exact.bound  # noqa: B018 - computed here, off the main thread
            return positive_scores(qual_entry, qual_sim, entries.query)

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
                sims,
                pair_query[by_query],
                pair_image[by_query],
                pair_bounds[:-1][by_query],
                pair_len[by_query],
                gallery,
                cbgm,
                context,
            )
        pair_of = entry_pair[np.searchsorted(searched, qual_entry)]
        qual_sim = sims[pair_bounds[pair_of] + (qual_det - gallery.offsets[pair_image[pair_of]])]
        pos_query, pos_score = positive_scores(qual_entry, qual_sim, entries.query)

    def row_det(pair: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return gallery.feat_rows[gallery.offsets[pair_image[pair]] + (rows - pair_bounds[pair])]

    cand = _count_at_least(
        sims,
        pair_bounds,
        pair_query,
        weight if (weight != 1).any() else None,
        pos_query,
        pos_score,
        exact,
        row_det,
    )
    return entries.count_gt, pos_query, pos_score, cand


def _count_at_least(
    sims: np.ndarray,
    pair_bounds: np.ndarray,
    pair_query: np.ndarray,
    pair_weight: np.ndarray | None,
    pos_query: np.ndarray,
    pos_score: np.ndarray,
    exact: ExactPairs | None,
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
    upper, lower = score_band(pos_query, pos_score, exact)
    num_queries = max(int(pair_query.max(initial=-1)), int(pos_query[-1])) + 1
    pos_bounds = np.searchsorted(pos_query, np.arange(num_queries + 1))
    # each query's lowest threshold (+inf without a positive): a candidate below it counts nowhere
    has_pos = np.flatnonzero(pos_bounds[1:] > pos_bounds[:-1])
    floor = np.full(num_queries, np.inf, dtype=np.float32)
    floor[has_pos] = np.minimum.reduceat(lower, pos_bounds[has_pos])
    pair_floor = np.repeat(floor[pair_query], np.diff(pair_bounds))
    kept = np.concatenate(
        in_threads(
            lambda rows: rows.start + np.flatnonzero(sims[rows] >= pair_floor[rows]),
            len(sims),
            _ELEMENTS_PER_THREAD,
        )
    )
    pair = np.searchsorted(pair_bounds, kept, side="right") - 1
    query = pair_query[pair]
    per_row = pos_bounds[query + 1] - pos_bounds[query]
    bands: list[tuple[np.ndarray, np.ndarray]] = []  # (positive, kept index)
    for lo, hi in _chunks(per_row, CHUNK_ELEMENTS):
        n = per_row[lo:hi]
        owner = ranges(pos_bounds[query[lo:hi]], n)  # every (kept row, positive of its query)
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
    threads = min(cpu_count(), MAX_THREADS, max(1, len(todo) // _IMAGES_PER_THREAD))
    with _single_threaded_blas():
        if threads == 1:
            products(todo)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(products, [todo[t::threads] for t in range(threads)]))
    return out


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
        rows = ranges(pair_start[pairs], pair_len[pairs])
        images = np.repeat(pair_image[pairs], pair_len[pairs])
        for g in top_candidate_images(sims[rows], images, cbgm.k1):
            p = pairs[np.searchsorted(pair_image[pairs], g)]
            span = slice(pair_start[p], pair_start[p] + pair_len[p])
            lo, hi = gallery.offsets[g], gallery.offsets[g + 1]
            sims[span] = rescore_image(sims[span], context[q], gallery.feats[lo:hi])
