"""Box geometry on NumPy arrays: areas, IoU, clipping, and the whole pixels a box covers.

Boxes are `x1 y1 x2 y2` on continuous pixel coordinates, without the old "+1" pixel convention
(`fmt="xywh"` reads `x y w h` rows, as the CUHK-SYSU .mat files store them). IoU is computed in
float64 by default, so a result does not depend on the boxes' storage precision.

Its callers differ in a few edge cases, and each keeps its own through a parameter:
- `clip_areas`: whether a degenerate box (x2 < x1) has area 0 (evaluation, NMS) or a negative
  one (the crop and annotation matchers, which never see such boxes in valid data);
- `no_union`: the IoU of a pair whose union is not positive (two empty boxes): 0, or 1 where
  such a pair counts as overlapping (check-data's query check);
- `dtype`: None computes in the inputs' own precision (check-data's float32 comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

FORMATS = ("xyxy", "xywh")


def _as_boxes(boxes: np.ndarray | Sequence[Sequence[float]], dtype: DTypeLike | None) -> np.ndarray:
    array = np.asarray(boxes) if dtype is None else np.asarray(boxes, dtype=dtype)
    return array.reshape(-1, 4)


def _corners(boxes: np.ndarray, fmt: str) -> tuple[np.ndarray, ...]:
    """x1, y1, x2, y2 and the width and height columns of N x 4 boxes in `fmt`."""
    if fmt == "xyxy":
        x1, y1, x2, y2 = boxes.T
        return x1, y1, x2, y2, x2 - x1, y2 - y1
    if fmt == "xywh":
        x1, y1, w, h = boxes.T
        return x1, y1, x1 + w, y1 + h, w, h
    raise ValueError(f"box format {fmt!r}: choose one of {', '.join(FORMATS)}")


def box_area(
    boxes: np.ndarray,
    *,
    fmt: str = "xyxy",
    clip: bool = True,
    dtype: DTypeLike | None = np.float64,
) -> np.ndarray:
    """Areas of N x 4 boxes; with `clip`, zero for degenerate boxes (else w * h, maybe < 0)."""
    *_, w, h = _corners(_as_boxes(boxes, dtype), fmt)
    if clip:
        return np.clip(w, 0, None) * np.clip(h, 0, None)
    return w * h


def box_iou(
    a: np.ndarray,
    b: np.ndarray,
    *,
    fmt: str = "xyxy",
    clip_areas: bool = True,
    no_union: float = 0.0,
    dtype: DTypeLike | None = np.float64,
) -> np.ndarray:
    """IoU of every box in `a` (N x 4) with every box in `b` (M x 4): an N x M matrix.

    A pair whose union is not positive gets `no_union`; a NaN union gives 0.
    """
    a, b = _as_boxes(a, dtype), _as_boxes(b, dtype)
    ax1, ay1, ax2, ay2, _, _ = _corners(a, fmt)
    bx1, by1, bx2, by2, _, _ = _corners(b, fmt)
    inter = _intersection(
        np.maximum(ax1[:, None], bx1[None, :]),
        np.maximum(ay1[:, None], by1[None, :]),
        np.minimum(ax2[:, None], bx2[None, :]),
        np.minimum(ay2[:, None], by2[None, :]),
    )
    area_a = box_area(a, fmt=fmt, clip=clip_areas, dtype=None)
    area_b = box_area(b, fmt=fmt, clip=clip_areas, dtype=None)
    return _ratio(inter, area_a[:, None] + area_b[None, :] - inter, no_union)


def paired_iou(
    a: np.ndarray,
    b: np.ndarray,
    *,
    fmt: str = "xyxy",
    clip_areas: bool = True,
    no_union: float = 0.0,
    dtype: DTypeLike | None = np.float64,
) -> np.ndarray:
    """IoU of `a[i]` with `b[i]` for every row i (both N x 4): an N vector."""
    a, b = _as_boxes(a, dtype), _as_boxes(b, dtype)
    if len(a) != len(b):
        raise ValueError(f"paired_iou needs equal lengths, got {len(a)} and {len(b)}")
    ax1, ay1, ax2, ay2, _, _ = _corners(a, fmt)
    bx1, by1, bx2, by2, _, _ = _corners(b, fmt)
    inter = _intersection(
        np.maximum(ax1, bx1), np.maximum(ay1, by1), np.minimum(ax2, bx2), np.minimum(ay2, by2)
    )
    area_a = box_area(a, fmt=fmt, clip=clip_areas, dtype=None)
    area_b = box_area(b, fmt=fmt, clip=clip_areas, dtype=None)
    return _ratio(inter, area_a + area_b - inter, no_union)


def _intersection(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def _ratio(inter: np.ndarray, union: np.ndarray, no_union: float) -> np.ndarray:
    out = np.zeros(np.broadcast(inter, union).shape, dtype=np.result_type(inter, union))
    np.divide(inter, union, out=out, where=union > 0)
    if no_union:
        out[union <= 0] = no_union  # NaN unions stay 0: no comparison holds for them
    return out


def search_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray:
    """The search protocols' IoU threshold per ground-truth box: min(0.5, wh / ((w+10)(h+10))).

    Small persons get a looser threshold, since a few pixels of localisation error cost them
    much more overlap than they cost a large box.
    """
    gt = _as_boxes(gt_boxes, np.float64)
    w = gt[:, 2] - gt[:, 0]
    h = gt[:, 3] - gt[:, 1]
    return np.minimum(0.5, (w * h) / ((w + 10.0) * (h + 10.0)))


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Boxes (... x 4, x1 y1 x2 y2) clipped to a width x height image, in their float dtype."""
    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float64)
    return np.clip(boxes, 0, np.array([width, height, width, height], dtype=boxes.dtype))


def crop_bounds(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels a box covers in a width x height image, as integer x1, y1, x2, y2.

    x1, y1 round down and x2, y2 up (a pixel the box touches is in), clipped to the image, and
    at least 1 x 1: the one rule for every crop, in training, indexing, search and the server.
    """
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    x2 = min(max(math.ceil(box[2]), x1 + 1), width)
    y2 = min(max(math.ceil(box[3]), y1 + 1), height)
    return x1, y1, x2, y2
