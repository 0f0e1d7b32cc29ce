"""The in-memory records every dataset reader produces; nothing downstream knows a file format.

Boxes are always float32 `x1, y1, x2, y2` in pixels of the original image (readers convert the
on-disk `x, y, w, h` once). Identity labels are ints; `UNLABELED` marks a person without an
identity (a detector positive that is never a query or a re-id training sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

UNLABELED = -1

#: Which gallery images beyond the listed ones contribute their detections as negatives:
#: "none" (CUHK-SYSU TestG<N>), "all" (every other image but the query's own: CUHK-SYSU full,
#: PRW default) or "other-cameras" (PRW cross-camera: only images from other cameras).
Unlisted = Literal["none", "all", "other-cameras"]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert N x 4 `x, y, w, h` boxes to float32 `x1, y1, x2, y2`."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = boxes.copy()
    out[:, 2] = boxes[:, 0] + boxes[:, 2]
    out[:, 3] = boxes[:, 1] + boxes[:, 3]
    return out


@dataclass(frozen=True)
class Scene:
    """One scene image and every annotated person in it."""

    name: str  #: file name, unique within the dataset (e.g. "s15538.jpg", "c1s1_001051.jpg")
    path: Path  #: where the image is on disk
    boxes: np.ndarray  #: N x 4 float32, x1 y1 x2 y2
    pids: np.ndarray  #: N int64 identity labels, UNLABELED for background people
    camera: int = -1  #: camera id where known (PRW), else -1
    size: tuple[int, int] | None = None  #: (width, height) where the reader knows it

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        pids = np.asarray(self.pids, dtype=np.int64).reshape(-1)
        if len(boxes) != len(pids):
            raise ValueError(f"{self.name}: {len(boxes)} boxes but {len(pids)} identity labels")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "pids", pids)
        object.__setattr__(self, "path", Path(self.path))

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of the persons that carry an identity."""
        return self.pids != UNLABELED


@dataclass(frozen=True)
class QueryTask:
    """One search query: a person in a probe image and the gallery it is searched in.

    `gallery` lists image indices (into `SearchProtocol.images`) in protocol order, duplicates
    kept (the original CUHK-SYSU protocol files list a few images twice). `gt_boxes` is aligned
    with it: the query person's box in that image, or a row of NaN where the image does not hold
    the person. Images beyond the list contribute negatives as `SearchProtocol.unlisted` says.
    """

    image: str
    box: np.ndarray  #: (4,) float32 x1 y1 x2 y2 of the query person in its own image
    pid: int
    camera: int
    gallery: np.ndarray  #: (L,) int64 indices into SearchProtocol.images
    gt_boxes: np.ndarray  #: (L, 4) float32, NaN rows where the listed image lacks the person

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", np.asarray(self.box, dtype=np.float32).reshape(4))
        gallery = np.asarray(self.gallery, dtype=np.int64).reshape(-1)
        gt = np.asarray(self.gt_boxes, dtype=np.float32).reshape(-1, 4)
        if len(gallery) != len(gt):
            raise ValueError(
                f"query {self.image}: {len(gallery)} gallery entries, {len(gt)} gt rows"
            )
        object.__setattr__(self, "gallery", gallery)
        object.__setattr__(self, "gt_boxes", gt)

    @property
    def holds_person(self) -> np.ndarray:
        """Boolean mask over `gallery`: the listed image holds the query person."""
        return ~np.isnan(self.gt_boxes[:, 0])


@dataclass(frozen=True)
class SearchProtocol:
    """A benchmark's search protocol: the image index space and one task per query."""

    name: str  #: e.g. "cuhk-sysu/TestG100", "cuhk-sysu/full", "prw", "prw/cross-camera"
    images: tuple[
        str, ...
    ]  #: every test (gallery) image name, the index space of QueryTask.gallery
    queries: tuple[QueryTask, ...]
    unlisted: Unlisted = "none"
    image_cameras: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        cams = np.asarray(self.image_cameras, dtype=np.int64).reshape(-1)
        if len(cams) == 0:
            cams = np.full(len(self.images), -1, dtype=np.int64)
        if len(cams) != len(self.images):
            raise ValueError(f"{self.name}: {len(cams)} cameras for {len(self.images)} images")
        object.__setattr__(self, "image_cameras", cams)

    def image_index(self) -> dict[str, int]:
        """Map image name to its index in `images`."""
        return {name: i for i, name in enumerate(self.images)}


@dataclass(frozen=True)
class SceneDataset:
    """A person-search dataset: training scenes, test (gallery) scenes, and how to get protocols."""

    name: str  #: "cuhk-sysu" or "prw"
    root: Path
    train: tuple[Scene, ...]
    test: tuple[Scene, ...]

    def identities(self, split: Literal["train", "test"] = "train") -> np.ndarray:
        """Sorted distinct identity labels of a split (UNLABELED excluded)."""
        scenes = self.train if split == "train" else self.test
        if not scenes:
            return np.zeros(0, dtype=np.int64)
        pids = np.concatenate([s.pids for s in scenes])
        return np.unique(pids[pids != UNLABELED])


@dataclass(frozen=True)
class Crop:
    """One person crop of a re-id dataset (Market-1501)."""

    path: Path
    pid: int  #: 0 = distractor (a gallery negative); junk (-1) is dropped at load
    camera: int


@dataclass(frozen=True)
class CropDataset:
    """A re-id dataset on crops: training crops, queries and gallery."""

    name: str
    root: Path
    train: tuple[Crop, ...]
    query: tuple[Crop, ...]
    gallery: tuple[Crop, ...]
