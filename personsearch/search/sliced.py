"""Sliced inference: run any detector on overlapping tiles and on the whole frame, merge by NMS.

A detector with a small fixed input (YOLOX-nano: 416 x 416) shrinks a 1920 x 1080 frame 4.6
times, and small pedestrians vanish. Cutting the frame into tiles of about the model's input
size shows it every person at full resolution; the whole-frame pass keeps the people larger than
a tile. Boxes of all passes are mapped back to the frame and merged by class-agnostic NMS.

    detector = SlicedDetector(load_onnx_detector("yolox.yaml"), tile=(416, 416), overlap=0.25)

Our own rather than SAHI: the `Detector` protocol is already numpy in, numpy out, so tiling is
about 60 lines here, where SAHI would bring its own model wrappers, OpenCV and a dozen
dependencies into the small install. A person cut by a tile edge gives a partial box in that
tile; the overlap (at least a person's width) makes another tile hold the person whole, and the
with the whole-frame pass on, tile boxes that touch a tile edge inside the image (within
`edge_margin` pixels) are dropped, since a neighbouring tile or the whole frame holds that person
whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from personsearch.errors import ConfigError
from personsearch.search.detectors import Detector, detector_fingerprint
from personsearch.search.onnx_detector import nms


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours sharing `overlap`."""
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends at the border
    return sorted(set(starts))


class SlicedDetector:
    """A `Detector` that runs `detector` on tiles (and the whole image) and merges by NMS."""

    def __init__(
        self,
        detector: Detector,
        tile: tuple[int, int] = (416, 416),
        overlap: float = 0.25,
        full_frame: bool = True,
        nms_iou: float = 0.5,
        edge_margin: int = 2,
    ) -> None:
        height, width = tile
        if not (isinstance(height, int) and isinstance(width, int) and min(height, width) >= 32):
            raise ConfigError(f"tile must be two integers >= 32 (height, width), got {tile!r}")
        if not 0 <= overlap < 0.9:
            raise ConfigError(f"overlap must be in [0, 0.9), got {overlap!r}")
        if not 0 < nms_iou <= 1:
            raise ConfigError(f"nms_iou must be in (0, 1], got {nms_iou!r}")
        self.detector, self.tile, self.overlap = detector, (height, width), float(overlap)
        self.full_frame, self.nms_iou, self.edge_margin = full_frame, float(nms_iou), edge_margin
        self.score_thresh = getattr(detector, "score_thresh", None)
        self.fingerprint = (
            f"sliced({detector_fingerprint(detector)};tile={height}x{width};"
            f"overlap={overlap:g};full={int(full_frame)};nms={nms_iou:g})"
        )

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The tiles (x1, y1, x2, y2) of an image of this size, row by row."""
        tile_h, tile_w = self.tile
        return [
            (x, y, min(x + tile_w, width), min(y + tile_h, height))
            for y in tile_origins(height, tile_h, self.overlap)
            for x in tile_origins(width, tile_w, self.overlap)
        ]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(
                f"an image must be a non-empty H x W x 3 array, got shape {image.shape}"
            )
        height, width = image.shape[:2]
        windows = self.windows(height, width)
        if len(windows) == 1:  # the image fits one tile: slicing adds nothing
            return self.detector.detect(image)
        all_boxes, all_scores = [], []
        for x1, y1, x2, y2 in windows:
            boxes, scores = self.detector.detect(np.ascontiguousarray(image[y1:y2, x1:x2]))
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            # without the whole-frame pass a person larger than a tile is only ever seen cut
            keep = (
                self._away_from_inner_edges(boxes, (x1, y1, x2, y2), height, width)
                if self.full_frame
                else np.ones(len(boxes), dtype=bool)
            )
            all_boxes.append(boxes[keep] + np.array([x1, y1, x1, y1], np.float32))
            all_scores.append(np.asarray(scores, np.float32).reshape(-1)[keep])
        if self.full_frame:
            boxes, scores = self.detector.detect(image)
            all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
            all_scores.append(np.asarray(scores, np.float32).reshape(-1))
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        if not len(boxes):
            return boxes, scores
        kept = nms(boxes, scores, self.nms_iou)
        return boxes[kept], scores[kept]

    def _away_from_inner_edges(
        self, boxes: np.ndarray, window: tuple[int, int, int, int], height: int, width: int
    ) -> np.ndarray:
        """False for boxes cut by a tile edge that lies inside the image (another tile, or the
        whole frame, holds that person whole)."""
        x1, y1, x2, y2 = window
        m = self.edge_margin
        w, h = x2 - x1, y2 - y1
        cut = np.zeros(len(boxes), dtype=bool)
        if x1 > 0:
            cut |= boxes[:, 0] <= m
        if y1 > 0:
            cut |= boxes[:, 1] <= m
        if x2 < width:
            cut |= boxes[:, 2] >= w - m
        if y2 < height:
            cut |= boxes[:, 3] >= h - m
        return ~cut

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.detect(image) for image in images]
