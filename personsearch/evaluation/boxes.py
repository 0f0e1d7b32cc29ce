"""Vectorised box geometry for evaluation: IoU on continuous `x1, y1, x2, y2` coordinates.

The person-search protocols compute IoU without the old "+1" pixel convention, in float64 so the
result does not depend on the boxes' storage precision.
"""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of N x 4 boxes (zero for degenerate boxes)."""
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N x 4) with every box in `b` (M x 4): an N x M float64 matrix.

    A pair whose union has zero area gets IoU 0.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return _safe_ratio(inter, union)


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of `a[i]` with `b[i]` for every row i (both N x 4): an N float64 vector."""
    a, b = _as_boxes(a), _as_boxes(b)
    if len(a) != len(b):
        raise ValueError(f"paired_iou needs equal lengths, got {len(a)} and {len(b)}")
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 2], b[:, 2])
    y2 = np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box_area(a) + box_area(b) - inter
    return _safe_ratio(inter, union)


def search_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray:
    """The search protocols' IoU threshold per ground-truth box: min(0.5, wh / ((w+10)(h+10))).

    Small persons get a looser threshold, since a few pixels of localisation error cost them
    much more overlap than they cost a large box.
    """
    gt = _as_boxes(gt_boxes)
    w = gt[:, 2] - gt[:, 0]
    h = gt[:, 3] - gt[:, 1]
    return np.minimum(0.5, (w * h) / ((w + 10.0) * (h + 10.0)))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
