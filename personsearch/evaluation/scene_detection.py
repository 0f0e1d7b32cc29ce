"""Detections of a list of scenes, and their recall and AP (IoU 0.5) against the annotations.

Pure NumPy: the detections of any detector (the trained one, HOG, an ONNX or torchvision model)
are scored alike, with the person-search papers' measure in `evaluation.detection`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.data.scenes import Scene
from personsearch.errors import ResultsError
from personsearch.evaluation.detection import DetectionResult, evaluate_detection
from personsearch.io import atomic_path


@dataclass(frozen=True)
class SceneDetections:
    """Detections of a list of scenes as flat arrays, grouped by scene in scene order."""

    image_names: tuple[str, ...]
    det_image: np.ndarray  #: (M,) int64 index into image_names
    det_boxes: np.ndarray  #: (M, 4) float32 x1 y1 x2 y2 in the original image's pixels
    det_scores: np.ndarray  #: (M,) float32

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the results-file arrays (no features: the re-id net adds them), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ResultsError(f"{path}: a detections file must end in .npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                image_names=np.asarray(self.image_names, dtype=str),
                det_image=self.det_image.astype(np.int64),
                det_boxes=self.det_boxes.astype(np.float32),
                det_scores=self.det_scores.astype(np.float32),
            )
        return path


def score_detections(
    scenes: Sequence[Scene],
    detections: SceneDetections,
    det_thresh: float = 0.5,
    labeled_only: bool = False,
) -> DetectionResult:
    """Recall and AP (IoU 0.5) of detections against the scenes' annotated persons."""
    gt_image = np.concatenate([np.full(len(s.boxes), i) for i, s in enumerate(scenes)] + [[]])
    gt_boxes = np.concatenate([s.boxes for s in scenes] + [np.zeros((0, 4), np.float32)])
    gt_labeled = np.concatenate([s.labeled for s in scenes] + [np.zeros(0, bool)])
    return evaluate_detection(
        gt_image.astype(np.int64),
        gt_boxes,
        detections.det_image,
        detections.det_boxes,
        detections.det_scores,
        len(scenes),
        det_thresh=det_thresh,
        gt_labeled=gt_labeled,
        labeled_only=labeled_only,
    )


def detection_metrics(
    scenes: Sequence[Scene], detections: SceneDetections, det_thresh: float = 0.5
) -> dict[str, float]:
    """The numbers a run reports, in %: recall and AP at det_thresh, then over all detections."""
    at_thresh = score_detections(scenes, detections, det_thresh)
    everything = score_detections(scenes, detections, 0.0)
    labeled = score_detections(scenes, detections, det_thresh, labeled_only=True)
    return {
        "recall": 100 * at_thresh.recall,
        "ap": 100 * at_thresh.ap,
        "recall_all": 100 * everything.recall,
        "ap_all": 100 * everything.ap,
        "labeled_recall": 100 * labeled.recall,
        "labeled_ap": 100 * labeled.ap,
        "detections_per_image": float(
            (detections.det_scores >= det_thresh).sum() / max(len(scenes), 1)
        ),
    }
