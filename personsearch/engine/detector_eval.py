"""Running the detector over scene records and scoring it (recall and AP at IoU 0.5).

Every rank detects its shard of the scenes (indices rank, rank + W, ...); the detections are
gathered into one flat, scene-ordered set on every rank, so each image counts exactly once
whatever the world size. Scoring is the pure function in `personsearch.evaluation.detection`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from personsearch.data.detection_dataset import SceneDetectionDataset, collate_detection
from personsearch.data.samplers import ShardSampler
from personsearch.data.scenes import Scene
from personsearch.engine.distributed import DistInfo, all_gather_arrays
from personsearch.engine.logging import progress_bar
from personsearch.errors import ResultsError
from personsearch.evaluation.detection import DetectionResult, evaluate_detection
from personsearch.io import atomic_path
from personsearch.models.detector import PersonDetector

#: Detection evaluation keeps boxes down to this score, to trace the precision-recall curve; the
#: headline numbers then keep those scored >= det_thresh (0.5), as the person-search papers do.
EVAL_SCORE_THRESH = 0.05


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


@torch.no_grad()
def detect_scenes(
    model: PersonDetector,
    scenes: Sequence[Scene],
    *,
    score_thresh: float | None = None,
    batch_size: int = 2,
    workers: int = 0,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> SceneDetections:
    """Detect persons in every scene (model in eval mode; its training mode is restored).

    `score_thresh` replaces the model's own threshold for this call (None keeps it).
    """
    dist_info = dist_info or DistInfo()
    loader = DataLoader(
        SceneDetectionDataset(scenes),
        batch_size=batch_size,
        sampler=ShardSampler(len(scenes), dist_info.rank, dist_info.world_size),
        num_workers=workers,
        collate_fn=collate_detection,
        pin_memory=dist_info.device.type == "cuda",
    )
    was_training, saved_thresh = model.training, model.score_thresh
    model.eval()
    if score_thresh is not None:
        model.score_thresh = score_thresh
    rows = [np.zeros((0, 6), dtype=np.float64)]  # scene index, x1, y1, x2, y2, score
    bar = progress_bar(len(loader.sampler), 0, progress and dist_info.is_main, desc="detect")
    try:
        for images, targets in loader:
            images = [image.to(dist_info.device, non_blocking=True) for image in images]
            with torch.autocast(device_type=dist_info.device.type, enabled=dist_info.device.type == "cuda"):
                outputs = model(images)
            for output, target in zip(outputs, targets, strict=True):
                boxes = output["boxes"].float().cpu().numpy()
                scores = output["scores"].float().cpu().numpy()
                index = np.full((len(boxes), 1), float(target["image_index"]))
                rows.append(np.hstack([index, boxes, scores[:, None]]))
            bar.update(len(images))
    finally:
        bar.close()
        model.score_thresh = saved_thresh
        model.train(was_training)
    gathered = np.concatenate(all_gather_arrays(np.concatenate(rows)))
    gathered = gathered[np.argsort(gathered[:, 0], kind="stable")]  # each image from one rank
    return SceneDetections(
        image_names=tuple(scene.name for scene in scenes),
        det_image=gathered[:, 0].astype(np.int64),
        det_boxes=gathered[:, 1:5].astype(np.float32),
        det_scores=gathered[:, 5].astype(np.float32),
    )


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
        gt_image.astype(np.int64), gt_boxes, detections.det_image, detections.det_boxes,
        detections.det_scores, len(scenes), det_thresh=det_thresh, gt_labeled=gt_labeled,
        labeled_only=labeled_only,
    )


def detection_metrics(scenes: Sequence[Scene], detections: SceneDetections,
                      det_thresh: float = 0.5) -> dict[str, float]:
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
        "detections_per_image": float((detections.det_scores >= det_thresh).sum() / max(len(scenes), 1)),
    }
