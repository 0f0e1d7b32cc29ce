"""torchvision's COCO detectors as person detectors: the person class kept, everything else dropped.

    detector = CocoDetector("fasterrcnn_resnet50_fpn_v2")              # weights from the cache
    detector = CocoDetector("retinanet_resnet50_fpn_v2", weights="/path/to/file.pth")
    boxes, scores = detector.detect(rgb_image)                          # persons only

A pipeline names one as `detector: torchvision:<name>` (pipeline.yaml), `personsearch export
onnx --detector torchvision:<name>` turns it into an ONNX detector with its YAML, and
`personsearch evaluate-detector --detector torchvision:<name>` scores it.

Weights come from torch hub's cache (where torchvision itself keeps them: `~/.cache/torch/hub/
checkpoints/<file>`, or under $TORCH_HOME), from a local file (`weights=PATH`), or are downloaded
when the machine is online; offline and absent, the error names the URL, the cache path and the
local-file alternative. `weights="random"` builds the network untrained (tests, export checks).
Files are read with `torch.load(weights_only=True)`.

Which to pick (COCO box AP of all classes, from torchvision's model table; speed on this
project's CPU: docs/benchmarks.md): Faster R-CNN v2 is the most accurate and the slowest;
RetinaNet v2 and FCOS are close; SSDlite and the MobileNetV3 Faster R-CNNs are the fast ones,
and lose small people first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import ConfigError, PersonSearchError
from personsearch.models.pretrained import WeightsUnavailableError, read_weights_file

#: torchvision's COCO category id of "person" (Keypoint R-CNN's only foreground class is 1 too)
COCO_PERSON = 1
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class CocoDetectorSpec:
    """One torchvision COCO detector: its builder, its weights entry, and its per-image cap key."""

    builder: str  #: function in torchvision.models.detection
    weights: str  #: WeightsEnum class name; its COCO entry is `COCO_V1`
    cap_key: str = "box_detections_per_img"  #: the builder's keyword for detections per image
    thresh_key: str | None = "box_score_thresh"  #: its keyword for the internal score floor
    num_classes: int = 91


COCO_DETECTORS: dict[str, CocoDetectorSpec] = {
    "fasterrcnn_resnet50_fpn_v2": CocoDetectorSpec(
        "fasterrcnn_resnet50_fpn_v2", "FasterRCNN_ResNet50_FPN_V2_Weights"),
    "fasterrcnn_resnet50_fpn": CocoDetectorSpec(
        "fasterrcnn_resnet50_fpn", "FasterRCNN_ResNet50_FPN_Weights"),
    "fasterrcnn_mobilenet_v3_large_fpn": CocoDetectorSpec(
        "fasterrcnn_mobilenet_v3_large_fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": CocoDetectorSpec(
        "fasterrcnn_mobilenet_v3_large_320_fpn", "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights"),
    "retinanet_resnet50_fpn_v2": CocoDetectorSpec(
        "retinanet_resnet50_fpn_v2", "RetinaNet_ResNet50_FPN_V2_Weights",
        cap_key="detections_per_img", thresh_key="score_thresh"),
    "fcos_resnet50_fpn": CocoDetectorSpec(
        "fcos_resnet50_fpn", "FCOS_ResNet50_FPN_Weights",
        cap_key="detections_per_img", thresh_key="score_thresh"),
    "ssdlite320_mobilenet_v3_large": CocoDetectorSpec(
        "ssdlite320_mobilenet_v3_large", "SSDLite320_MobileNet_V3_Large_Weights",
        cap_key="detections_per_img", thresh_key="score_thresh"),
    "keypointrcnn_resnet50_fpn": CocoDetectorSpec(
        "keypointrcnn_resnet50_fpn", "KeypointRCNN_ResNet50_FPN_Weights", num_classes=2),
}


def coco_spec(name: str) -> CocoDetectorSpec:
    if name not in COCO_DETECTORS:
        raise ConfigError(f"unknown torchvision COCO detector {name!r}; known: "
                          f"{', '.join(COCO_DETECTORS)}")
    return COCO_DETECTORS[name]


def coco_box_ap(name: str) -> float | None:
    """COCO val2017 box AP (all classes) as torchvision's weights entry lists it."""
    return weights_entry(name).meta.get("_metrics", {}).get("COCO-val2017", {}).get("box_map")


def weights_entry(name: str) -> Any:
    """torchvision's COCO weights entry (url, meta) for a detector name."""
    import torchvision.models.detection as detection

    enum = getattr(detection, coco_spec(name).weights)
    return enum.COCO_V1


def weights_cache_path(name: str) -> Path:
    """Where torch hub keeps (or would keep) a detector's COCO weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_entry(name).url.rsplit("/", 1)[-1]


def coco_state_dict(name: str, weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The COCO weights of `name`: from `weights` (a file), else the cache, else a download."""
    if weights is not None:
        return read_weights_file(weights)
    cached = weights_cache_path(name)
    if cached.is_file():
        return read_weights_file(cached)
    entry = weights_entry(name)
    try:
        return torch.hub.load_state_dict_from_url(entry.url, progress=False, check_hash=True,
                                                  weights_only=True)
    except Exception as error:  # offline: URLError, OSError, hash errors; all mean "not here"
        raise WeightsUnavailableError(
            f"COCO weights for {name} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded ({type(error).__name__}: {error}). On a machine with internet, download "
            f"{entry.url} and copy it to {cached}, or give its path as the detector's weights "
            f"(torchvision:{name}?weights=/path/to/{cached.name} in a pipeline, --weights on the "
            "command line)."
        ) from None


def build_coco_network(name: str, weights: str | os.PathLike[str] | None = None,
                       max_detections: int = 300) -> tuple[torch.nn.Module, str]:
    """The torchvision network with its COCO weights (or random ones); returns it and the source."""
    import torchvision.models.detection as detection

    spec = coco_spec(name)
    # The internal score floor is lowered so that our threshold decides; the cap is raised for
    # crowded frames (torchvision's default keeps 100 boxes of all classes).
    kwargs: dict[str, Any] = {spec.cap_key: max_detections}
    if spec.thresh_key:
        kwargs[spec.thresh_key] = 0.01
    network = getattr(detection, spec.builder)(
        weights=None, weights_backbone=None, num_classes=spec.num_classes, **kwargs)
    if str(weights) == RANDOM_WEIGHTS:
        return network.eval(), RANDOM_WEIGHTS
    state = coco_state_dict(name, weights)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        where = weights or weights_cache_path(name)
        first = str(error).strip().splitlines()[0][:300]
        raise ConfigError(f"{where} does not hold the weights of {name} (another architecture?): "
                          f"{first}") from None
    return network.eval(), (f"file:{weights}" if weights else f"torchvision:{spec.weights}")


class CocoDetector:
    """A `Detector`: a torchvision COCO detector whose person boxes are kept (scores >= thresh)."""

    def __init__(self, name: str, weights: str | os.PathLike[str] | None = None,
                 score_thresh: float = 0.5, device: str | torch.device | None = None,
                 max_detections: int = 300) -> None:
        if not (isinstance(score_thresh, int | float) and 0 <= score_thresh <= 1):
            raise ConfigError(f"score_thresh must be a number in [0, 1], got {score_thresh!r}")
        if not (isinstance(max_detections, int) and max_detections >= 1):
            raise ConfigError(f"max_detections must be an integer >= 1, got {max_detections!r}")
        self.name = name
        self.device = torch.device(device or "cpu")
        self.network, self.weights_source = build_coco_network(name, weights, max_detections)
        self.network.to(self.device)
        self.score_thresh = float(score_thresh)
        self.fingerprint = (f"torchvision-coco:{name}:{_weights_digest(self.network)}:"
                            f"{self.score_thresh:g}")

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_batch([image])[0]

    @torch.no_grad()
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        tensors = []
        for image in images:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                raise ValueError(
                    f"an image must be a non-empty H x W x 3 array, got shape {image.shape}")
            tensors.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
                           .permute(2, 0, 1).to(self.device, torch.float32) / 255.0)
        results = []
        for output in self.network(tensors):
            keep = (output["labels"] == COCO_PERSON) & (output["scores"] >= self.score_thresh)
            boxes = output["boxes"][keep].float().cpu().numpy()
            scores = output["scores"][keep].float().cpu().numpy()
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise PersonSearchError(f"torchvision detector {self.name} returned NaN or "
                                        "infinite boxes or scores: its weights are broken")
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
