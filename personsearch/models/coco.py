"""torchvision's COCO detectors: one table of the networks, their COCO weights, and building one.

Shared by the person detector that wraps one for search (`search.coco_detectors.CocoDetector`)
and by detector training, which can start from a COCO Faster R-CNN (`DetectorConfig.coco_start`).

Weights come from torch hub's cache (where torchvision itself keeps them: `~/.cache/torch/hub/
checkpoints/<file>`, or under $TORCH_HOME), from a local file, or are downloaded when the machine
is online; offline and absent, the error names the URL, the cache path and the local-file
alternative. `weights="random"` builds the network untrained (tests, export checks). Files are
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from personsearch.errors import ConfigError
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
        "fasterrcnn_resnet50_fpn_v2", "FasterRCNN_ResNet50_FPN_V2_Weights"
    ),
    "fasterrcnn_resnet50_fpn": CocoDetectorSpec(
        "fasterrcnn_resnet50_fpn", "FasterRCNN_ResNet50_FPN_Weights"
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": CocoDetectorSpec(
        "fasterrcnn_mobilenet_v3_large_fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights"
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": CocoDetectorSpec(
        "fasterrcnn_mobilenet_v3_large_320_fpn", "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights"
    ),
    "retinanet_resnet50_fpn_v2": CocoDetectorSpec(
        "retinanet_resnet50_fpn_v2",
        "RetinaNet_ResNet50_FPN_V2_Weights",
        cap_key="detections_per_img",
        thresh_key="score_thresh",
    ),
    "fcos_resnet50_fpn": CocoDetectorSpec(
        "fcos_resnet50_fpn",
        "FCOS_ResNet50_FPN_Weights",
        cap_key="detections_per_img",
        thresh_key="score_thresh",
    ),
    "ssdlite320_mobilenet_v3_large": CocoDetectorSpec(
        "ssdlite320_mobilenet_v3_large",
        "SSDLite320_MobileNet_V3_Large_Weights",
        cap_key="detections_per_img",
        thresh_key="score_thresh",
    ),
    "keypointrcnn_resnet50_fpn": CocoDetectorSpec(
        "keypointrcnn_resnet50_fpn", "KeypointRCNN_ResNet50_FPN_Weights", num_classes=2
    ),
}


def coco_spec(name: str) -> CocoDetectorSpec:
    if name not in COCO_DETECTORS:
        raise ConfigError(
            f"unknown torchvision COCO detector {name!r}; known: {', '.join(COCO_DETECTORS)}"
        )
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
        return torch.hub.load_state_dict_from_url(
            entry.url, progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # offline: URLError, OSError, hash errors; all mean "not here"
        raise WeightsUnavailableError(
            f"COCO weights for {name} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded ({type(error).__name__}: {error}). On a machine with internet, download "
            f"{entry.url} and copy it to {cached}, or give its path as the detector's weights "
            f"(torchvision:{name}?weights=/path/to/{cached.name} in a pipeline, --weights on the "
            "command line)."
        ) from None


def build_coco_network(
    name: str, weights: str | os.PathLike[str] | None = None, max_detections: int = 300
) -> tuple[torch.nn.Module, str]:
    """The torchvision network with its COCO weights (or random ones); returns it and the source."""
    import torchvision.models.detection as detection

    spec = coco_spec(name)
    # The internal score floor is lowered so that our threshold decides; the cap is raised for
    # crowded frames (torchvision's default keeps 100 boxes of all classes).
    kwargs: dict[str, Any] = {spec.cap_key: max_detections}
    if spec.thresh_key:
        kwargs[spec.thresh_key] = 0.01
    network = getattr(detection, spec.builder)(
        weights=None, weights_backbone=None, num_classes=spec.num_classes, **kwargs
    )
    if str(weights) == RANDOM_WEIGHTS:
        return network.eval(), RANDOM_WEIGHTS
    state = coco_state_dict(name, weights)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        where = weights or weights_cache_path(name)
        first = str(error).strip().splitlines()[0][:300]
        raise ConfigError(
            f"{where} does not hold the weights of {name} (another architecture?): {first}"
        ) from None
    return network.eval(), (f"file:{weights}" if weights else f"torchvision:{spec.weights}")
