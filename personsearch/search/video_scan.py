"""One video through a pipeline: sampled frames -> detections -> features -> tracks.

    tracker = Tracker()
    for frame in scan_video("cam1.mp4", detector, embedder, fps=2.0, tracker=tracker):
        frame.index, frame.time_s, frame.boxes, frame.scores, frame.features, frame.tracks

This is the unit of work the gallery index applies to each video, and what the footage
benchmarks time. Decoding runs one frame ahead in a thread of its own (`prefetch`, on by default):
FFmpeg and the detector both release the GIL, so on two cores the next frame is decoded while
this one is detected, and the scan takes about the longer of the two instead of their sum. Frames come one at a time, so memory stays that of a frame and its detections
whatever the video's length. The tracker is the caller's: its `state_dict()` after a frame, saved
with that frame's detections and `frame.resume_point()`, lets a killed run go on with
`resume=` that point and `Tracker.from_state(...)`: it seeks to the frame instead of decoding the
video up to it, and gives the same frames and track ids as an uninterrupted run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from queue import Full, Queue
from typing import TypeVar

import numpy as np

from personsearch.boxes import crop_bounds
from personsearch.data.video import DEFAULT_FPS, ResumePoint, VideoFrame, read_video_frames
from personsearch.search.detectors import Detector, detect_checked
from personsearch.search.embedders import Embedder, embed_checked
from personsearch.search.tracking import Tracker

T = TypeVar("T")


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
    next_sample_s: float = 0.0  #: the sampler's next time after this frame

    def resume_point(self) -> ResumePoint:
        """Where a scan killed after this frame resumes (`scan_video(resume=...)`)."""
        return ResumePoint(self.index, self.time_s, self.next_sample_s)


def _crops(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    height, width = image.shape[:2]
    out = []
    for box in boxes:
        x1, y1, x2, y2 = crop_bounds(box, width, height)
        out.append(image[y1:y2, x1:x2])
    return out


#: Decoded frames waiting for the detector (memory: this many frames, and the one in hand).
PREFETCH_FRAMES = 2


def decoded_ahead(frames: Iterable[T], depth: int = PREFETCH_FRAMES) -> Iterator[T]:
    """`frames`, produced by a thread of their own up to `depth` ahead of the consumer.

    An exception of the producer (a VideoError part-way) is raised to the consumer after the
    frames before it. When the consumer stops early (closes the generator, or an exception), the
    thread is told to stop and the source is closed in it (a video's container is closed there).
    """
    queue: Queue[tuple[str, object]] = Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        source = iter(frames)
        try:
            for frame in source:
                if not put(("frame", frame)):
                    return
            put(("end", None))
        except BaseException as error:  # handed to the consumer
            put(("error", error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="video-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


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
    resume: ResumePoint | None = None,
    timings: dict[str, float] | None = None,
    prefetch: bool = True,
) -> Iterator[ScannedFrame]:
    """Detect, embed and track the sampled frames of one video (see the module docstring).

    `timings`, when given, accumulates the seconds spent decoding (waiting for the next decoded
    frame, with `prefetch`), detecting, embedding and tracking (keys decode, detect, embed,
    track). A video that cannot be decoded to its end raises `VideoError` after the frames
    before the fault were yielded.
    """
    tracker = tracker if tracker is not None else Tracker()
    clock = timings if timings is not None else {}
    for key in ("decode", "detect", "embed", "track"):
        clock.setdefault(key, 0.0)
    frames = read_video_frames(path, fps=fps, keyframes=keyframes, resume=resume)
    if prefetch:
        frames = decoded_ahead(frames)
    frames = iter(frames)
    try:
        yield from _scan(frames, path, detector, embedder, tracker, clock)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _scan(
    frames: Iterator[VideoFrame],
    path: object,
    detector: Detector,
    embedder: Embedder,
    tracker: Tracker,
    clock: dict[str, float],
) -> Iterator[ScannedFrame]:
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
            frame.index,
            frame.time_s,
            boxes,
            scores,
            features,
            tracks,
            width,
            height,
            frame.next_sample_s,
        )
