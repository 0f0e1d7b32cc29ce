"""What both search-evaluation kernels share (private: the API is personsearch.evaluation.search).

The protocol flattened to one row per evaluated listed entry, the detections that qualify as a
positive of an entry, each entry's one positive, and exact similarities on demand with the
proven error bound of float32 products (the float32 band inside which a candidate is
recomputed exactly). Also the few-threads helper both kernels run numpy kernels on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import numpy as np

from personsearch.boxes import paired_iou, search_iou_threshold
from personsearch.data.scenes import SearchProtocol

T = TypeVar("T")

#: How a gallery image listed twice for a query counts: every entry as listed ("original", OIM's
#: code) or once, with its first entry's box ("first", SeqNet's); see docs/evaluation.md.
Duplicates = Literal["original", "first"]

#: Largest number of (positive, candidate) comparisons materialised at once.
CHUNK_ELEMENTS = 1 << 23
#: Most threads a kernel runs its numpy work on.
MAX_THREADS = 4


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

    def with_norm_bound(self) -> GalleryDetections:
        """These detections with `norm_bound` computed if unknown (one pass over every feature):
        worth it before several evaluations of one gallery, each of which would make that pass."""
        if self.norm_bound is not None:
            return self
        return dataclasses.replace(self, norm_bound=max_row_norm(self.source_feats))

    @property
    def num_images(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Detections per image."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Entries:
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


def flatten_protocol(protocol: SearchProtocol, duplicates: Duplicates) -> Entries:
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
        query, image, gt, holds = (
            query[evaluated],
            image[evaluated],
            gt[evaluated],
            holds[evaluated],
        )
    index = protocol.image_index()
    own = np.array([index.get(t.image, -1) for t in queries], dtype=np.int64)
    camera = np.array([t.camera for t in queries], dtype=np.int64)
    return Entries(
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


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for every (s, n): the vectorised gather index."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.cumsum(lengths) - lengths
    return np.repeat(starts - seg_start, lengths) + np.arange(total, dtype=np.int64)


def qualifying_pairs(entries: Entries, gallery: GalleryDetections) -> tuple[np.ndarray, np.ndarray]:
    """(entry, detection) pairs whose IoU with the entry's ground truth reaches the threshold."""
    holding = np.flatnonzero(entries.holds)
    counts = gallery.counts[entries.image[holding]]
    which = np.repeat(np.arange(len(holding)), counts)
    det = ranges(gallery.offsets[entries.image[holding]], counts)
    gt = entries.gt[holding].astype(np.float64)
    ok = paired_iou(gallery.boxes[det], gt[which]) >= search_iou_threshold(gt)[which]
    return holding[which[ok]], det[ok]


def positive_scores(
    qual_entry: np.ndarray, qual_sim: np.ndarray, entry_query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per entry with a qualifying detection: (query, highest similarity) - its one positive."""
    if len(qual_entry) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, qual_entry[1:] != qual_entry[:-1]])
    return entry_query[qual_entry[starts]], np.maximum.reduceat(qual_sim, starts)


def score_band(
    pos_query: np.ndarray, pos_score: np.ndarray, exact: ExactPairs | None
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


class ExactPairs:
    """Exact similarities of chosen (query, detection) pairs, and the error bound of float32 products.

    Float32 products of D-dim vectors are within gamma_D * |q| * |f| of the true dot product
    (gamma_D = D u / (1 - D u), u = 2^-24, any summation order); casting the inputs to float32
    and rounding the exact value to float32 add at most 3 u |q| |f| more. Detections are rows
    of `feats`, `det_norm()` a bound on their norms (max_row_norm: streaming every row is cheaper
    than gathering the chosen ones), asked for on first use of `bound`. Pairs computed once are
    remembered: the positives found first come back in the error bands of the counting.
    """

    def __init__(
        self, queries: np.ndarray, feats: np.ndarray, det_norm: Callable[[], float]
    ) -> None:
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

    def __call__(
        self, query: np.ndarray, det: np.ndarray, threads: int = MAX_THREADS
    ) -> np.ndarray:
        """Exact similarities of pairs (query[i], detection row det[i]), on up to `threads`."""
        keys = np.asarray(query, dtype=np.int64) * len(self.feats) + det
        out = np.empty(len(keys), dtype=np.float32)
        at = np.minimum(np.searchsorted(self._known_keys, keys), len(self._known_keys) - 1)
        known = (
            (self._known_keys[at] == keys) if len(self._known_keys) else np.zeros(len(keys), bool)
        )
        out[known] = self._known_values[at[known]]
        missing = np.flatnonzero(~known)
        out[missing] = self._compute(query[missing], det[missing], threads)
        keys = np.r_[self._known_keys, keys[missing]]
        order = np.argsort(keys)
        self._known_keys = keys[order]
        self._known_values = np.r_[self._known_values, out[missing]][order]
        return out

    def _compute(
        self, query: np.ndarray, det: np.ndarray, threads: int, chunk: int = 1024
    ) -> np.ndarray:
        out = np.empty(len(query), dtype=np.float32)

        def part(span: slice) -> None:
            for lo in range(span.start, span.stop, chunk):
                hi = min(lo + chunk, span.stop)
                q = self.queries.take(query[lo:hi], axis=0)
                f = self.feats.take(det[lo:hi], axis=0)
                # cast to float64 (exactly) and summed there: float32 x float32 products are exact
                out[lo:hi] = np.einsum("ij,ij->i", q, f, dtype=np.float64)

        in_threads(part, len(query), 2 * chunk, threads)
        return out


def max_row_norm(x: np.ndarray, threads: int = MAX_THREADS, chunk: int = 8192) -> float:
    """Upper bound of the largest row norm of `x` (computed in slices, on up to `threads`)."""
    starts = range(0, len(x), chunk)
    maxima = np.zeros(len(starts))

    def part(span: slice) -> None:
        for i in range(span.start, span.stop):
            maxima[i] = _row_norms(x[starts[i] : starts[i] + chunk]).max()

    in_threads(part, len(starts), 2, threads)
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


def in_threads(
    function: Callable[[slice], T], total: int, min_chunk: int, max_threads: int = MAX_THREADS
) -> list[T]:
    """Run `function` over consecutive slices of range(total), on a few threads when it is big
    enough (the numpy kernels called release the GIL: gathers, products, einsum); its results
    in order."""
    threads = min(cpu_count(), max_threads, max(1, total // min_chunk))
    if threads == 1:
        return [function(slice(0, total))]
    cuts = np.linspace(0, total, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        return list(
            pool.map(function, [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
        )


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1
