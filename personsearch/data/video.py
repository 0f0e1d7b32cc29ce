"""Decoding video files into sampled frames, with their frame numbers and timestamps.

    for frame in read_video_frames("cam1.mp4", fps=2.0):
        frame.index, frame.time_s, frame.image        # decoded frame number, seconds, H x W x 3 RGB

PyAV decodes (it ships FFmpeg inside its wheels, so nothing else is installed and every common
container and codec reads: mp4, mkv, mov, avi, webm, ...). Frames are decoded one at a time and
handed on: memory stays that of a frame or two whatever the video's length.

Sampling (`fps`): a frame is kept when its timestamp reaches the next sampling time, so a
variable-frame-rate video is sampled by time, not by frame count; `fps=None` keeps every frame;
`keyframes=True` decodes the keyframes only (the fast mode: FFmpeg skips every other frame's
decoding, typically one frame in 1-10 seconds is a keyframe). Timestamps are the frames'
presentation times, except in AVI, whose frames carry no presentation times of their own (AVI
is constant-frame-rate by design, and B-frame streams in AVI return decode-order times): there
the time is frame number / frame rate. `frame.index` is the frame's number in decoding order
from the first frame (in keyframes mode, and when B-frames are skipped, estimated from its time
and the frame rate, since the frames between are never decoded).

Sampling at a rate well below the video's (`fps` <= a quarter of the frame rate) skips decoding
B-frames (`skip_b_frames`, on by default there): no other frame refers to them, so the I- and
P-frames decode alike, and a sampled frame is then the first I- or P-frame at or after each
sampling time (a frame or two later, with its own exact timestamp). Decoding, the floor of
footage speed, takes about half the time for typical H.264 (measured in
`benchmarks/bench_video.py`). Only at a quarter of the rate or less: at half (5 of 10 fps) the
next I/P frames came unevenly spaced, 230 frames instead of 300 in 60 s of the synthetic world,
and tracking got worse (`experiments/video_tracking.py`). AVI, timed by frame count, always
decodes every frame.

Rotation metadata (phones record portrait video as landscape plus a rotation) is applied, so
the image is upright. A frame larger than `images.MAX_PIXELS` is refused before conversion.

A truncated or corrupt video raises `VideoError` after the frames decoded so far were handed on;
its `frames_read` and `last_time_s` say how far it got (the caller records the video as failed
there, and the rest of a gallery goes on). `resume` goes on after a frame already handled (a
killed indexing run) and yields exactly the frames an uninterrupted read would have yielded
after it: with the frame's time and the sampler's state (`VideoFrame.resume_point()`) it seeks
to the keyframe before that frame and decodes from there, so resuming an hour into a video
costs a keyframe interval of decoding, not an hour; with the frame number alone (or in AVI,
timed by frame count) the frames before it are decoded but not converted or returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.data.images import MAX_PIXELS
from personsearch.errors import PersonSearchError

#: File suffixes read as videos (case-insensitive); anything PyAV opens works through the API.
VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mkv",
    ".mov",
    ".avi",
    ".webm",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".m2ts",
    ".wmv",
    ".flv",
    ".3gp",
    ".ogv",
)
DEFAULT_FPS = 2.0  #: frames per second sampled by default: people stay in view for seconds


class VideoError(PersonSearchError):
    """A video that cannot be opened or decoded to its end; says how far decoding got."""

    def __init__(self, message: str, frames_read: int = 0, last_time_s: float | None = None):
        super().__init__(message)
        self.frames_read = frames_read
        self.last_time_s = last_time_s


def format_time(seconds: float) -> str:
    """Seconds as m:ss.s (h:mm:ss.s from an hour on): how results name a moment of a video."""
    minutes, secs = divmod(float(seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says (frame counts and durations can be wrong in real files)."""

    path: str
    width: int
    height: int
    fps: float  #: the stream's frame rate (the guessed one when the header's is unset)
    duration_s: float | None
    frames_in_header: int | None
    rotation: int  #: degrees counter-clockwise applied to make frames upright
    codec: str
    timing: str  #: "pts" (presentation times) or "frame-rate" (frame number / fps: AVI)


@dataclass(frozen=True)
class VideoFrame:
    index: int  #: frame number in decoding order from the first frame (skipping: estimated)
    time_s: float  #: seconds from the start of the video
    image: np.ndarray  #: H x W x 3 uint8 RGB, upright
    next_sample_s: float = 0.0  #: when the sampler takes its next frame (resuming needs it)

    def resume_point(self) -> ResumePoint:
        """Where to resume after this frame (`read_video_frames(resume=...)`)."""
        return ResumePoint(self.index, self.time_s, self.next_sample_s)


@dataclass(frozen=True)
class ResumePoint:
    """A frame already handled, to resume after: its number and, to seek instead of decoding
    from the start, its time and the sampler's next time after it (None: not known)."""

    frame: int
    time_s: float | None = None
    next_sample_s: float | None = None

    @property
    def seekable(self) -> bool:
        return self.time_s is not None and self.next_sample_s is not None


def _import_av():  # type: ignore[no-untyped-def]
    try:
        import av
    except ImportError:
        raise PersonSearchError(
            "reading videos needs PyAV: pip install av (it ships FFmpeg inside its wheels)"
        ) from None
    return av


def _open(path: Path):  # type: ignore[no-untyped-def]
    av = _import_av()
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise VideoError(f"{path}: not a readable video ({error})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file holds no video stream")
    return container


def _open_within(path: Path, max_pixels: int):  # type: ignore[no-untyped-def]
    """(header, open container) of a video whose frames are within `max_pixels`; a bigger
    one is refused from its header, before any frame is decoded."""
    info = probe_video(path)
    if info.width * info.height > max_pixels:
        raise VideoError(
            f"{path}: frames of {info.width} x {info.height} pixels are more than "
            f"the limit of {max_pixels:,} (a decompression bomb?)"
        )
    return info, _open(path)


def _rate(stream, constant: bool = False) -> float:  # type: ignore[no-untyped-def]
    """Frames per second. `constant` (AVI): FFmpeg's guess from the frames' own spacing comes
    first, since AVI headers of B-frame streams often give twice the real rate."""
    rates = (stream.average_rate, stream.guessed_rate, stream.base_rate)
    if constant:
        rates = (stream.guessed_rate, stream.average_rate, stream.base_rate)
    for rate in rates:
        if rate:
            return float(rate)
    return 25.0  # no rate anywhere in the header: FFmpeg's own fallback


def _header_rotation(stream) -> int:  # type: ignore[no-untyped-def]
    try:
        return int(float(stream.metadata.get("rotate", 0))) % 360
    except (TypeError, ValueError):
        return 0


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """The header of a video file (no frame is decoded)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        constant = path.suffix.lower() == ".avi"
        fps = _rate(stream, constant)
        if constant and stream.frames:
            # AVI: the header's frame count at the header's rate (FFmpeg's own duration of an
            # AVI is estimated from the file size, so a cut file would look complete)
            duration = int(stream.frames) / float(stream.average_rate or fps)
        return VideoInfo(
            path=str(path),
            width=width,
            height=height,
            fps=fps,
            duration_s=duration,
            frames_in_header=int(stream.frames) or None,
            rotation=_header_rotation(stream),
            codec=stream.codec_context.name,
            timing="frame-rate" if path.suffix.lower() == ".avi" else "pts",
        )
    finally:
        container.close()


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate by the display rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    turns = (round(rotation / 90) % 4) if rotation else 0
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class _Sampler:
    """Keeps a frame when its time reaches the next sampling time (every frame without fps)."""

    def __init__(self, fps: float | None) -> None:
        self.period = None if fps is None else 1.0 / fps
        self.next_time = 0.0

    def keep(self, time_s: float) -> bool:
        if self.period is None:
            return True
        if time_s + 1e-6 < self.next_time:
            return False
        # the next sampling time follows this frame's, so that a gap in the video does not make
        # a burst of frames after it
        self.next_time = max(self.next_time + self.period, time_s + self.period * 0.5)
        return True


def _decoded_frames(
    container,
    stream,
    path: Path,
    info: VideoInfo,  # type: ignore[no-untyped-def]
    estimate_index: bool,
    check_end: bool = True,
) -> Iterator[tuple[int, float, object]]:
    """(index, time, frame) for every decoded frame; a decoding error becomes a VideoError that
    says how far decoding got, and so does a video that ends long before its header says."""
    av = _import_av()
    start = _start_s(stream)
    decoded, last_time = 0, None
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except (av.error.FFmpegError, ValueError) as error:
            where = f" ({last_time:.2f} s)" if last_time is not None else ""
            raise VideoError(
                f"{path}: decoding failed after {decoded} frames{where}: {error}",
                decoded,
                last_time,
            ) from None
        if info.timing == "pts" and frame.time is not None:
            time_s = float(frame.time) - start
        else:
            time_s = decoded / info.fps
        index = round(time_s * info.fps) if estimate_index else decoded
        decoded, last_time = decoded + 1, time_s
        yield index, time_s, frame
    # FFmpeg ends a cut-off file quietly: a video that stops well before its header's duration
    # was truncated (frame counts in headers are often wrong, durations rarely by this much)
    if (
        check_end
        and info.duration_s
        and last_time is not None
        and (last_time < 0.9 * info.duration_s - 1.0)
    ):
        raise VideoError(
            f"{path}: the video ends at {last_time:.2f} s of the {info.duration_s:.2f} "
            f"s its header gives, after {decoded} frames: truncated?",
            decoded,
            last_time,
        )


def read_video_frames(
    path: str | os.PathLike[str],
    fps: float | None = DEFAULT_FPS,
    keyframes: bool = False,
    resume: ResumePoint | None = None,
    skip_b_frames: bool | None = None,
    threads: int = 0,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[VideoFrame]:
    """Sampled frames of a video, in order; see the module docstring."""
    if fps is not None and not (isinstance(fps, int | float) and 0 < fps <= 1000):
        raise PersonSearchError(f"fps must be a number in (0, 1000] or None, got {fps!r}")
    path = Path(path)
    info, container = _open_within(path, max_pixels)
    try:
        if skip_b_frames is None:  # only where sampling leaves most frames unused anyway
            skip_b_frames = fps is not None and fps <= info.fps / 4
        stream = container.streams.video[0]
        # a stream without B-frames has nothing to skip (and keeps exact frame numbers)
        skip_b_frames = (
            skip_b_frames and info.timing == "pts" and bool(stream.codec_context.has_b_frames)
        )
        stream = _configured(stream, threads, keyframes, skip_b_frames)
        sampler = _Sampler(fps)
        check_end = not keyframes
        estimate_index = keyframes or bool(skip_b_frames)
        decoded = _decoded_frames(container, stream, path, info, estimate_index, check_end)
        start_after = None if resume is None else resume.frame
        if resume is not None and resume.seekable and info.timing == "pts" and stream.time_base:
            offset = _seek_past(container, stream, decoded, resume, info)
            if offset is None:  # the seek missed the frame: decode from the start instead
                container.close()
                info, container = _open_within(path, max_pixels)
                stream = _configured(container.streams.video[0], threads, keyframes, skip_b_frames)
                decoded = _decoded_frames(container, stream, path, info, estimate_index, check_end)
            else:
                decoded = ((index + offset, t, frame) for index, t, frame in decoded)
                sampler.next_time = float(resume.next_sample_s)  # type: ignore[arg-type]
                start_after = None
        for index, time_s, frame in decoded:
            if not sampler.keep(time_s) or (start_after is not None and index <= start_after):
                continue
            if frame.width * frame.height > max_pixels:
                raise VideoError(
                    f"{path}: frame {index} is {frame.width} x {frame.height} "
                    f"pixels, more than the limit of {max_pixels:,}",
                    index,
                    time_s,
                )
            image = frame.to_ndarray(format="rgb24")
            rotation = int(getattr(frame, "rotation", 0) or 0) or info.rotation
            yield VideoFrame(index, time_s, _upright(image, rotation), sampler.next_time)
    finally:
        container.close()


def _configured(stream, threads: int, keyframes: bool, skip_b_frames: bool):  # type: ignore[no-untyped-def]
    """The stream set to decode with threads, skipping what sampling leaves unused."""
    stream.thread_type = "AUTO"  # frame and slice threads: decoding is footage's speed floor
    if threads:
        stream.codec_context.thread_count = threads
    if keyframes:
        stream.codec_context.skip_frame = "NONKEY"
    elif skip_b_frames:
        stream.codec_context.skip_frame = "BIDIR"
    return stream


def _start_s(stream) -> float:  # type: ignore[no-untyped-def]
    """The stream's first timestamp in seconds: frame times count from it."""
    return float(stream.start_time * stream.time_base) if stream.start_time else 0.0


def _seek_before(container, stream, time_s: float) -> None:  # type: ignore[no-untyped-def]
    """Seek to the keyframe at or before `time_s` seconds from the video's start."""
    target = int((time_s + _start_s(stream)) / stream.time_base)
    container.seek(target, stream=stream, backward=True, any_frame=False)


def _time_tolerance(info: VideoInfo) -> float:
    """A quarter frame: how far a stored (rounded) time may lie from its frame's own."""
    return 0.25 / max(info.fps, 1.0)


def _seek_past(
    container,  # type: ignore[no-untyped-def]
    stream,
    decoded: Iterator[tuple[int, float, object]],
    resume: ResumePoint,
    info: VideoInfo,
) -> int | None:
    """Seek to the keyframe before `resume`'s frame and decode up to that frame; then `decoded`
    goes on after it. Returns what to add to its frame numbers (counted in decoding order, they
    restart at the seek), or None where no frame was found at the resume frame's time.
    """
    resume_s = float(resume.time_s)  # type: ignore[arg-type] - seekable: it is set
    _seek_before(container, stream, resume_s)
    tolerance = _time_tolerance(info)
    for index, time_s, _ in decoded:
        if time_s >= resume_s - tolerance:
            return resume.frame - index if time_s <= resume_s + tolerance else None
    return None


def read_frame_at(
    path: str | os.PathLike[str], time_s: float, max_pixels: int = MAX_PIXELS
) -> VideoFrame:
    """The frame shown at `time_s` seconds (the first frame at or after it), upright RGB.

    What a search hit's `time_s` names: the same frame the indexer read. Seeks to the keyframe
    before the time and decodes from there, so it costs a keyframe interval of decoding, not
    the video up to that time; AVI, timed by frame count, is decoded from its start.
    """
    if not (isinstance(time_s, int | float) and np.isfinite(time_s) and time_s >= 0):
        raise PersonSearchError(
            f"a frame time must be a finite number of seconds >= 0, got {time_s!r}"
        )
    path = Path(path)
    info, container = _open_within(path, max_pixels)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = _start_s(stream)
        seekable = info.timing == "pts" and stream.time_base
        if seekable and time_s > 0:
            _seek_before(container, stream, time_s)
        tolerance = _time_tolerance(info)
        found = None
        for index, frame_time, frame in _decoded_frames(
            container, stream, path, info, estimate_index=bool(seekable), check_end=False
        ):
            if seekable and frame.time is not None:
                frame_time = float(frame.time) - start
                index = round(frame_time * info.fps)
            found = (index, frame_time, frame)
            if frame_time >= time_s - tolerance:
                break
        if found is None:
            raise VideoError(f"{path}: no frame could be decoded at {time_s:.2f} s")
        index, frame_time, frame = found
        image = frame.to_ndarray(format="rgb24")
        rotation = int(getattr(frame, "rotation", 0) or 0) or info.rotation
        return VideoFrame(index, frame_time, _upright(image, rotation))
    finally:
        container.close()
