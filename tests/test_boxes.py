"""personsearch.boxes: each caller's IoU and crop rule, pinned against the copies it replaced.

The reference functions below are the implementations that lived in evaluation/boxes.py,
data/crops.py, data/cuhk_sysu.py, check-data (data/validation.py), the ONNX detector's NMS,
search/searcher.py and the server, verbatim; the shared module must give their exact numbers,
edge cases included (degenerate boxes, zero unions, NaN, float32).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from personsearch.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    crop_bounds,
    paired_iou,
    search_iou_threshold,
)

# ------------------------------------------------------------------ the replaced copies


def evaluation_box_iou(a, b):  # evaluation/boxes.py
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)

    def area(x):
        return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)

    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    out = np.zeros(np.broadcast(inter, union).shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def crops_box_iou(a, b):  # data/crops.py
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def cuhk_iou_xywh(boxes, box):  # data/cuhk_sysu.py
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 0] + boxes[:, 2], box[0] + box[2])
    y2 = np.minimum(boxes[:, 1] + boxes[:, 3], box[1] + box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = boxes[:, 2] * boxes[:, 3] + box[2] * box[3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def check_data_holds(boxes, box):  # check-data's query check, before data/validation.py used boxes
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter >= 0.5 * union


def nms_iou(boxes, best, rest):  # search/onnx_detector.py's nms, one step
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    width = (
        np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
    ).clip(0)
    height = (
        np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
    ).clip(0)
    inter = width * height
    union = areas[best] + areas[rest] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def searcher_crop(box, width, height):  # search/searcher.py crop_box and the server's _crop_rect
    x1 = min(max(int(math.floor(box[0])), 0), width - 1)
    y1 = min(max(int(math.floor(box[1])), 0), height - 1)
    x2 = max(min(int(math.ceil(box[2])), width), x1 + 1)
    y2 = max(min(int(math.ceil(box[3])), height), y1 + 1)
    return x1, y1, x2, y2


def cut_crop_bounds(box, width, height):  # data/crops.py cut_crop
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    x2 = min(max(math.ceil(box[2]), x1 + 1), width)
    y2 = min(max(math.ceil(box[3]), y1 + 1), height)
    return x1, y1, x2, y2


# ------------------------------------------------------------------ boxes with every edge case


def random_boxes(rng, n, dtype=np.float64, integers=False):
    """x1 y1 x2 y2 rows: ordinary, touching, identical, empty and inverted (degenerate) boxes."""
    xy = rng.uniform(-5, 60, (n, 2))
    wh = rng.uniform(-4, 40, (n, 2))
    wh[rng.random(n) < 0.15] = 0.0  # zero-size boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if integers:
        boxes = np.round(boxes)
    boxes[n // 2] = boxes[0]  # an identical pair
    return boxes.astype(dtype)


@pytest.mark.parametrize("seed", range(5))
def test_iou_matches_every_replaced_copy_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    for integers in (False, True):
        a, b = random_boxes(rng, 40, integers=integers), random_boxes(rng, 30, integers=integers)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no division warnings anywhere
            np.testing.assert_array_equal(box_iou(a, b), evaluation_box_iou(a, b))
            np.testing.assert_array_equal(
                paired_iou(a, b[:1].repeat(40, 0)), evaluation_box_iou(a, b[:1])[:, 0]
            )
            np.testing.assert_array_equal(box_iou(a, b, clip_areas=False), crops_box_iou(a, b))
            xywh = np.concatenate([a[:, :2], np.abs(a[:, 2:] - a[:, :2])], axis=1)
            for box in xywh[:10]:
                np.testing.assert_array_equal(
                    box_iou(xywh, box, fmt="xywh", clip_areas=False)[:, 0], cuhk_iou_xywh(xywh, box)
                )
            for best in range(5):
                rest = np.arange(best + 1, 40)
                np.testing.assert_array_equal(box_iou(a[best], a[rest])[0], nms_iou(a, best, rest))


@pytest.mark.parametrize("seed", range(5))
def test_check_data_overlap_rule_in_float32(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 60, np.float32, integers=seed % 2 == 0)
    boxes[5] = boxes[6] = [10, 10, 10, 10]  # two empty boxes at one place: a zero union
    boxes[7] = [np.nan, 1, 2, 3]
    for box in boxes[:12]:
        ours = box_iou(boxes, box, clip_areas=False, no_union=1.0, dtype=None)[:, 0] >= 0.5
        np.testing.assert_array_equal(ours, check_data_holds(boxes, box))
        assert box_iou(boxes, box, dtype=None).dtype == np.float32


def test_the_edge_cases_each_caller_keeps():
    empty, inverted, unit = [3.0, 3, 3, 3], [4.0, 4, 2, 2], [0.0, 0, 1, 1]
    # two empty boxes: no union, IoU 0 (or 1 where a caller counts it as overlapping)
    assert box_iou([empty], [empty]).tolist() == [[0.0]]
    assert box_iou([empty], [empty], no_union=1.0).tolist() == [[1.0]]
    # an inverted box has area 0 when areas are clipped, a negative one when they are not
    assert box_area([inverted]).tolist() == [0.0]
    assert box_area([inverted], clip=False).tolist() == [4.0]  # (-2) x (-2)
    assert box_area([[4.0, 4, 2, 6]], clip=False).tolist() == [-4.0]
    assert box_iou([unit], [[0.0, 0, 3, 1]]).tolist() == [[1 / 3]]
    # NaN never overlaps, whatever no_union says
    assert box_iou([[np.nan, 0, 1, 1]], [unit], no_union=1.0).tolist() == [[0.0]]
    with pytest.raises(ValueError, match="box format"):
        box_iou([unit], [unit], fmt="cxcywh")
    with pytest.raises(ValueError, match="equal lengths"):
        paired_iou([unit, unit], [unit])


def test_search_iou_threshold():
    np.testing.assert_allclose(
        search_iou_threshold([[0, 0, 10, 10], [0, 0, 200, 400]]), [100 / 400, 0.5]
    )


def test_crop_bounds_is_both_old_crop_rules():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        width, height = (int(v) for v in rng.integers(1, 50, 2))
        box = rng.uniform(-20, 70, 4)
        if rng.random() < 0.3:
            box = np.round(box)
        if rng.random() < 0.2:
            box = box.astype(np.float32)
        expected = searcher_crop(box, width, height)
        assert crop_bounds(box, width, height) == expected == cut_crop_bounds(box, width, height)
        assert all(type(v) is int for v in crop_bounds(box, width, height))
    assert crop_bounds((9.5, 7.5, 30.0, 30.0), 10, 8) == (9, 7, 10, 8)  # at least 1 x 1
    assert crop_bounds((-5.0, -5.0, 3.2, 4.0), 10, 8) == (0, 0, 4, 4)


def test_clip_boxes_keeps_the_float_dtype():
    boxes = np.array([[-3.5, 2, 700, 90.25]], dtype=np.float32)
    clipped = clip_boxes(boxes, 640, 80)
    assert clipped.dtype == np.float32 and clipped.tolist() == [[0, 2, 640, 80]]
    np.testing.assert_array_equal(clipped, np.clip(boxes, 0, [640, 80, 640, 80]).astype(np.float32))
    assert clip_boxes([[1, 2, 3, 4]], 2, 2).dtype == np.float64
    assert np.isnan(clip_boxes(np.array([[np.nan, 0, 1, 1]]), 5, 5)[0, 0])
