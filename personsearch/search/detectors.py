"""The detector side of the searcher: the `Detector` protocol and the detectors that need no
training.

`Detector` finds person boxes in a scene image; with `Embedder` (personsearch.search.embedders)
it is all the gallery index and the searcher speak. The trained detector is wrapped in
personsearch.search.torch_detector.TorchDetector.

The detectors here need nothing beyond numpy and Pillow (HOG: OpenCV 4, when installed):
- `WholeImageDetector`: the whole image is one person (galleries of person crops).
- `GroundTruthBoxes`: returns known boxes for known images (tests, evaluation with given boxes).
- `HogPeopleDetector`: OpenCV's HOG + linear SVM pedestrian detector, when OpenCV 4 is installed.

`detect_scene_images` runs any detector over a dataset's scenes, for `evaluate-detector`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from personsearch.boxes import clip_boxes
from personsearch.data.images import read_rgb
from personsearch.data.scenes import Scene
from personsearch.errors import PersonSearchError
from personsearch.evaluation.scene_detection import SceneDetections


@runtime_checkable
class Detector(Protocol):
    """Finds persons in a scene image.

    A detector may also carry a `fingerprint` string attribute (see `detector_fingerprint`); the
    gallery index records it so that one index never mixes boxes of two detectors.
    """

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H x W x 3 uint8 image -> (N x 4 float32 boxes x1 y1 x2 y2 in pixels, N float32 scores)."""
        ...


def detector_fingerprint(detector: Detector) -> str:
    """The detector's `fingerprint` attribute, or its class name when it has none."""
    return str(getattr(detector, "fingerprint", type(detector).__name__))


def detect_checked(
    detector: Detector, image: np.ndarray, source: object
) -> tuple[np.ndarray, np.ndarray]:
    """Run `detector` on `image`; clip its boxes to the image and drop the empty and non-finite
    ones. `source` names the image in the error raised when boxes and scores do not pair up."""
    boxes, scores = detector.detect(image)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise PersonSearchError(
            f"detector returned {len(boxes)} boxes but {len(scores)} scores for {source}"
        )
    height, width = image.shape[:2]
    boxes = clip_boxes(boxes, width, height)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    keep &= np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    return boxes[keep], scores[keep]


class WholeImageDetector:
    """Every image is one person: for galleries made of person crops."""

    fingerprint = "whole-image"

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = np.asarray(image).shape[:2]
        boxes = np.array([[0.0, 0.0, width, height]], dtype=np.float32)
        return boxes, np.ones(1, dtype=np.float32)


def pixel_digest(image: np.ndarray) -> str:
    """A digest of decoded pixels (shape included): identifies an image independent of its path."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha1(repr(image.shape).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class GroundTruthBoxes:
    """A "detector" that returns known boxes, looked up by the image's pixels.

    The Detector protocol sees pixels only, so images are recognised by `pixel_digest`. An image
    it was not told about has no persons. Scores are 1.
    """

    fingerprint = "ground-truth"

    def __init__(self, boxes_by_digest: Mapping[str, np.ndarray]) -> None:
        self._boxes = {
            key: np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            for key, boxes in boxes_by_digest.items()
        }

    @classmethod
    def from_files(
        cls, boxes_by_path: Mapping[str | os.PathLike[str], np.ndarray] | Iterable[tuple]
    ) -> GroundTruthBoxes:
        """Read each image once to learn its digest: {path: N x 4 boxes} or (path, boxes) pairs."""
        items = boxes_by_path.items() if isinstance(boxes_by_path, Mapping) else boxes_by_path
        return cls({pixel_digest(read_rgb(path)): boxes for path, boxes in items})

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = self._boxes.get(pixel_digest(image), np.zeros((0, 4), dtype=np.float32))
        return boxes.copy(), np.ones(len(boxes), dtype=np.float32)


class HogPeopleDetector:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs): needs `cv2`.

    A classic, weak detector: it finds upright people of at least 64 x 128 pixels, so an image
    narrower than 64 or shorter than 128 pixels has no detections (OpenCV is never called on
    it: it crashes on such images, see `fits_hog_window`). Scores are the SVM margins, so they
    are not probabilities. OpenCV returns its whole 64 x 128 detection window, which holds a
    margin of background around the person; `trim` (on by default) cuts each box to the person
    inside it, which matters both for IoU-based evaluation and for the crops the re-id net sees.
    """

    #: Fractions of the window cut off (left, top, right, bottom): where the person stands in
    #: OpenCV's 64 x 128 training windows. On the 16 PRW sample frames, trimming raises the
    #: annotated persons found at IoU >= 0.5 from 10 to 33 of 61 (tests/test_hog_detector.py).
    WINDOW_TRIM = (0.20, 0.08, 0.20, 0.12)

    def __init__(self, min_score: float = 0.0, trim: bool = True) -> None:
        if not hog_available():
            raise PersonSearchError(
                "the HOG people detector needs OpenCV 4 (`pip install opencv-python-headless<5`):"
                " cv2 is missing or, as in OpenCV 5, has no HOGDescriptor"
            )
        import cv2  # optional dependency: imported here so the module loads without it

        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_score = min_score
        self.trim = trim
        # boxes differ with trimming: an index built one way must not be extended the other
        self.fingerprint = "opencv-hog-people-v2-trimmed" if trim else "opencv-hog-people-v1"

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image must be H x W x 3 uint8, got shape {image.shape}")
        if not fits_hog_window(image.shape[:2]):
            # No person HOG can find fits (its smallest person fills the window), and OpenCV 4
            # corrupts memory on such an image: never hand it one (see fits_hog_window).
            return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)
        bgr = self._cv2.cvtColor(image, self._cv2.COLOR_RGB2BGR)
        rects, weights = self._hog.detectMultiScale(
            bgr, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(weights, dtype=np.float32).reshape(-1)
        keep = scores >= self.min_score
        boxes = rects[keep].copy()
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
        if self.trim:
            boxes = trim_hog_windows(boxes, image.shape[:2])
        return boxes, scores[keep]


#: OpenCV's people detector window, width x height: the smallest person it finds.
HOG_WINDOW = (64, 128)


def fits_hog_window(image_size: tuple[int, int]) -> bool:
    """Whether an image (height, width) holds at least one HOG window.

    OpenCV 4's detectMultiScale always runs its first pyramid level, even on an image smaller
    than the window; its window count for the padded image then goes negative and it writes
    outside its buffers: `malloc(): invalid size`, `double free or corruption` or a segfault
    (e.g. 64 x 64, 8 x 8, 200 x 40), or an assertion (30 x 128). Images of at least 64 x 128 are
    safe: every level it adds is at least the window (checked on 300 sizes down to 64 x 128).
    """
    height, width = image_size
    return width >= HOG_WINDOW[0] and height >= HOG_WINDOW[1]


def trim_hog_windows(windows: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Cut HOG detection windows (x1 y1 x2 y2) to the person inside, within the image."""
    left, top, right, bottom = HogPeopleDetector.WINDOW_TRIM
    x1, y1, x2, y2 = np.asarray(windows, dtype=np.float32).reshape(-1, 4).T
    w, h = x2 - x1, y2 - y1
    boxes = np.stack([x1 + left * w, y1 + top * h, x2 - right * w, y2 - bottom * h], axis=1)
    height, width = image_size
    return clip_boxes(boxes, width, height)  # windows may reach past the border


def hog_available() -> bool:
    """Whether OpenCV with its HOG people detector can be imported (OpenCV 5 moved HOG out)."""
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "HOGDescriptor")


def detect_scene_images(
    detector: Detector, scenes: Sequence[Scene], progress: bool = False, min_score: float = 0.0
) -> SceneDetections:
    """Run any `Detector` over the scenes' images: the detections `evaluate-detector` scores.

    Boxes scored below `min_score` are dropped (the detector's own threshold applies first).
    """
    from tqdm import tqdm

    rows = [np.zeros((0, 6), dtype=np.float64)]  # scene index, x1, y1, x2, y2, score
    for index, scene in enumerate(tqdm(scenes, desc="detect", unit="image", disable=not progress)):
        boxes, scores = detector.detect(read_rgb(scene.path))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keep = scores >= min_score
        rows.append(
            np.hstack(
                [np.full((int(keep.sum()), 1), float(index)), boxes[keep], scores[keep, None]]
            )
        )
    table = np.concatenate(rows)
    return SceneDetections(
        image_names=tuple(scene.name for scene in scenes),
        det_image=table[:, 0].astype(np.int64),
        det_boxes=table[:, 1:5].astype(np.float32),
        det_scores=table[:, 5].astype(np.float32),
    )
