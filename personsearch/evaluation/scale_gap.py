"""Scale-gap metrics: mAP and top-1 per bin of the gallery-to-query person height ratio.

CLSA's point is matching one person across scales, so the headline numbers are split by how
much the scale changes between the query and each true match. For a query-positive pair,
r = height of the positive's box in the gallery / height of the query box (pixels):

    key            label                     range
    smaller_3x     gallery >=3x smaller      r <= 1/3
    smaller_1.5x   gallery 1.5-3x smaller    1/3 < r <= 2/3
    same           within 1.5x               2/3 < r < 1.5
    larger_1.5x    gallery 1.5-3x larger     1.5 <= r < 3
    larger_3x      gallery >=3x larger       r >= 3

A ratio that is not a positive finite number (a degenerate box) is in no bin.

Definition, per query-positive pair: for bin b, each query is evaluated against a gallery in
which its positives whose ratio falls outside b are removed (junk: neither positive nor
negative); all negatives stay. A query with no positive in b is not counted in b. mAP and
top-1 of b are the means over the counted queries; `queries` and `pairs` say how many queries
and query-positive pairs b holds. An empty bin reports 0 queries and mAP = top-1 = 0.0.

- Re-id on crops (`reid_by_scale`): a positive is a gallery crop of the query's identity from
  another camera; out-of-bin ones are dropped from that query's gallery as Market-1501 drops
  junk. The numbers are `evaluate_reid`'s, with those crops passed as `exclude`.
- Search (`search_by_scale`): a positive is a gallery image holding the query person (a listed
  entry with a ground-truth box, whose height is that box's). The protocol's unit is the image,
  so an out-of-bin one is removed from the query's gallery with its detections: dropped from
  the list (CUHK-SYSU TestG<N>), and where every other test image is searched too (`full`,
  PRW) not searched either. Each bin is a sub-protocol scored by the unchanged `evaluate_search`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from personsearch.data.scenes import QueryTask, SearchProtocol
from personsearch.evaluation.cbgm import CBGMOptions, QueryContext
from personsearch.evaluation.reid import JUNK_PID, evaluate_reid
from personsearch.evaluation.search import Duplicates, GalleryDetections, evaluate_search


@dataclass(frozen=True)
class ScaleBin:
    """One interval of the ratio r = gallery person height / query person height."""

    key: str  #: short name, the JSON key
    label: str  #: what it means, for tables and plots
    range: str  #: the interval, written out ("1/3 < r <= 2/3")
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def contains(self, ratio: np.ndarray) -> np.ndarray:
        """Boolean mask: which ratios fall in this bin (NaN never does)."""
        r = np.asarray(ratio, dtype=np.float64)
        above = r >= self.low if self.low_closed else r > self.low
        below = r <= self.high if self.high_closed else r < self.high
        return above & below


# 1 / 1.5 and 2 / 3 are the same float64, and a quotient of heights whose true value is exactly
# 1/3 or 2/3 rounds to it: the edges are exact for integer-pixel boxes.
SCALE_BINS: tuple[ScaleBin, ...] = (
    ScaleBin("smaller_3x", "gallery >=3x smaller", "r <= 1/3", 0.0, 1 / 3, False, True),
    ScaleBin(
        "smaller_1.5x", "gallery 1.5-3x smaller", "1/3 < r <= 2/3", 1 / 3, 1 / 1.5, False, True
    ),
    ScaleBin("same", "within 1.5x", "2/3 < r < 1.5", 1 / 1.5, 1.5, False, False),
    ScaleBin("larger_1.5x", "gallery 1.5-3x larger", "1.5 <= r < 3", 1.5, 3.0, True, False),
    ScaleBin("larger_3x", "gallery >=3x larger", "r >= 3", 3.0, np.inf, True, False),
)
BIN_KEYS: tuple[str, ...] = tuple(b.key for b in SCALE_BINS)


def scale_bin(ratio: np.ndarray) -> np.ndarray:
    """Index into SCALE_BINS of every ratio (same shape, int64); -1 for none (NaN, r <= 0, inf)."""
    r = np.asarray(ratio, dtype=np.float64)
    out = np.full(r.shape, -1, dtype=np.int64)
    for index, spec in enumerate(SCALE_BINS):
        out[spec.contains(r)] = index
    return out


def scale_ratio(gallery_heights: np.ndarray, query_heights: np.ndarray) -> np.ndarray:
    """gallery / query heights in float64 (broadcast); NaN where either height is not > 0."""
    g = np.asarray(gallery_heights, dtype=np.float64)
    q = np.asarray(query_heights, dtype=np.float64)
    valid = (g > 0) & (q > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, g / np.where(valid, q, 1.0), np.nan)


def box_heights(boxes: np.ndarray) -> np.ndarray:
    """y2 - y1 of x1 y1 x2 y2 boxes, in float64 (exact for float32 coordinates)."""
    boxes = np.asarray(boxes)
    return boxes[..., 3].astype(np.float64) - boxes[..., 1].astype(np.float64)


def _bin_entry(
    spec: ScaleBin, mean_ap: float, top1: float, queries: int, pairs: int, top_key: str
) -> dict[str, Any]:
    return {
        "mAP": float(mean_ap),
        top_key: float(top1),
        "queries": int(queries),
        "pairs": int(pairs),
        "label": spec.label,
        "range": spec.range,
    }


# ---------------------------------------------------------------------------- re-id on crops


def reid_by_scale(
    scores: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    query_heights: np.ndarray,
    gallery_heights: np.ndarray,
    *,
    kind: Literal["similarity", "distance"] = "similarity",
) -> dict[str, dict[str, Any]]:
    """Market-1501 re-id per scale bin: {bin key: {"mAP", "rank1", "queries", "pairs", "label",
    "range"}}, fractions in 0..1, keys in SCALE_BINS order.

    Heights are the crops' person heights in pixels (e.g. their source boxes' heights).
    `scores` is the Q x G similarity (or, with `kind="distance"`, distance) matrix."""
    scores = np.asarray(scores)
    q_pids = np.asarray(query_pids, dtype=np.int64).reshape(-1)
    g_pids = np.asarray(gallery_pids, dtype=np.int64).reshape(-1)
    q_cams = np.asarray(query_cams, dtype=np.int64).reshape(-1)
    g_cams = np.asarray(gallery_cams, dtype=np.int64).reshape(-1)
    q_heights = np.asarray(query_heights, dtype=np.float64).reshape(-1)
    g_heights = np.asarray(gallery_heights, dtype=np.float64).reshape(-1)
    num_queries, num_gallery = len(q_pids), len(g_pids)
    if (
        scores.shape != (num_queries, num_gallery)
        or len(q_cams) != num_queries
        or len(g_cams) != num_gallery
    ):
        raise ValueError(
            f"score matrix {scores.shape} does not match {num_queries} queries x {num_gallery} gallery"
        )
    if len(q_heights) != num_queries or len(g_heights) != num_gallery:
        raise ValueError(
            f"need one height per crop: {len(q_heights)} query and {len(g_heights)} gallery heights "
            f"for {num_queries} queries and {num_gallery} gallery crops"
        )
    # the correct matches evaluate_reid keeps (same identity, not junk, another camera), found a
    # slice of queries at a time so that no Q x G temporary outlives its slice
    rows, cols = [], []
    candidate = g_pids != JUNK_PID
    step = max(1, (1 << 22) // max(num_gallery, 1))
    for lo in range(0, num_queries, step):
        hi = min(lo + step, num_queries)
        good = (g_pids[None, :] == q_pids[lo:hi, None]) & (g_cams[None, :] != q_cams[lo:hi, None])
        r, c = np.nonzero(good & candidate[None, :])
        rows.append(r + lo)
        cols.append(c)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    pair_bin = scale_bin(scale_ratio(g_heights[col], q_heights[row]))

    out: dict[str, dict[str, Any]] = {}
    for index, spec in enumerate(SCALE_BINS):
        in_bin = pair_bin == index
        counted = np.unique(row[in_bin])
        if not len(counted):
            out[spec.key] = _bin_entry(spec, 0.0, 0.0, 0, 0, "rank1")
            continue
        # only the counted queries are evaluated: a query without an in-bin match would be left
        # out by evaluate_reid anyway, after sorting its row
        local = np.full(num_queries, -1, dtype=np.int64)
        local[counted] = np.arange(len(counted))
        outside = ~in_bin & (local[row] >= 0)
        exclude = np.zeros((len(counted), num_gallery), dtype=bool)
        exclude[local[row[outside]], col[outside]] = True
        sub = scores if len(counted) == num_queries else scores[counted]
        result = evaluate_reid(
            sub, q_pids[counted], g_pids, q_cams[counted], g_cams, kind=kind, exclude=exclude
        )
        out[spec.key] = _bin_entry(
            spec, result.mAP, result.rank1, result.num_valid_queries, int(in_bin.sum()), "rank1"
        )
    return out


# ---------------------------------------------------------------------------- person search

#: Entries per explicitly listed sub-protocol (full gallery / PRW queries with a removed image).
_EXPLICIT_ENTRIES = 2_000_000


@dataclass(frozen=True)
class BinProtocols:
    """One bin's sub-protocols: each with the indices of its queries in the original protocol."""

    parts: tuple[tuple[SearchProtocol, np.ndarray], ...]
    queries: int  #: queries counted in the bin
    pairs: int  #: their in-bin query-positive pairs (listed holding entries)


def scale_protocols(protocol: SearchProtocol) -> dict[str, BinProtocols]:
    """Per bin key, the sub-protocols `search_by_scale` evaluates.

    A counted query without out-of-bin positives keeps its task; with some, they are dropped
    from its list. On a listed-only protocol that is all. Where unlisted images are searched
    too (`protocol.unlisted` "all" / "other-cameras"), a dropped image would come back as an
    unlisted negative, so such a query's gallery is written out in full instead: its kept
    entries plus every image the protocol would search unlisted, in a protocol with
    unlisted="none" (the evaluator then scores exactly those candidates).
    """
    images = len(protocol.images)
    index = protocol.image_index()
    holds, bins = [], []
    for task in protocol.queries:
        holds.append(task.holds_person)
        bins.append(scale_bin(scale_ratio(box_heights(task.gt_boxes), box_heights(task.box))))
    chunk = max(1, _EXPLICIT_ENTRIES // max(images, 1))
    out = {}
    for b, spec in enumerate(SCALE_BINS):
        kept: list[QueryTask] = []
        kept_index: list[int] = []
        explicit: list[QueryTask] = []
        explicit_index: list[int] = []
        pairs = 0
        for q, task in enumerate(protocol.queries):
            in_bin = holds[q] & (bins[q] == b)
            if not in_bin.any():
                continue
            pairs += int(in_bin.sum())
            keep = ~(holds[q] & ~in_bin)
            if keep.all():
                kept.append(task)
                kept_index.append(q)
            elif protocol.unlisted == "none":
                kept.append(
                    dataclasses.replace(
                        task, gallery=task.gallery[keep], gt_boxes=task.gt_boxes[keep]
                    )
                )
                kept_index.append(q)
            else:
                explicit.append(_written_out(protocol, task, keep, index))
                explicit_index.append(q)
        parts = []
        name = f"{protocol.name}[{spec.key}]"
        if kept:
            parts.append(
                (
                    dataclasses.replace(protocol, name=name, queries=tuple(kept)),
                    np.array(kept_index, dtype=np.int64),
                )
            )
        for lo in range(0, len(explicit), chunk):
            sub = dataclasses.replace(
                protocol, name=name, queries=tuple(explicit[lo : lo + chunk]), unlisted="none"
            )
            parts.append((sub, np.array(explicit_index[lo : lo + chunk], dtype=np.int64)))
        out[spec.key] = BinProtocols(tuple(parts), len(kept) + len(explicit), pairs)
    return out


def _written_out(
    protocol: SearchProtocol, task: QueryTask, keep: np.ndarray, index: dict[str, int]
) -> QueryTask:
    """`task` with entries `keep` plus, listed without the person, every image the protocol
    searches unlisted for it: not named in its list (removed entries included), not its own
    image, and with "other-cameras" from another camera."""
    searched = np.ones(len(protocol.images), dtype=bool)
    searched[task.gallery] = False
    own = index.get(task.image)
    if own is not None:
        searched[own] = False
    if protocol.unlisted == "other-cameras":
        searched &= protocol.image_cameras != task.camera
    extra = np.flatnonzero(searched)
    gt = np.full((len(extra), 4), np.nan, dtype=np.float32)
    return dataclasses.replace(
        task,
        gallery=np.r_[task.gallery[keep], extra],
        gt_boxes=np.concatenate([task.gt_boxes[keep], gt]),
    )


def _context_subset(
    context: QueryContext | None, queries: np.ndarray, total: int
) -> QueryContext | None:
    """The context rows of `queries`, renumbered to their position in it."""
    if context is None:
        return None
    local = np.full(total, -1, dtype=np.int64)
    local[queries] = np.arange(len(queries))
    index = local[np.asarray(context.query_index, dtype=np.int64)]
    rows = np.flatnonzero(index >= 0)
    boxes = None if context.boxes is None else np.asarray(context.boxes)[rows]
    return QueryContext(
        index[rows], np.asarray(context.feats)[rows], np.asarray(context.scores)[rows], boxes
    )


def search_by_scale(
    protocol: SearchProtocol,
    gallery: GalleryDetections,
    query_feats: np.ndarray,
    *,
    duplicates: Duplicates = "original",
    cbgm: CBGMOptions | None = None,
    query_context: QueryContext | None = None,
    bins: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Person search per scale bin: {bin key: {"mAP", "top1", "queries", "pairs", "label",
    "range"}}, fractions in 0..1, keys in SCALE_BINS order (or only `bins`).

    Arguments as for `evaluate_search`; every bin is scored by it on `scale_protocols`' parts.
    """
    query_feats = np.asarray(query_feats)
    if len(query_feats) != len(protocol.queries):
        raise ValueError(
            f"{protocol.name}: need {len(protocol.queries)} query features, got shape {query_feats.shape}"
        )
    unknown = sorted(set(bins or ()) - set(BIN_KEYS))
    if unknown:
        raise ValueError(f"unknown scale bins {unknown}; bins are {list(BIN_KEYS)}")
    parts = scale_protocols(protocol)
    if gallery.norm_bound is None and sum(len(p.parts) for p in parts.values()) > 1:
        # every evaluator call would read all the features for this bound: once is enough
        gallery = gallery.with_norm_bound()
    out = {}
    for spec in SCALE_BINS:
        if bins is not None and spec.key not in bins:
            continue
        part = parts[spec.key]
        ap, top1 = [], []
        for sub, queries in part.parts:
            result = evaluate_search(
                sub,
                gallery,
                query_feats[queries],
                duplicates=duplicates,
                ks=(1,),
                cbgm=cbgm,
                query_context=_context_subset(query_context, queries, len(protocol.queries)),
            )
            ap.append(result.ap)
            top1.append(result.hits[:, 0])
        mean_ap = float(np.concatenate(ap).mean()) if part.queries else 0.0
        mean_top1 = float(np.concatenate(top1).mean()) if part.queries else 0.0
        out[spec.key] = _bin_entry(spec, mean_ap, mean_top1, part.queries, part.pairs, "top1")
    return out


def scale_table(by_scale: dict[str, dict[str, Any]], title: str = "") -> str:
    """A plain-text table of a `search_by_scale` / `reid_by_scale` result (percentages; an empty
    bin shows dashes)."""
    top_key = "rank1" if any("rank1" in v for v in by_scale.values()) else "top1"
    top_name = "rank-1" if top_key == "rank1" else "top-1"
    lines = [title] if title else []
    lines.append(f"{'scale bin':<24}{'range':<17}{'queries':>8}{'pairs':>8}{'mAP':>8}{top_name:>8}")
    for key, values in by_scale.items():
        counted = values["queries"] > 0
        mean_ap = f"{100 * values['mAP']:>8.2f}" if counted else f"{'-':>8}"
        top = f"{100 * values[top_key]:>8.2f}" if counted else f"{'-':>8}"
        label = values.get("label", key)
        lines.append(
            f"{label:<24}{values.get('range', ''):<17}{values['queries']:>8}"
            f"{values['pairs']:>8}{mean_ap}{top}"
        )
    return "\n".join(lines)
