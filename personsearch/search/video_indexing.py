"""Indexing one gallery video: sampled frames in committed chunks, resumable, tracks stored.

`index_video` scans a video (`personsearch.search.video_scan`: decode, detect, embed, track)
and commits every CHUNK_FRAMES sampled frames to the store as one `VideoChunk`: the chunk's
boxes with their frame, time and track, and the video's progress (the last frame, the tracker's
state after it, the frame sampler's next time). A run killed inside a video therefore resumes
after its last committed frame, with the tracker as it was, so track ids continue and no frame
is recorded twice; it seeks there rather than decoding the video up to it (an index written
before the sampler's state was recorded decodes from the start and skips what it has).

A video that cannot be opened, or yields no frame at all, is recorded as a failed file (retried
on the next run, like a failed image). One whose decoding stops part-way (truncated, corrupt)
keeps the frames indexed before the fault and is recorded as stopped there, with the error
and how far it got; it is not retried until the file changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.data.video import DEFAULT_FPS, ResumePoint, VideoError, probe_video
from personsearch.errors import PersonSearchError
from personsearch.io import file_digest
from personsearch.search.detectors import Detector
from personsearch.search.embedders import Embedder
from personsearch.search.store.gallery import GalleryStore
from personsearch.search.store.records import ImageRecord, VideoChunk, VideoProgress
from personsearch.search.tracking import Tracker, TrackerSettings
from personsearch.search.video_scan import ScannedFrame, scan_video

log = logging.getLogger(__name__)

#: Sampled frames per committed chunk: a kill loses at most this many frames' work.
CHUNK_FRAMES = 16


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are indexed: `fps` per second (None: every frame), or only the
    keyframes (the fast mode)."""

    fps: float | None = DEFAULT_FPS
    keyframes: bool = False

    def __post_init__(self) -> None:
        if self.fps is not None and not (
            isinstance(self.fps, int | float) and math.isfinite(self.fps) and 0 < self.fps <= 1000
        ):
            raise PersonSearchError(f"fps must be a number in (0, 1000], got {self.fps!r}")

    @property
    def label(self) -> str:
        """How the index records it: "fps=2", "keyframes" or "every frame"."""
        if self.keyframes:
            return "keyframes"
        return "every frame" if self.fps is None else f"fps={self.fps:g}"

    @classmethod
    def from_label(cls, label: str) -> VideoSampling:
        if label == "keyframes":
            return cls(None, keyframes=True)
        if label == "every frame":
            return cls(None)
        if label.startswith("fps="):
            return cls(float(label[4:]))
        raise PersonSearchError(f"unknown video sampling {label!r} in the index")


@dataclass(frozen=True)
class VideoOutcome:
    """What indexing one video did this run."""

    boxes: int = 0  #: person boxes added
    frames: int = 0  #: sampled frames indexed
    resumed_after: int | None = None  #: the frame it resumed after (None: from the start)
    error: str | None = None  #: why it failed or stopped part-way (None: read to its end)
    failed: bool = False  #: True: nothing of it is indexed (recorded as a failed file)


def index_video(
    store: GalleryStore,
    detector: Detector,
    embedder: Embedder,
    path: Path,
    key: str,
    *,
    camera: int = -1,
    sampling: VideoSampling | None = None,
    deaths: int = 0,
    tracker_settings: TrackerSettings | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    on_frame: Callable[[ScannedFrame], None] | None = None,
) -> VideoOutcome:
    """Index the video at `path` (stored as `key`) into `store`, resuming where a previous run
    stopped; see the module docstring. `deaths` is passed to the journal with the first chunk
    (earlier process deaths on this video in a row); `on_frame` is called after each sampled
    frame (a progress bar)."""
    progress = store.video_progress(key).get(key)
    if progress is not None and progress.complete:
        return VideoOutcome()
    size, mtime, sha1 = _file_facts(path)
    try:
        info = probe_video(path)
    except (VideoError, OSError) as error:
        return _record_failure(store, key, size, mtime, str(error), embedder.dim, progress)
    if progress is not None:
        sampling = VideoSampling.from_label(progress.sampling)  # a video keeps its sampling
        tracker = Tracker.from_state(json.loads(progress.tracker_state))
        resume: ResumePoint | None = ResumePoint(
            progress.last_frame, progress.last_time_s, progress.next_sample_s
        )
    else:
        sampling = sampling or VideoSampling()
        tracker = Tracker(tracker_settings or TrackerSettings())
        resume = None
    width, height = (
        (info.height, info.width) if info.rotation % 180 == 90 else (info.width, info.height)
    )
    video = ImageRecord(key, sha1, size, mtime, width, height, camera=camera)  # upright
    writer = _ChunkWriter(store, video, sampling, info.fps, info.duration_s, progress)
    journal = store.journal
    journal.begin_image(key, deaths)
    try:
        frames = scan_video(
            path,
            detector,
            embedder,
            fps=sampling.fps,
            keyframes=sampling.keyframes,
            tracker=tracker,
            resume=resume,
        )
        try:
            for frame in frames:
                writer.add(frame, tracker)
                if on_frame is not None:
                    on_frame(frame)
                if writer.pending >= chunk_frames:
                    writer.commit(complete=False)
                    journal.begin_image(key, 0)  # progress made: earlier deaths are forgiven
        except VideoError as error:
            if not writer.frames_total:
                return _record_failure(store, key, size, mtime, str(error), embedder.dim, progress)
            stopped = f"{error} (indexed up to frame {writer.last_frame}"
            if writer.last_time_s is not None:
                stopped += f", {writer.last_time_s:.2f} s"
            writer.commit(complete=True, error=stopped + ")")
            return writer.outcome(resume, stopped + ")")
        if not writer.frames_total:
            message = f"{path}: the video has no frame to index (no decodable frame was found)"
            return _record_failure(store, key, size, mtime, message, embedder.dim, progress)
        writer.commit(complete=True)
        return writer.outcome(resume, None)
    finally:
        journal.end_image()


def record_stopped(store: GalleryStore, key: str, error: str, dim: int) -> None:
    """Mark a video indexed part-way as stopped for good with `error` (its process died on it
    too often); its frames indexed so far stay."""
    progress = store.video_progress(key)[key]
    video = ImageRecord(key, None, 0, 0.0)
    chunk = _empty_chunk(video, progress, complete=True, error=error)
    store.add_video_chunk(chunk, np.zeros((0, dim), dtype=np.float32))


class _ChunkWriter:
    """Gathers scanned frames and commits them as VideoChunks."""

    def __init__(
        self,
        store: GalleryStore,
        video: ImageRecord,
        sampling: VideoSampling,
        fps: float,
        duration_s: float | None,
        progress: VideoProgress | None,
    ) -> None:
        self.store, self.video, self.sampling = store, video, sampling
        self.fps, self.duration_s = fps, duration_s
        self.frames: list[ScannedFrame] = []
        self.tracker_state = progress.tracker_state if progress else "{}"
        self.last_frame = progress.last_frame if progress else -1
        self.last_time_s = progress.last_time_s if progress else None
        self.next_sample_s = progress.next_sample_s if progress else None
        self.frames_total = progress.frames_sampled if progress else 0
        self.frames_new = 0
        self.boxes_new = 0

    @property
    def pending(self) -> int:
        return len(self.frames)

    def add(self, frame: ScannedFrame, tracker: Tracker) -> None:
        if (frame.width, frame.height) != (self.video.width, self.video.height):
            # as decoded and turned upright (the header's size can be the stored one)
            v = self.video
            self.video = ImageRecord(
                v.path, v.sha1, v.size, v.mtime, frame.width, frame.height, camera=v.camera
            )
        self.frames.append(frame)
        self.tracker_state = json.dumps(tracker.state_dict())
        self.last_frame, self.last_time_s = frame.index, frame.time_s
        self.next_sample_s = frame.next_sample_s
        self.frames_total += 1

    def commit(self, *, complete: bool, error: str | None = None) -> None:
        frames = self.frames
        dim = self.store.dim
        boxes = [f.boxes for f in frames]
        video = ImageRecord(
            self.video.path,
            self.video.sha1,
            self.video.size,
            self.video.mtime,
            self.video.width,
            self.video.height,
            self.video.camera,
            boxes=np.concatenate(boxes) if frames else np.zeros((0, 4), np.float32),
            scores=np.concatenate([f.scores for f in frames]) if frames else np.zeros(0),
        )
        counts = [len(f.boxes) for f in frames]
        chunk = VideoChunk(
            video,
            frames=np.repeat([f.index for f in frames], counts).astype(np.int64),
            times=np.repeat([f.time_s for f in frames], counts).astype(np.float64),
            tracks=np.concatenate([f.tracks for f in frames]) if frames else np.zeros(0),
            sampling=self.sampling.label,
            fps=self.fps,
            duration_s=self.duration_s,
            frames_sampled=len(frames),
            last_frame=self.last_frame,
            last_time_s=self.last_time_s,
            tracker_state=self.tracker_state,
            complete=complete,
            error=error,
            next_sample_s=self.next_sample_s,
        )
        features = np.concatenate([f.features for f in frames]) if frames else np.zeros((0, dim))
        self.store.add_video_chunk(chunk, features.reshape(-1, dim))
        self.frames_new += len(frames)
        self.boxes_new += len(video.boxes)
        self.frames = []

    def outcome(self, resume: ResumePoint | None, error: str | None) -> VideoOutcome:
        resumed_after = None if resume is None else resume.frame
        return VideoOutcome(self.boxes_new, self.frames_new, resumed_after, error)


def _empty_chunk(
    video: ImageRecord, progress: VideoProgress, *, complete: bool, error: str | None
) -> VideoChunk:
    empty = np.zeros(0)
    return VideoChunk(
        video,
        frames=empty,
        times=empty,
        tracks=empty,
        sampling=progress.sampling,
        fps=0.0,
        duration_s=progress.duration_s,
        frames_sampled=0,
        last_frame=progress.last_frame,
        last_time_s=progress.last_time_s,
        tracker_state=progress.tracker_state,
        complete=complete,
        error=error,
        next_sample_s=progress.next_sample_s,
    )


def _file_facts(path: Path) -> tuple[int, float, str | None]:
    """(size, mtime, sha1) of the file; zeros and None where it cannot be read."""
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime, file_digest(path, None, algorithm="sha1")
    except OSError:
        return 0, 0.0, None


def _record_failure(
    store: GalleryStore,
    key: str,
    size: int,
    mtime: float,
    error: str,
    dim: int,
    progress: VideoProgress | None,
) -> VideoOutcome:
    """Record the video as a failed file (nothing of it indexed; retried on the next run), or,
    when an earlier run indexed part of it, as stopped there for good."""
    log.warning("skipped %s: %s", key, error)
    if progress is not None:
        record_stopped(store, key, error, dim)
        return VideoOutcome(error=error)
    store.add_batch(
        [ImageRecord(key, None, size, mtime, error=error)], np.zeros((0, dim), np.float32)
    )
    return VideoOutcome(error=error, failed=True)
