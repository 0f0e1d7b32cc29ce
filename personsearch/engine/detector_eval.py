"""Running the detector over scene records and scoring it (recall and AP at IoU 0.5).

Every rank detects its shard of the scenes (indices rank, rank + W, ...); the detections are
gathered into one flat, scene-ordered set on every rank, so each image counts exactly once
whatever the world size. Scoring is `personsearch.evaluation.scene_detection` (no torch), which
also scores any other detector's detections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from personsearch.data.detection_dataset import SceneDetectionDataset, collate_detection
from personsearch.data.samplers import ShardSampler
from personsearch.data.scenes import Scene
from personsearch.engine.distributed import DistInfo, all_gather_arrays
from personsearch.engine.logging import progress_bar
from personsearch.evaluation.scene_detection import SceneDetections
from personsearch.models.detector import PersonDetector

#: Detection evaluation keeps boxes down to this score, to trace the precision-recall curve; the
#: headline numbers then keep those scored >= det_thresh (0.5), as the person-search papers do.
EVAL_SCORE_THRESH = 0.05


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
            with torch.autocast(
                device_type=dist_info.device.type, enabled=dist_info.device.type == "cuda"
            ):
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
