"""Sliced inference: small people a fixed-input detector misses are found on tiles, nothing doubled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from personsearch.boxes import box_iou
from personsearch.errors import ConfigError
from personsearch.search.sliced import SlicedDetector, tile_origins


class FixedInputDetector:
    """Finds bright rectangles, but sees the image shrunk to fit 416 x 416 (as YOLOX-nano does):
    a person under `min_height` pixels there is missed."""

    fingerprint = "fixed-input-test"
    score_thresh = 0.5

    def __init__(self, size: int = 416, min_height: float = 20.0) -> None:
        self.size, self.min_height = size, min_height
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        scale = min(self.size / image.shape[0], self.size / image.shape[1], 1.0)
        labels, _ = ndimage.label(image[..., 0] > 128)
        boxes = []
        for rows, cols in ndimage.find_objects(labels):
            if (rows.stop - rows.start) * scale >= self.min_height:
                boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        return boxes, np.full(len(boxes), 0.9, np.float32)


def frame_with_people(people):
    image = np.zeros((1080, 1920, 3), np.uint8)
    for x, y, w, h in people:
        image[y : y + h, x : x + w] = 255
    return image


SMALL = [(100, 100, 20, 50), (700, 500, 20, 50), (1500, 900, 20, 50), (405, 300, 20, 50)]
LARGE = [(1000, 100, 300, 700)]  # larger than a tile: only the whole-frame pass sees it whole


def test_tiles_find_small_people_the_whole_frame_misses() -> None:
    image = frame_with_people(SMALL + LARGE)
    truth = np.array([[x, y, x + w, y + h] for x, y, w, h in SMALL + LARGE], np.float32)
    plain = FixedInputDetector()
    boxes, _ = plain.detect(image)
    assert len(boxes) == 1  # only the large person: the small ones shrink below 20 pixels
    sliced = SlicedDetector(FixedInputDetector(), tile=(416, 416), overlap=0.25)
    boxes, scores = sliced.detect(image)
    iou = box_iou(truth, boxes)
    assert (iou.max(axis=1) > 0.99).all()  # everyone found, whole (the one on a tile edge too)
    assert len(boxes) == len(truth)  # nothing doubled, no cut-off pieces
    assert (scores == 0.9).all()


def test_windows_cover_the_image_and_small_images_pass_straight_through() -> None:
    assert tile_origins(1920, 416, 0.25) == [0, 312, 624, 936, 1248, 1504]
    assert tile_origins(300, 416, 0.25) == [0]
    inner = FixedInputDetector()
    sliced = SlicedDetector(inner, tile=(416, 416))
    windows = sliced.windows(1080, 1920)
    covered = np.zeros((1080, 1920), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    sliced.detect(np.zeros((300, 400, 3), np.uint8))
    assert inner.calls == 1  # one tile would be the image: no slicing
    assert "tile=416x416" in sliced.fingerprint and "fixed-input-test" in sliced.fingerprint


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tile": (8, 8)}, "tile must be two integers >= 32"),
    ({"overlap": 0.95}, r"overlap must be in \[0, 0.9\)"),
    ({"nms_iou": 0}, r"nms_iou must be in \(0, 1\]"),
])
def test_bad_settings_named(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SlicedDetector(FixedInputDetector(), **kwargs)
