"""Video decoding: sampling by time, keyframes, resume, rotation, truncated and corrupt files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from personsearch.data import video as video_module  # noqa: E402
from personsearch.data.video import (  # noqa: E402
    ResumePoint,
    VideoError,
    is_video,
    probe_video,
    read_video_frames,
)


def write_video(
    path: Path,
    frames: int = 50,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    times: list[float] | None = None,
    rotate: int | None = None,
    bframes: int = 0,
) -> Path:
    """A small H.264 mp4 whose frame k shows the value k in its top-left pixel block."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"g": "10", "bf": str(bframes)}  # a keyframe every 10 frames
        if rotate is not None:
            stream.metadata["rotate"] = str(rotate)
        for k in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:16, :16] = min(255, 4 * k)
            image[-8:, :8] = 255  # a corner mark: where the bottom-left went after rotation
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(1000 * (times[k] if times else k / fps))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_every_frame_then_sampled_by_time(tmp_path: Path) -> None:
    video = write_video(tmp_path / "a.mp4", frames=50, fps=25)
    info = probe_video(video)
    assert (info.width, info.height, info.timing) == (64, 48, "pts") and is_video(video)
    every = list(read_video_frames(video, fps=None))
    assert [f.index for f in every] == list(range(50))
    np.testing.assert_allclose([f.time_s for f in every], np.arange(50) / 25, atol=1e-3)
    assert every[7].image.shape == (48, 64, 3) and abs(int(every[7].image[4, 4, 0]) - 28) <= 3
    sampled = list(read_video_frames(video, fps=2.0))
    assert [f.index for f in sampled] == [0, 13, 25, 38]  # 0, 0.52, 1.0, 1.52 s
    keyframes = list(read_video_frames(video, fps=None, keyframes=True))
    assert [f.index for f in keyframes] == [0, 10, 20, 30, 40]


def test_variable_frame_rate_is_sampled_by_its_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.2, 3.0, 3.1, 3.2, 3.3, 6.0]  # a camera that records on motion
    video = write_video(tmp_path / "vfr.mp4", frames=len(times), times=times)
    sampled = list(read_video_frames(video, fps=1.0))
    np.testing.assert_allclose([f.time_s for f in sampled], [0.0, 3.0, 6.0], atol=1e-3)
    assert [f.index for f in sampled] == [0, 3, 7]


def test_resume_after_a_frame_number_gives_the_rest_once(tmp_path: Path) -> None:
    video = write_video(tmp_path / "a.mp4", frames=50)
    first = list(read_video_frames(video, fps=5.0))
    rest = list(read_video_frames(video, fps=5.0, resume=ResumePoint(first[3].index)))
    assert [f.index for f in first[4:]] == [f.index for f in rest]


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the frames the decoder hands on (the cost resuming saves)."""
    count = [0]
    decoded_frames = video_module._decoded_frames

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        for item in decoded_frames(*args, **kwargs):
            count[0] += 1
            yield item

    monkeypatch.setattr(video_module, "_decoded_frames", counted)
    return count


def _same_frames(a: list, b: list) -> None:  # type: ignore[type-arg]
    assert [f.index for f in a] == [f.index for f in b]
    np.testing.assert_allclose([f.time_s for f in a], [f.time_s for f in b], atol=1e-6)
    assert [f.next_sample_s for f in a] == pytest.approx([f.next_sample_s for f in b])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)


@pytest.mark.parametrize(
    "fps, keyframes, bframes",
    [(5.0, False, 0), (None, False, 0), (3.0, False, 2), (2.0, False, 2), (None, True, 0)],
    ids=["sampled", "every-frame", "b-frames", "b-frames-skipped", "keyframes"],
)
def test_resume_from_a_frames_point_seeks_and_gives_what_an_unbroken_read_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fps, keyframes, bframes
) -> None:
    video = write_video(tmp_path / "a.mp4", frames=150, bframes=bframes)
    whole = list(read_video_frames(video, fps=fps, keyframes=keyframes))
    k = len(whole) * 3 // 4
    decodes = _counting_decodes(monkeypatch)
    rest = list(
        read_video_frames(video, fps=fps, keyframes=keyframes, resume=whole[k].resume_point())
    )
    _same_frames(rest, whole[k + 1 :])
    # the frames after a seek to the keyframe before the resume frame (keyframes every 10), not
    # the 150 frames from the start
    assert decodes[0] <= 150 - whole[k].index + 10, decodes[0]


def test_resume_on_a_variable_frame_rate_seeks_by_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    times = [0.1 * k for k in range(40)] + [6.0 + 0.1 * k for k in range(40)]  # a gap at 4-6 s
    video = write_video(tmp_path / "vfr.mp4", frames=len(times), times=times)
    whole = list(read_video_frames(video, fps=2.0))
    k = [f.time_s for f in whole].index(next(t for t in (f.time_s for f in whole) if t > 6.5))
    decodes = _counting_decodes(monkeypatch)
    rest = list(read_video_frames(video, fps=2.0, resume=whole[k].resume_point()))
    _same_frames(rest, whole[k + 1 :])
    assert decodes[0] <= 40  # from the keyframe at 6.0 s, not the 80 frames from the start


def test_resume_whose_time_no_frame_has_decodes_from_the_start_instead(tmp_path: Path) -> None:
    video = write_video(tmp_path / "a.mp4", frames=60)
    whole = list(read_video_frames(video, fps=5.0))
    point = whole[5].resume_point()
    off = ResumePoint(point.frame, point.time_s + 0.5 / 25, point.next_sample_s)  # between frames
    _same_frames(list(read_video_frames(video, fps=5.0, resume=off)), whole[6:])


def test_rotation_metadata_makes_frames_upright(tmp_path: Path) -> None:
    video = write_video(tmp_path / "r.mp4", frames=3, rotate=90)
    info = probe_video(video)
    (frame, *_) = read_video_frames(video, fps=None)
    if not (info.rotation or getattr(frame, "rotation", 0)):
        # the muxer dropped the tag: nothing to honour, the frame stays as it was
        assert frame.image.shape == (48, 64, 3)
        return
    assert frame.image.shape == (64, 48, 3)


def test_truncated_corrupt_and_missing_videos_are_named(tmp_path: Path) -> None:
    video = write_video(tmp_path / "a.mp4", frames=100, size=(320, 240))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError, match="not a readable video"):
        list(read_video_frames(garbage))
    with pytest.raises(VideoError, match="no such video file"):
        list(read_video_frames(tmp_path / "missing.mp4"))
    # an mp4 cut in half loses its index (moov at the end): unreadable, and said so
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(VideoError):
        list(read_video_frames(cut))
    with pytest.raises(VideoError, match="more than the limit"):
        list(read_video_frames(video, max_pixels=1000))
    with pytest.raises(Exception, match="fps must be"):
        list(read_video_frames(video, fps=0))


def test_the_real_crowd_video(real_data, tmp_path: Path) -> None:
    """The real 1280 x 720 H.264 AVI: its header says 682 frames at 50 fps, FFmpeg decodes 341."""
    video = real_data("video/crowd-1280x720.avi")
    info = probe_video(video)
    assert (info.width, info.height, info.timing) == (1280, 720, "frame-rate")
    every = list(read_video_frames(video, fps=None))
    assert len(every) == 341 and every[-1].index == 340
    times = np.array([f.time_s for f in every])
    assert (np.diff(times) > 0).all()  # AVI's decode-order times are not used
    sampled = list(read_video_frames(video, fps=2.0))
    assert len(sampled) == 28 and all(f.image.shape == (720, 1280, 3) for f in sampled)
    assert len(list(read_video_frames(video, fps=None, keyframes=True))) == 3
    # a truncated copy: the frames before the cut come out, then the error says how far it got
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    seen = []
    with pytest.raises(VideoError) as error:
        seen.extend(read_video_frames(cut, fps=None))
    assert 0 < error.value.frames_read < 341 and len(seen) == error.value.frames_read


def test_sampling_skips_b_frames_and_keeps_exact_times(tmp_path: Path) -> None:
    video = tmp_path / "b.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "50", "bf": "3"}  # B-frames, as x264 writes by default
        for k in range(100):
            image = np.full((48, 64, 3), min(255, 2 * k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    every = list(read_video_frames(video, fps=None))
    skipped = list(read_video_frames(video, fps=2.0))
    full = list(read_video_frames(video, fps=2.0, skip_b_frames=False))
    assert len(every) == 100 and len(skipped) == len(full) == 8
    by_index = {f.index: f for f in every}
    for frame, reference in zip(skipped, full, strict=True):
        # at most a few frames after the sampling time, with the frame's own timestamp
        assert 0 <= frame.time_s - reference.time_s <= 4 / 25 + 1e-6
        assert frame.time_s == pytest.approx(by_index[frame.index].time_s, abs=1e-3)
        np.testing.assert_allclose(
            frame.image.astype(int), by_index[frame.index].image.astype(int), atol=3
        )
