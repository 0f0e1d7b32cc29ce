"""The search results file: what any detector + re-id system writes for `personsearch evaluate`.

A NumPy .npz archive (no pickled objects) with these arrays:

    image_names  (G,)     str    every gallery image the detections refer to
    det_image    (M,)     int    index into image_names of each detection
    det_boxes    (M, 4)   float  x1 y1 x2 y2 in pixels of the original image
    det_scores   (M,)     float  detection confidence (evaluation keeps those >= --det-thresh)
    det_feats    (M, D)   float  L2-normalised re-id feature of each detection
    query_feats  (Q, D)   float  L2-normalised feature of each query box, in protocol order

and, only for CBGM (the other persons detected in each query image):

    ctx_query (K,) int, ctx_boxes (K, 4), ctx_scores (K,), ctx_feats (K, D)

`load_results` checks every array and raises ResultsError naming the file and the problem;
`save_results` validates the same way and writes atomically. `read_npz` is the one reader of
such archives, also for detections files (`personsearch detect`, data/crops.py), which hold only
the det_* arrays and image_names.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.errors import ResultsError
from personsearch.evaluation.cbgm import QueryContext
from personsearch.evaluation.search import GalleryDetections
from personsearch.io import atomic_path

REQUIRED = ("image_names", "det_image", "det_boxes", "det_scores", "det_feats", "query_feats")
CONTEXT = ("ctx_query", "ctx_boxes", "ctx_scores", "ctx_feats")
#: Rows whose norm is further than this from 1 are not L2-normalised.
NORM_TOLERANCE = 1e-2
#: So every validated feature row's norm is at most this (the check sums in float64, whose
#: rounding the factor covers): the evaluator's float32 error bound needs no pass of its own.
NORM_BOUND = (1 + NORM_TOLERANCE) * (1 + 1e-9)


@dataclass(frozen=True)
class ResultsFile:
    """A validated results file. Build it with `load_results` or `validate_results`:
    `gallery_for` relies on their check that every feature is L2-normalised."""

    image_names: tuple[str, ...]
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_feats: np.ndarray
    query_feats: np.ndarray
    context: QueryContext | None = None
    source: str = "<memory>"

    @property
    def feature_dim(self) -> int:
        return int(self.query_feats.shape[1])

    def gallery_for(self, images: Sequence[str], det_thresh: float = 0.5) -> GalleryDetections:
        """Detections regrouped over a protocol's image list (raises if any image is missing)."""
        position = {name: i for i, name in enumerate(images)}
        known = set(self.image_names)
        missing = [name for name in images if name not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ResultsError(
                f"{self.source}: image_names lacks {len(missing)} of the protocol's "
                f"{len(images)} gallery images ({shown}); list every test image, "
                "with or without detections"
            )
        # results images outside the protocol (e.g. training images) are ignored: their
        # detections get a NaN score, which no threshold keeps (the features are not copied)
        mapping = np.array([position.get(name, -1) for name in self.image_names], dtype=np.int64)
        target = mapping[self.det_image] if len(self.det_image) else np.zeros(0, dtype=np.int64)
        outside = target < 0
        scores = self.det_scores
        if outside.any():
            scores = np.where(outside, np.float32(np.nan), scores)
            target = np.where(outside, 0, target)
        return GalleryDetections.from_flat(
            target,
            self.det_boxes,
            scores,
            self.det_feats,
            num_images=len(images),
            det_thresh=det_thresh,
            norm_bound=NORM_BOUND,
        )


def read_npz(path: str | os.PathLike[str], what: str = "results file") -> dict[str, np.ndarray]:
    """Every array of an .npz archive, without pickled objects; ResultsError naming the file (as
    `what`) when it is missing, truncated, not an archive, or holds Python objects."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for name in archive.files:
                try:
                    arrays[name] = archive[name]
                except ValueError as error:
                    if "allow_pickle" not in str(error):
                        raise  # a damaged member: unreadable, below
                    raise ResultsError(
                        f"{path}: array {name!r} holds Python objects; save plain arrays "
                        "(strings as dtype=str)"
                    ) from error
    except ResultsError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # a truncated .npz is a damaged zip (BadZipFile), a cut member an EOFError or zlib.error
        raise ResultsError(
            f"cannot read {what} {path}: not a readable .npz archive (truncated?): {error}"
        ) from error
    return arrays


def load_results(path: str | os.PathLike[str]) -> ResultsFile:
    """Read and validate a results .npz file."""
    return validate_results(read_npz(path, "results file"), source=str(Path(path)))


def validate_results(arrays: dict[str, np.ndarray], source: str = "<memory>") -> ResultsFile:
    """Check shapes, types and values of the results arrays; raise ResultsError on the first fault."""
    missing = [name for name in REQUIRED if name not in arrays]
    if missing:
        raise ResultsError(
            f"{source}: missing array(s) {', '.join(missing)} (a results file needs "
            f"{', '.join(REQUIRED)})"
        )
    names = _names(arrays["image_names"], source)
    det_image = _integers(arrays["det_image"], "det_image", source)
    m = len(det_image)
    if len(det_image) and (det_image.min() < 0 or det_image.max() >= len(names)):
        bad = int(np.flatnonzero((det_image < 0) | (det_image >= len(names)))[0])
        raise ResultsError(
            f"{source}: det_image[{bad}] = {det_image[bad]} is not an index into the "
            f"{len(names)} image_names"
        )
    boxes = _floats(arrays["det_boxes"], "det_boxes", (m, 4), source)
    scores = _floats(arrays["det_scores"], "det_scores", (m,), source)
    query_feats = _floats(arrays["query_feats"], "query_feats", None, source)
    if query_feats.ndim != 2 or query_feats.shape[1] == 0:
        raise ResultsError(f"{source}: query_feats must be Q x D, got shape {query_feats.shape}")
    dim = query_feats.shape[1]
    det_feats = arrays["det_feats"]
    if det_feats.ndim == 2 and len(det_feats) == m and det_feats.shape[1] != dim:
        raise ResultsError(
            f"{source}: det_feats are {det_feats.shape[1]}-dimensional but query_feats are {dim}"
        )
    det_feats = _floats(det_feats, "det_feats", (m, dim), source)
    _check_boxes(boxes, "det_boxes", source)
    _check_normalised(det_feats, "det_feats", source)
    _check_normalised(query_feats, "query_feats", source)
    context = _context(arrays, dim, source, len(query_feats))
    return ResultsFile(names, det_image, boxes, scores, det_feats, query_feats, context, source)


def save_results(
    path: str | os.PathLike[str],
    *,
    image_names: Sequence[str],
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_feats: np.ndarray,
    query_feats: np.ndarray,
    context: QueryContext | None = None,
) -> Path:
    """Validate and write a results file atomically; returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ResultsError(f"{path}: a results file must end in .npz")
    arrays = {
        "image_names": np.asarray(list(image_names), dtype=str),
        "det_image": np.asarray(det_image, dtype=np.int64),
        "det_boxes": np.asarray(det_boxes, dtype=np.float32),
        "det_scores": np.asarray(det_scores, dtype=np.float32),
        "det_feats": np.asarray(det_feats, dtype=np.float32),
        "query_feats": np.asarray(query_feats, dtype=np.float32),
    }
    if context is not None:
        arrays["ctx_query"] = np.asarray(context.query_index, dtype=np.int64)
        arrays["ctx_scores"] = np.asarray(context.scores, dtype=np.float32)
        arrays["ctx_feats"] = np.asarray(context.feats, dtype=np.float32)
        if context.boxes is not None:
            arrays["ctx_boxes"] = np.asarray(context.boxes, dtype=np.float32)
    validate_results(arrays, source=str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _names(array: np.ndarray, source: str) -> tuple[str, ...]:
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise ResultsError(
            f"{source}: image_names must be a 1-D string array, got {array.dtype} of shape {array.shape}"
        )
    names = tuple(str(n) for n in (array.astype(str) if array.dtype.kind == "S" else array))
    if len(set(names)) != len(names):
        dup = next(n for n, c in Counter(names).items() if c > 1)
        raise ResultsError(f"{source}: image_names lists {dup!r} more than once")
    return names


def _integers(array: np.ndarray, name: str, source: str) -> np.ndarray:
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ResultsError(
            f"{source}: {name} must be a 1-D integer array, got {array.dtype} of shape {array.shape}"
        )
    return array.astype(np.int64)


def _floats(array: np.ndarray, name: str, shape: tuple[int, ...] | None, source: str) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise ResultsError(f"{source}: {name} must be numeric, got {array.dtype}")
    if shape is not None and array.shape != shape:
        raise ResultsError(f"{source}: {name} must have shape {shape}, got {array.shape}")
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
        raise ResultsError(f"{source}: {name} holds NaN or infinite values (first in row {row})")
    return array if array.dtype.kind == "f" else array.astype(np.float32)


def _check_boxes(boxes: np.ndarray, name: str, source: str) -> None:
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(bad):
        raise ResultsError(
            f"{source}: {name}[{bad[0]}] = {boxes[bad[0]].tolist()} has x2 < x1 or y2 < y1; "
            "boxes are x1 y1 x2 y2"
        )


def _check_normalised(feats: np.ndarray, name: str, source: str) -> None:
    if not len(feats):
        return
    norms = np.sqrt(np.einsum("ij,ij->i", feats, feats, dtype=np.float64))
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        raise ResultsError(
            f"{source}: {name} row {bad[0]} has norm {norms[bad[0]]:.4f}; features must be "
            "L2-normalised (similarity is their dot product)"
        )


def _context(
    arrays: dict[str, np.ndarray], dim: int, source: str, num_queries: int
) -> QueryContext | None:
    present = [name for name in CONTEXT if name in arrays]
    if not present:
        return None
    needed = [n for n in ("ctx_query", "ctx_scores", "ctx_feats") if n not in arrays]
    if needed:
        raise ResultsError(f"{source}: query context is incomplete, missing {', '.join(needed)}")
    index = _integers(arrays["ctx_query"], "ctx_query", source)
    k = len(index)
    if k and (index.min() < 0 or index.max() >= num_queries):
        raise ResultsError(f"{source}: ctx_query must index the {num_queries} queries")
    scores = _floats(arrays["ctx_scores"], "ctx_scores", (k,), source)
    feats = _floats(arrays["ctx_feats"], "ctx_feats", (k, dim), source)
    _check_normalised(feats, "ctx_feats", source)
    boxes = None
    if "ctx_boxes" in arrays:
        boxes = _floats(arrays["ctx_boxes"], "ctx_boxes", (k, 4), source)
        _check_boxes(boxes, "ctx_boxes", source)
    return QueryContext(index, feats, scores, boxes)
