"""One video through a pipeline: sampled frames -> detections -> features -> tracks.

    tracker = Tracker()
    for frame in scan_video("cam1.mp4", detector, embedder, fps=2.0, tracker=tracker):
        frame.index, frame.time_s, frame.boxes, frame.scores, frame.features, frame.tracks

This is the unit of work the gallery index applies to each video, and what the footage
benchmarks time. Frames come one at a time, so memory stays that of a frame and its detections
whatever the video's length. The tracker is the caller's: its `state_dict()` after a frame, saved
with that frame's detections, lets a killed run go on with `start_after=frame.index` and
`Tracker.from_state(...)`, giving the same track ids as an uninterrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from personsearch.boxes import crop_bounds
from personsearch.data.video import DEFAULT_FPS, read_video_frames
from personsearch.search.detectors import Detector, detect_checked
from personsearch.search.embedders import Embedder, embed_checked
from personsearch.search.tracking import Tracker


@dataclass(frozen=True)
class ScannedFrame:
    index: int  #: frame number in the video
    time_s: float  #: seconds from the video's start
    boxes: np.ndarray  #: (K, 4) float32 x1 y1 x2 y2 in the upright frame's pixels, clipped
    scores: np.ndarray  #: (K,) float32
    features: np.ndarray  #: (K, D) float32, L2-normalised (checked: finite, one per box)
    tracks: np.ndarray  #: (K,) int64 track id within the video (-1: none)
    width: int
    height: int


def _crops(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    height, width = image.shape[:2]
    out = []
    for box in boxes:
        x1, y1, x2, y2 = crop_bounds(box, width, height)
        out.append(image[y1:y2, x1:x2])
    return out


def _frame_name(path: object, index: int) -> str:
    return f"{path} frame {index}"


def scan_video(
    path: str | os.PathLike[str],
    detector: Detector,
    embedder: Embedder,
    *,
    fps: float | None = DEFAULT_FPS,
    keyframes: bool = False,
    tracker: Tracker | None = None,
    start_after: int | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[ScannedFrame]:
    """Detect, embed and track the sampled frames of one video (see the module docstring).

    `timings`, when given, accumulates the seconds spent decoding, detecting, embedding and
    tracking (keys decode, detect, embed, track). A video that cannot be decoded to its end
    raises `VideoError` after the frames before the fault were yielded.
    """
    tracker = tracker if tracker is not None else Tracker()
    clock = timings if timings is not None else {}
    for key in ("decode", "detect", "embed", "track"):
        clock.setdefault(key, 0.0)
    frames = iter(read_video_frames(path, fps=fps, keyframes=keyframes, start_after=start_after))
    while True:
        start = time.perf_counter()
        frame = next(frames, None)
        clock["decode"] += time.perf_counter() - start
        if frame is None:
            return
        start = time.perf_counter()
        boxes, scores = detect_checked(detector, frame.image, _frame_name(path, frame.index))
        clock["detect"] += time.perf_counter() - start
        start = time.perf_counter()
        features = embed_checked(embedder, _crops(frame.image, boxes))
        clock["embed"] += time.perf_counter() - start
        start = time.perf_counter()
        tracks = tracker.update(frame.time_s, boxes, scores, features)
        clock["track"] += time.perf_counter() - start
        height, width = frame.image.shape[:2]
        yield ScannedFrame(
            frame.index, frame.time_s, boxes, scores, features, tracks, width, height
        )
