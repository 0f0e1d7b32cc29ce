"""Scene records as detector samples: an image tensor and torchvision's target dict.

Every annotated person is a positive (labelled or not: the detector only tells person from
background), class label 1. Images without persons are kept: they teach the detector what
background looks like, and torchvision's RPN and RoI heads accept empty targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from personsearch.data.images import read_rgb
from personsearch.data.scenes import Scene

PERSON_LABEL = 1

DetectionSample = tuple[Tensor, dict[str, Tensor]]


def image_to_tensor(image: np.ndarray) -> Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1] (the detector normalises it itself)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip x1y1x2y2 boxes to the image and drop those left with no width or height.

    Annotations sometimes reach past the border; torchvision rejects degenerate boxes outright.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep]


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror x1y1x2y2 boxes of an image `width` pixels wide."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


class SceneDetectionDataset(Dataset[DetectionSample]):
    """Scenes -> (image 3 x H x W float in [0, 1], {"boxes", "labels", "image_index"}).

    `flip_prob` > 0 mirrors an image and its boxes at random (training augmentation). An item
    key is an index or an `(index, seed, epoch)` triple from `EpochSampler`; with a triple the
    flip is drawn from `np.random.default_rng((seed, epoch, index))`, so a resumed or
    distributed run sees the same samples.
    """

    def __init__(self, scenes: Sequence[Scene], flip_prob: float = 0.0) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.scenes = tuple(scenes)
        self.flip_prob = flip_prob

    def __len__(self) -> int:
        return len(self.scenes)

    def _unpack(self, key: int | tuple[int, int, int]) -> tuple[int, bool]:
        """The scene index, and whether to mirror it (no random draw when flips are off)."""
        if isinstance(key, tuple):
            index, seed, epoch = key
            if self.flip_prob == 0:
                return index, False
            return index, bool(
                np.random.default_rng((seed, epoch, index)).random() < self.flip_prob
            )
        return key, bool(self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob)

    def __getitem__(self, key: int | tuple[int, int, int]) -> DetectionSample:
        index, flip = self._unpack(key)
        scene = self.scenes[index]
        image = image_to_tensor(read_rgb(scene.path))
        height, width = image.shape[-2:]
        boxes = torch.from_numpy(sanitize_boxes(scene.boxes, width, height))
        if flip:
            image = image.flip(-1)
            boxes = hflip_boxes(boxes, width)
        target = {
            "boxes": boxes,
            "labels": torch.full((len(boxes),), PERSON_LABEL, dtype=torch.int64),
            "image_index": torch.tensor(index, dtype=torch.int64),
        }
        return image, target


def collate_detection(
    batch: Sequence[DetectionSample],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Keep images of different sizes as a list: the detector resizes and batches them itself."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
