"""Resuming a killed video scan: seeking to the last committed frame against decoding up to it.

    .venv/bin/python benchmarks/bench_video_resume.py                      # the 1080p world video
    .venv/bin/python benchmarks/bench_video_resume.py --video footage.mp4 --at 0.5 0.9
    .venv/bin/python benchmarks/bench_video_resume.py --loop 15      # 5 minutes of 1080p

For each point in the video (`--at`, a fraction of its sampled frames), the rest of the video
after that frame is read twice in the same run, decode and sampling only (no detector, so the
difference is the resume alone): from the frame number (`ResumePoint(frame)`: what an index
written before the sampler's state was stored does, decoding from the start and skipping) and
from the frame's resume point (`frame.resume_point()`: seeking to the keyframe before it). Both
must yield the same frames, checked frame by frame (`--loop N` times the video played N times
over, remuxed into one file: long footage with the source's keyframe interval); the seconds of each and the frames the
decoder handed on are printed and saved to benchmarks/results/video_resume.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import RESULTS, finish_info, machine_info  # noqa: E402

from personsearch.data import video as video_module  # noqa: E402
from personsearch.data.video import ResumePoint, probe_video, read_video_frames  # noqa: E402
from personsearch.io import write_json  # noqa: E402


def _timed_rest(video: Path, fps: float, resume: ResumePoint) -> tuple[float, int, list[Any]]:
    """(seconds, frames decoded, (index, time, pixel checksum) of each yielded frame)."""
    decoded = [0]
    inner = video_module._decoded_frames

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        for item in inner(*args, **kwargs):
            decoded[0] += 1
            yield item

    video_module._decoded_frames = counted
    try:
        start = time.perf_counter()
        rest = [
            (f.index, round(f.time_s, 6), int(f.image.sum()))
            for f in read_video_frames(video, fps=fps, resume=resume)
        ]
        return time.perf_counter() - start, decoded[0], rest
    finally:
        video_module._decoded_frames = inner


def _looped(video: Path, times: int, out: Path) -> Path:
    """The video played `times` times over, as one file (packets remuxed, not re-encoded): long
    footage with the source's keyframe interval."""
    import av

    with av.open(str(video)) as source, av.open(str(out), "w") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        packets = [p for p in source.demux(stream) if p.dts is not None]
        period = max(p.pts for p in packets) + (packets[1].pts - packets[0].pts)
        for k in range(times):
            for packet in packets:
                packet.pts += period if k else 0
                packet.dts += period if k else 0
                packet.stream = copy
                target.mux(packet)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video",
        type=Path,
        default=Path("data/synthetic-video-1080p/videos/cam0.mp4"),
        help="the video (default: the 1080p world's first camera; `personsearch synth --video`)",
    )
    parser.add_argument("--fps", type=float, default=2.0, help="the sampling rate")
    parser.add_argument(
        "--loop", type=int, default=1, help="time the video played this many times over"
    )
    parser.add_argument("--at", nargs="*", type=float, default=[0.5, 0.9])
    parser.add_argument("--out", type=Path, default=RESULTS / "video_resume.json")
    args = parser.parse_args()
    if not args.video.is_file():
        parser.error(
            f"no video at {args.video}: pass --video, or write the world with "
            "`personsearch synth --video --out data/synthetic-video-1080p` at 1920 x 1080"
        )
    machine, started = machine_info(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.loop > 1:
            args.video = _looped(
                args.video, args.loop, Path(scratch) / f"looped{args.video.suffix}"
            )
        return _run(args, machine, started)


def _run(args: argparse.Namespace, machine: dict[str, Any], started: float) -> int:
    info = probe_video(args.video)
    sampled = list(read_video_frames(args.video, fps=args.fps))
    print(
        f"{args.video}: {info.width} x {info.height}, {info.fps:g} fps, "
        f"{info.duration_s or 0:.1f} s, {len(sampled)} frames sampled at {args.fps:g} fps"
    )
    rows = []
    for at in args.at:
        frame = sampled[min(len(sampled) - 1, max(0, round(at * (len(sampled) - 1))))]
        by_number = _timed_rest(args.video, args.fps, ResumePoint(frame.index))
        by_seek = _timed_rest(args.video, args.fps, frame.resume_point())
        if by_number[2] != by_seek[2]:
            raise SystemExit(f"resuming after frame {frame.index} by seeking gave other frames")
        row = {
            "after_frame": frame.index,
            "after_s": round(frame.time_s, 3),
            "frames_after": len(by_seek[2]),
            "by_number_s": round(by_number[0], 3),
            "by_number_decoded": by_number[1],
            "by_seek_s": round(by_seek[0], 3),
            "by_seek_decoded": by_seek[1],
            "speedup": round(by_number[0] / max(by_seek[0], 1e-9), 2),
        }
        rows.append(row)
        print(
            f"after frame {frame.index} ({frame.time_s:.1f} s): from the number "
            f"{by_number[0]:.2f} s ({by_number[1]} decoded), seeking {by_seek[0]:.2f} s "
            f"({by_seek[1]} decoded): {row['speedup']:.1f}x, the same {len(by_seek[2])} frames"
        )
    write_json(
        args.out,
        {
            "video": str(args.video),
            "loop": args.loop,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "duration_s": info.duration_s,
            "sampling_fps": args.fps,
            "rows": rows,
            "mean_speedup": float(np.mean([r["speedup"] for r in rows])) if rows else None,
            "machine": finish_info(machine, started),
        },
    )
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
