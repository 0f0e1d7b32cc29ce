"""Footage search through the real gallery index: index the world in motion's videos with
`personsearch index`'s code path, search each identity's query, score one hit per track.

    python experiments/video_search.py --world data/synthetic-video --detector truth \
        --rates 5 2 --results benchmarks/results/video_search_truth.json

For each sampling rate a fresh index is built from the world's videos with
`PersonSearcher.index_folder` (decoding, detection, embedding, tracking, chunked commits: what
`personsearch index --gallery` runs), timed against the videos' length. Then every identity's
query picture is searched with `PersonSearcher.search` (one hit per track, the default), and
each hit is given the identity of the true person its boxes overlap most (per track: the
majority over its frames, read back from the index). AP counts a (video, identity) trajectory
once (a person cut into several tracks: one hit and false ones), as `experiments/video_tracking`
does in memory.

Gates, in every row: `random` (the same hits in a random order, 20 draws) must score far below;
`every frame` (the same index, a hit per sampled frame, scored per frame against all of the
query's boxes) is printed beside it for scale, not as a competitor (another gallery).

`--detector truth` gives the ground-truth boxes (jittered by 2 % of the height), recognised by
the decoded frame's pixels, so the index path runs unchanged; or a detector spec as a
pipeline.yaml names it (e.g. an ONNX detector YAML).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from personsearch.data.synthetic_video import (  # noqa: E402
    VideoWorldSettings,
    generate_video_world,
    ground_truth_arrays,
    read_ground_truth,
)
from personsearch.data.video import read_video_frames  # noqa: E402
from personsearch.evaluation.tracking import match_detections, track_search_ap  # noqa: E402
from personsearch.io import write_json  # noqa: E402
from personsearch.search.detectors import GroundTruthBoxes, pixel_digest  # noqa: E402
from personsearch.search.searcher import PersonSearcher  # noqa: E402
from personsearch.search.video_indexing import VideoSampling  # noqa: E402


def truth_detector(world: Path, truth: dict[str, Any], sampling: VideoSampling, seed: int):  # type: ignore[no-untyped-def]
    """Ground-truth boxes (jittered) of every sampled frame, keyed by the frame's pixels."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for name in sorted(truth["videos"]):
        arrays = ground_truth_arrays(truth, name)
        for frame in read_video_frames(
            world / name, fps=sampling.fps, keyframes=sampling.keyframes
        ):
            here = arrays["frame"] == frame.index
            heights = (arrays["boxes"][here, 3] - arrays["boxes"][here, 1])[:, None]
            noise = rng.normal(0, 0.02, (int(here.sum()), 4)) * heights
            boxes[pixel_digest(frame.image)] = arrays["boxes"][here] + noise
    return GroundTruthBoxes(boxes)


def index_rows(index_dir: Path) -> dict[str, np.ndarray]:
    """Every box of the index: its row, video name, frame, box and track."""
    with sqlite3.connect(index_dir / "index.sqlite") as conn:
        rows = conn.execute(
            "SELECT b.id, i.path, b.frame, b.x1, b.y1, b.x2, b.y2, b.track FROM boxes b "
            "JOIN images i ON i.id = b.image_id ORDER BY b.id"
        ).fetchall()
    return {
        "row": np.array([r[0] for r in rows], np.int64),
        "video": np.array([Path(r[1]).name for r in rows]),
        "frame": np.array([r[2] for r in rows], np.int64),
        "boxes": np.array([r[3:7] for r in rows], np.float64).reshape(-1, 4),
        "track": np.array([r[7] for r in rows], np.int64),
    }


def identities(rows: dict[str, np.ndarray], truth: dict[str, Any]) -> np.ndarray:
    """Per row, the true identity its box matches (-1: none), video by video."""
    pid = np.full(len(rows["row"]), -1, np.int64)
    for name in sorted(truth["videos"]):
        mine = rows["video"] == Path(name).name
        arrays = ground_truth_arrays(truth, name)
        pid[mine] = match_detections(
            rows["frame"][mine],
            rows["boxes"][mine],
            arrays["frame"],
            arrays["boxes"],
            arrays["pid"],
        )
    return pid


def score_queries(
    searcher: PersonSearcher,
    world: Path,
    truth: dict[str, Any],
    rows: dict[str, np.ndarray],
    pid: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """mAP per track, of a random order of the same hits, and per frame."""
    # a track's identity is the majority of its rows'; a row in no track is its own
    key = np.where(rows["track"] >= 0, rows["track"], -1 - rows["row"])
    owner: dict[tuple[str, int], int] = {}
    for video, k in set(zip(rows["video"].tolist(), key.tolist(), strict=True)):
        own = pid[(rows["video"] == video) & (key == k)]
        owner[(video, k)] = int(np.bincount(own + 1).argmax()) - 1
    present = {int(p) for p in np.unique(pid[pid >= 0])}
    per_track, shuffled, per_frame = {}, {}, {}
    total = len(rows["row"])
    for query_pid, query in truth["queries"].items():
        query_pid = int(query_pid)
        trajectories = {
            name for name in truth["videos"] if query_pid in ground_truth_arrays(truth, name)["pid"]
        }
        if query_pid not in present or not trajectories:
            continue
        image = world / query["image"]
        hits = searcher.search(image, box=query["box"], top_k=total)
        scores = np.array([h.similarity for h in hits])
        videos = np.array([Path(h.image_path).name for h in hits])
        keys = [h.track if h.track >= 0 else -1 - h.row for h in hits]
        relevant = np.array(
            [owner[(v, k)] == query_pid for v, k in zip(videos.tolist(), keys, strict=True)]
        )
        found = len({Path(n).name for n in trajectories})
        per_track[query_pid] = track_search_ap(scores, relevant, found, videos)
        shuffled[query_pid] = float(
            np.mean(
                [
                    track_search_ap(
                        rng.permutation(len(scores)).astype(float), relevant, found, videos
                    )
                    for _ in range(20)
                ]
            )
        )
        frames = searcher.search(image, box=query["box"], top_k=total, per_track=False)
        frame_rel = np.array([pid[h.row] == query_pid for h in frames])
        frame_scores = np.array([h.similarity for h in frames])
        per_frame[query_pid] = track_search_ap(
            frame_scores, frame_rel, max(int(frame_rel.sum()), 1)
        )
    return {
        "queries": len(per_track),
        "per_track_mAP": float(np.mean(list(per_track.values()))),
        "random_order_mAP": float(np.mean(list(shuffled.values()))),
        "per_frame_mAP": float(np.mean(list(per_frame.values()))),
        "ap": {str(k): v for k, v in per_track.items()},
        "hits_per_query": len(hits),
    }


def run_rate(
    args: argparse.Namespace, truth: dict[str, Any], sampling: VideoSampling, work: Path
) -> dict[str, Any]:
    from personsearch.engine.reid_eval import build_embedder

    embedder = build_embedder(args.embedder)
    if args.detector == "truth":
        detector = truth_detector(args.world, truth, sampling, args.seed)
    else:
        from personsearch.search.pipeline import detector_from_spec

        detector = detector_from_spec(args.detector, Path.cwd(), 0.5, thresh_given=False)
    gallery = work / f"gallery-{sampling.label}"
    gallery.mkdir()
    for name in sorted(truth["videos"]):
        (gallery / Path(name).name).symlink_to((args.world / name).resolve())
    index = work / f"index-{sampling.label}"
    with PersonSearcher.open(index, detector, embedder) as searcher:
        start = time.perf_counter()
        report = searcher.index_folder(gallery, progress=False, sampling=sampling)
        seconds = time.perf_counter() - start
        rows = index_rows(index)
        pid = identities(rows, truth)
        scores = score_queries(
            searcher, args.world, truth, rows, pid, np.random.default_rng(args.seed)
        )
    video_seconds = truth["settings"]["duration_s"] * len(truth["videos"])
    return {
        "sampling": sampling.label,
        "frames": report.frames,
        "boxes": report.boxes,
        "tracks": int(
            len({(v, t) for v, t in zip(rows["video"], rows["track"], strict=True) if t >= 0})
        ),
        "index_seconds": round(seconds, 2),
        "x_real_time": round(video_seconds / seconds, 2),
        **scores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=Path("data/synthetic-video"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", default="truth", help="truth, or a detector spec / YAML")
    parser.add_argument("--embedder", default="bands", help="colour, bands, imagenet or a YAML")
    parser.add_argument("--rates", nargs="+", default=["5", "2"], help="fps, `all` or `keyframes`")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.world / "ground_truth.json").is_file():
        print(f"generating the world in {args.world} (seed {args.seed})", flush=True)
        generate_video_world(args.world, VideoWorldSettings(seed=args.seed), progress=True)
    truth = read_ground_truth(args.world)
    rows = []
    with tempfile.TemporaryDirectory(prefix="video-search-") as tmp:
        for rate in args.rates:
            sampling = (
                VideoSampling(None, keyframes=True)
                if rate == "keyframes"
                else VideoSampling(None if rate == "all" else float(rate))
            )
            row = run_rate(args, truth, sampling, Path(tmp))
            rows.append(row)
            print(
                f"{row['sampling']}: {row['frames']} frames, {row['boxes']} boxes, {row['tracks']} "
                f"tracks; indexed in {row['index_seconds']} s ({row['x_real_time']}x real time); "
                f"search mAP per track {100 * row['per_track_mAP']:.1f} (random order "
                f"{100 * row['random_order_mAP']:.1f}; per frame {100 * row['per_frame_mAP']:.1f})",
                flush=True,
            )
            shutil.rmtree(Path(tmp) / f"index-{sampling.label}", ignore_errors=True)
    if args.results:
        write_json(
            args.results,
            {
                "command": " ".join(["video_search.py", *(argv or sys.argv[1:])]),
                "world": {"root": str(args.world), "settings": truth["settings"]},
                "detector": args.detector,
                "embedder": args.embedder,
                "rows": rows,
            },
        )
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
