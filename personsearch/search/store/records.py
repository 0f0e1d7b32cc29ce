"""What a gallery store takes and gives back, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from personsearch.errors import PersonSearchError


class GalleryIndexError(PersonSearchError):
    """A gallery index is missing, damaged, busy, or belongs to another model."""


@dataclass(frozen=True)
class ImageRecord:
    """One gallery image as the indexer saw it: its boxes, or why it could not be read."""

    path: str
    sha1: str | None
    size: int
    mtime: float
    width: int = 0
    height: int = 0
    camera: int = -1
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    error: str | None = None  #: set when the image failed; it then has no boxes

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{self.path}: {len(boxes)} boxes but {len(scores)} scores")
        if self.error is not None and len(boxes):
            raise ValueError(f"{self.path}: a failed image cannot have boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "failed"


@dataclass(frozen=True)
class IndexedImage:
    """What the index remembers about an image file (to decide what is new)."""

    path: str
    size: int
    mtime: float
    status: str
    error: str | None
