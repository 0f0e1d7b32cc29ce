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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": (8, 8)}, "tile must be two integers >= 32"),
        ({"overlap": 0.95}, r"overlap must be in \[0, 0.9\)"),
        ({"nms_iou": 0}, r"nms_iou must be in \(0, 1\]"),
    ],
)
def test_bad_settings_named(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SlicedDetector(FixedInputDetector(), **kwargs)


def test_pipeline_yaml_names_slices_and_torchvision_detectors(tmp_path) -> None:
    from personsearch.search.detectors import HogPeopleDetector
    from personsearch.search.pipeline import detector_from_spec, sliced_detector

    where = tmp_path / "pipeline.yaml"
    sliced = sliced_detector(HogPeopleDetector(), {"tile": 416, "overlap": 0.3}, where)
    assert isinstance(sliced, SlicedDetector) and sliced.tile == (416, 416)
    assert isinstance(sliced_detector(HogPeopleDetector(), True, where), SlicedDetector)
    with pytest.raises(ConfigError, match="unknown slices settings tiles"):
        sliced_detector(HogPeopleDetector(), {"tiles": 416}, where)
    with pytest.raises(ConfigError, match="must be true or a mapping"):
        sliced_detector(HogPeopleDetector(), 416, where)
    pytest.importorskip("torch")
    from personsearch.search.coco_detectors import CocoDetector

    coco = detector_from_spec(
        "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn?weights=random", tmp_path, 0.4
    )
    assert isinstance(coco, CocoDetector) and coco.score_thresh == 0.4
    with pytest.raises(ConfigError, match="unknown torchvision COCO detector 'nope'"):
        detector_from_spec("torchvision:nope", tmp_path, 0.5)
    with pytest.raises(ConfigError, match=r"\?weights=FILE"):
        detector_from_spec("torchvision:fasterrcnn_resnet50_fpn?file=x", tmp_path, 0.5)


def test_evaluate_detector_scores_any_detector(tmp_path, capsys) -> None:
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from cuhk_fixture import write_cuhk_sysu

    from personsearch.cli import main

    root = tmp_path / "cuhk"
    write_cuhk_sysu(root)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate-detector",
                "--detector",
                "whole-image",
                "--dataset",
                "cuhk-sysu",
                "--root",
                str(root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detector"] == "whole-image" and 0 <= metrics["recall"] <= 100
    assert (out / "pr_curve.png").is_file() and (out / "detections.npz").is_file()
    capsys.readouterr()
    assert main(["evaluate-detector", "--detector", "hog"]) != 0
    assert "--detector needs --dataset and --root" in capsys.readouterr().err
