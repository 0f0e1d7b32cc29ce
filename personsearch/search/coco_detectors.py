"""torchvision's COCO detectors as person detectors: the person class kept, everything else dropped.

    detector = CocoDetector("fasterrcnn_resnet50_fpn_v2")              # weights from the cache
    detector = CocoDetector("retinanet_resnet50_fpn_v2", weights="/path/to/file.pth")
    boxes, scores = detector.detect(rgb_image)                          # persons only

`personsearch export onnx --torchvision <name>` turns one into an ONNX detector with its YAML.
The networks and their weights (cache, local file, the offline message) are in
`personsearch.models.coco`.

Which to pick (COCO box AP of all classes, from torchvision's model table; speed on this
project's CPU: docs/benchmarks.md): Faster R-CNN v2 is the most accurate and the slowest;
RetinaNet v2 and FCOS are close; SSDlite and the MobileNetV3 Faster R-CNNs are the fast ones,
and lose small people first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from personsearch.errors import ConfigError, PersonSearchError
from personsearch.models.coco import COCO_PERSON, build_coco_network


class CocoDetector:
    """A `Detector`: a torchvision COCO detector whose person boxes are kept (scores >= thresh)."""

    def __init__(
        self,
        name: str,
        weights: str | os.PathLike[str] | None = None,
        score_thresh: float = 0.5,
        device: str | torch.device | None = None,
        max_detections: int = 300,
    ) -> None:
        if not (isinstance(score_thresh, int | float) and 0 <= score_thresh <= 1):
            raise ConfigError(f"score_thresh must be a number in [0, 1], got {score_thresh!r}")
        if not (isinstance(max_detections, int) and max_detections >= 1):
            raise ConfigError(f"max_detections must be an integer >= 1, got {max_detections!r}")
        self.name = name
        self.device = torch.device(device or "cpu")
        self.network, self.weights_source = build_coco_network(name, weights, max_detections)
        self.network.to(self.device)
        self.score_thresh = float(score_thresh)
        self.fingerprint = (
            f"torchvision-coco:{name}:{_weights_digest(self.network)}:{self.score_thresh:g}"
        )

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_batch([image])[0]

    @torch.no_grad()
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        tensors = []
        for image in images:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                raise ValueError(
                    f"an image must be a non-empty H x W x 3 array, got shape {image.shape}"
                )
            tensors.append(
                torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
                .permute(2, 0, 1)
                .to(self.device, torch.float32)
                / 255.0
            )
        results = []
        for output in self.network(tensors):
            keep = (output["labels"] == COCO_PERSON) & (output["scores"] >= self.score_thresh)
            boxes = output["boxes"][keep].float().cpu().numpy()
            scores = output["scores"][keep].float().cpu().numpy()
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise PersonSearchError(
                    f"torchvision detector {self.name} returned NaN or "
                    "infinite boxes or scores: its weights are broken"
                )
            results.append((boxes.reshape(-1, 4), scores))
        return results


def _weights_digest(network: torch.nn.Module) -> str:
    """A short digest of the weights: two detectors with other weights never share an index."""
    import hashlib

    digest = hashlib.sha1()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]
