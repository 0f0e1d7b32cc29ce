"""Footage speed: scanning a video (decode, detect, embed, track) as a multiple of real time.

    .venv/bin/python benchmarks/bench_video.py --detector yolox-nano.yaml        # 1080p world
    .venv/bin/python benchmarks/bench_video.py --detector yolox-nano.yaml --video crowd.mp4

For each sampling rate (every frame, then --rates fps, then keyframes only) the same video is
processed three times in the same run: decode only (the floor no pipeline can beat), the scan
(`search.video_scan.scan_video`: decode, detect, embed, track), and indexing it into a fresh
gallery index (`PersonSearcher.index_paths`: the scan plus the chunked, fsynced commits and the
tracker's saved state: what `personsearch index --gallery` does). Reported: seconds, x real time (video seconds / wall seconds), and on the synthetic
world (which has ground truth) the share of the per-frame pass's tracked people that the sampled
pass still tracks. Without --video a 1080p synthetic world video is written first (2 cameras,
20 s at 25 fps; the first camera's video is timed). Results: benchmarks/results/video_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import RESULTS, finish_info, machine_info  # noqa: E402

from personsearch.data.video import probe_video, read_video_frames  # noqa: E402
from personsearch.io import write_json  # noqa: E402


def _detector(spec: str, threads: int):  # type: ignore[no-untyped-def]
    if spec == "hog":
        from personsearch.search.detectors import HogPeopleDetector

        return HogPeopleDetector()
    from personsearch.search.onnx_detector import load_onnx_detector

    return load_onnx_detector(spec, threads=threads or None)


def _found(frames: list, truth: dict[str, np.ndarray] | None) -> set[int] | None:
    """Identities with at least one tracked detection matching their true box."""
    if truth is None:
        return None
    from personsearch.evaluation.tracking import match_detections

    found: set[int] = set()
    for frame in frames:
        here = truth["frame"] == frame.index
        pid = match_detections(
            np.zeros(len(frame.boxes), np.int64),
            frame.boxes,
            np.zeros(int(here.sum()), np.int64),
            truth["boxes"][here],
            truth["pid"][here],
        )
        found.update(int(p) for p in pid[(pid >= 0) & (frame.tracks >= 0)])
    return found


def _index_once(video: Path, detector, embedder, fps, keyframes) -> float:  # type: ignore[no-untyped-def]
    """Seconds to index `video` alone into a new gallery index at this sampling."""
    import tempfile

    from personsearch.search.searcher import PersonSearcher
    from personsearch.search.video_indexing import VideoSampling

    with tempfile.TemporaryDirectory(prefix="bench-video-index-") as tmp:
        start = time.perf_counter()
        with PersonSearcher.open(Path(tmp) / "index", detector, embedder) as searcher:
            report = searcher.index_paths(
                [video], progress=False, sampling=VideoSampling(fps, keyframes=keyframes)
            )
        seconds = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"indexing {video} failed: {report.failed}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, help="a video to time (default: a 1080p world)")
    parser.add_argument("--world", type=Path, default=Path("data/synthetic-video-1080p"))
    parser.add_argument("--detector", required=True, help="an ONNX detector YAML, or hog")
    parser.add_argument("--embedder", default="bands", help="colour, bands, imagenet or a YAML")
    parser.add_argument("--rates", nargs="*", type=float, default=[5.0, 3.0, 2.0, 1.0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads of the detector (0: its default, one per core, "
        "as `personsearch index` runs it; default 1)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "video_speed.json")
    args = parser.parse_args()
    info, started = machine_info(), time.perf_counter()
    truth = None
    if args.video is None:
        from personsearch.data.synthetic_video import (
            VideoWorldSettings,
            generate_video_world,
            ground_truth_arrays,
            read_ground_truth,
        )

        if not (args.world / "ground_truth.json").is_file():
            print(f"writing a 1080p world into {args.world}", flush=True)
            generate_video_world(
                args.world,
                VideoWorldSettings(
                    cameras=2,
                    identities=10,
                    duration_s=20,
                    fps=25,
                    width=1920,
                    height=1080,
                    visit_s=(5.0, 12.0),
                ),
                progress=True,
            )
        args.video = args.world / "videos" / "cam0.mp4"
        truth = ground_truth_arrays(read_ground_truth(args.world), "videos/cam0.mp4")
    video = probe_video(args.video)
    duration = video.duration_s or 0.0
    print(
        f"{args.video}: {video.width} x {video.height}, {video.fps:g} fps, {duration:.1f} s, "
        f"{video.codec}",
        flush=True,
    )
    from personsearch.engine.reid_eval import build_embedder
    from personsearch.search.tracking import Tracker
    from personsearch.search.video_scan import scan_video

    detector, embedder = _detector(args.detector, args.threads), build_embedder(args.embedder)
    rows: list[dict[str, Any]] = []
    passes = [("every frame", None, False)] + [(f"{r:g} fps", r, False) for r in args.rates]
    passes.append(("keyframes", None, True))
    reference = None
    for label, fps, keyframes in passes:
        start = time.perf_counter()
        decoded = sum(1 for _ in read_video_frames(args.video, fps=fps, keyframes=keyframes))
        decode_s = time.perf_counter() - start
        timings: dict[str, float] = {}
        start = time.perf_counter()
        frames = list(
            scan_video(
                args.video,
                detector,
                embedder,
                fps=fps,
                keyframes=keyframes,
                tracker=Tracker(),
                timings=timings,
            )
        )
        scan_s = time.perf_counter() - start
        index_s = _index_once(args.video, detector, embedder, fps, keyframes)
        found = _found(frames, truth)
        if reference is None:
            reference = found
        kept = len(found & reference) / len(reference) if found is not None and reference else None
        row = {
            "pass": label,
            "fps": fps,
            "keyframes": keyframes,
            "frames": decoded,
            "decode_only_s": decode_s,
            "scan_s": scan_s,
            "decode_x_realtime": duration / decode_s if decode_s else None,
            "scan_x_realtime": duration / scan_s if scan_s else None,
            "index_s": index_s,
            "index_x_realtime": duration / index_s if index_s else None,
            "detections": int(sum(len(f.boxes) for f in frames)),
            "tracks": int(len({int(t) for f in frames for t in f.tracks if t >= 0})),
            "tracks_kept": kept,
            "stages_s": timings,
        }
        rows.append(row)
        print(
            f"{label:>12}: {decoded:4d} frames; decode only {decode_s:6.1f} s "
            f"({row['decode_x_realtime']:.1f}x real time); scan {scan_s:6.1f} s "
            f"({row['scan_x_realtime']:.2f}x real time); index {index_s:6.1f} s "
            f"({row['index_x_realtime']:.2f}x real time)"
            + (f"; tracks kept {kept:.2f}" if kept is not None else ""),
            flush=True,
        )
    write_json(
        args.out,
        {
            "video": {
                "path": str(args.video),
                "width": video.width,
                "height": video.height,
                "fps": video.fps,
                "duration_s": duration,
                "codec": video.codec,
                "synthetic_world": truth is not None,
            },
            "detector": args.detector,
            "detector_threads": args.threads or "onnxruntime default",
            "embedder": args.embedder,
            "rows": rows,
            "machine": finish_info(info, started),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
