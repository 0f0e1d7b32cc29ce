"""The dense search-evaluation kernel: every detection a candidate (private; the API is
personsearch.evaluation.search, which picks this path for long gallery lists and the
full-gallery protocols).

One matrix product per batch of queries against every detection, each candidate weighted per
query (listed multiplicity; unlisted images 0 or 1 by the protocol's rule), counts by comparison.
"""

from __future__ import annotations

import numpy as np

from personsearch.data.scenes import SearchProtocol
from personsearch.evaluation._search_common import (
    CHUNK_ELEMENTS,
    Duplicates,
    Entries,
    ExactPairs,
    GalleryDetections,
    flatten_protocol,
    max_row_norm,
    positive_scores,
    qualifying_pairs,
    ranges,
    score_band,
)
from personsearch.evaluation.cbgm import CBGMOptions, rescore_image, top_candidate_images


def search_dense(
    protocol: SearchProtocol,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    duplicates: Duplicates,
    cbgm: CBGMOptions | None,
    context: list[np.ndarray] | None,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """count_gt and, per positive, its query, score and weighted candidates scoring at least as
    much, for any protocol; `batch_size` queries share one matrix product."""
    entries = flatten_protocol(protocol, duplicates)
    qual_entry, qual_det = qualifying_pairs(entries, gallery)
    pos_query, pos_score, cand = _dense(
        protocol, entries, gallery, query_feats, qual_entry, qual_det, cbgm, context, batch_size
    )
    return entries.count_gt, pos_query, pos_score, cand


def _dense(
    protocol: SearchProtocol,
    entries: Entries,
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
        exact = ExactPairs(
            query_feats, feats, lambda: known if known is not None else max_row_norm(feats)
        )
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
        pos_query, pos_score = positive_scores(entry, qual_sim, entries.query)
        cand = _count_dense(
            sims, weights, q0, pos_query, pos_score, *score_band(pos_query, pos_score, exact), exact
        )
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
    exact: ExactPairs | None,
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
    step = max(1, CHUNK_ELEMENTS // max(sims.shape[1], 1))
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
        owner = ranges(bounds[local], per_pair)
        pair = np.repeat(np.arange(len(local)), per_pair)
        counted = value[pair] >= pos_score[owner]
        cand += np.bincount(
            owner[counted], weights=extra[pair][counted], minlength=len(cand)
        ).astype(np.int64)
    return cand


def _batch_similarity(queries64: np.ndarray, feats: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Queries x all detections, converting the detections to float64 a chunk at a time."""
    out = np.empty((len(queries64), len(feats)), dtype=np.float32)
    for lo in range(0, len(feats), chunk):
        block = np.asarray(feats[lo : lo + chunk], dtype=np.float64)
        out[:, lo : lo + chunk] = queries64 @ block.T
    return out


def _image_weights(protocol: SearchProtocol, entries: Entries, q0: int, q1: int) -> np.ndarray:
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
