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


@dataclass(frozen=True)
class VideoChunk:
    """Consecutive sampled frames of one video, committed together with the video's progress.

    `video` names the file (its path, sha1, size, mtime, upright width and height, camera; its
    boxes and scores are the chunk's detections). `frames`, `times` and `tracks` give each box
    its frame number, time in seconds and track id. After the chunk, indexing has reached
    `last_frame` (at `last_time_s`), the tracker is in `tracker_state` (JSON), the frame sampler
    takes its next frame at `next_sample_s` seconds, and `complete`
    says whether the video is done (read to its end, or stopped for good with `error`).
    """

    video: ImageRecord
    frames: np.ndarray
    times: np.ndarray
    tracks: np.ndarray
    sampling: str
    fps: float
    duration_s: float | None
    frames_sampled: int  #: sampled frames in this chunk (detections or not)
    last_frame: int
    last_time_s: float | None
    tracker_state: str
    complete: bool = False
    error: str | None = None
    next_sample_s: float | None = None  #: when the frame sampler takes its next frame

    def __post_init__(self) -> None:
        n = len(self.video.boxes)
        frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        tracks = np.asarray(self.tracks, dtype=np.int64).reshape(-1)
        if not len(frames) == len(times) == len(tracks) == n:
            raise ValueError(
                f"{self.video.path}: {n} boxes but {len(frames)} frames, {len(times)} times, "
                f"{len(tracks)} tracks"
            )
        if self.video.error is not None:
            raise ValueError(f"{self.video.path}: a video chunk's error goes in `error`")
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "tracks", tracks)


@dataclass(frozen=True)
class VideoProgress:
    """How far indexing got in a video (its row in `videos`)."""

    sampling: str
    frames_sampled: int
    last_frame: int
    last_time_s: float | None
    tracker_state: str
    complete: bool
    error: str | None
    duration_s: float | None
    next_sample_s: float | None = None  #: the sampler's next time (None: not recorded)
