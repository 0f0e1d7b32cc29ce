"""`personsearch index`: build or extend a searchable gallery index from a folder of images."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from personsearch.commands._outputs import check_output_folder, write_error
from personsearch.commands._pipeline import add_pipeline_argument
from personsearch.errors import PersonSearchError

COMMAND = "index"
HELP = "index a folder of scene images and videos for person search (incremental, resumable)"
DESCRIPTION = """\
Detect every person in the images and videos under --gallery, embed each person, and add them
to the gallery index folder --out. Running it again adds only files not indexed yet; a run that
was killed resumes where it stopped (inside a video: after its last committed frame).
Unreadable files are reported and skipped; a video whose decoding fails part-way keeps the
frames before the fault.

Videos (mp4, mkv, avi, mov, webm, ...) are sampled at --fps frames per second (default 2;
--keyframes: only keyframes, the fast mode; --every-frame: all of them); each person is tracked
across the sampled frames, and a search returns one hit per track (docs/footage.md).

--pipeline is a trained pipeline folder (pipeline.yaml pairing a detector run and a re-id run,
or a re-id run folder alone, see docs/search.md); --run is a deprecated alias of it. Without
--pipeline, a weak built-in baseline is used (OpenCV HOG people detector if cv2 is installed,
else each image is one person; colour-histogram features): fine to try the tools, not to
measure anything.

With --ray-workers N the images and videos are detected and embedded by N Ray worker processes
(the optional extra: pip install 'personsearch[ray]'), each writing index shards (a run of
images, or one whole video) that are merged into --out with FAISS's merge tools; the result
equals the single-process index. Without
--ray-address a local Ray instance is started; with it, the job joins that cluster (the gallery
and --out must then be on storage every node sees).

examples:
  personsearch index --gallery frames/ --out gallery.index
  personsearch index --gallery frames/ --out gallery.index --pipeline runs/pipeline
  personsearch index --gallery footage/ --out footage.index --fps 4
  personsearch index --gallery frames/ --out gallery.index --ray-workers 8
  personsearch index --gallery /nfs/frames --out /nfs/gallery.index --ray-workers 64 \
      --ray-address HEAD_IP:6379
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personsearch.search.index_kinds import INDEX_KINDS  # cheap: no numpy, no faiss

    parser.add_argument("--gallery", required=True, metavar="DIR", help="folder of scene images")
    parser.add_argument("--out", required=True, metavar="INDEX", help="gallery index folder")
    add_pipeline_argument(
        parser, "trained pipeline folder providing detector and re-id model (default: the baseline)"
    )
    parser.add_argument(
        "--index-kind",
        choices=INDEX_KINDS,
        default=None,
        help="flat = exact (default for a new index); hnsw / ivf / ivfpq = approximate, for large "
        "galleries (ivfpq: the fast one at 1M boxes, see docs/search.md)",
    )
    parser.add_argument(
        "--batch-images",
        type=int,
        default=8,
        metavar="N",
        help="images per committed batch (default 8)",
    )
    video = parser.add_argument_group("videos in the gallery")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="F",
        help="sampled frames per second of each new video (default 2)",
    )
    sampling.add_argument(
        "--keyframes",
        action="store_true",
        help="index only the keyframes (fast: the other frames are never decoded)",
    )
    sampling.add_argument(
        "--every-frame", action="store_true", help="index every frame (slow; exact tracks)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--json",
        action="store_true",
        help="end with a one-line JSON summary on stdout (other messages go to stderr)",
    )
    ray = parser.add_argument_group("indexing with Ray (optional extra: personsearch[ray])")
    ray.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="detect and embed with N Ray worker processes (one CPU each), merging their shards",
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this running Ray cluster (HEAD_IP:6379) instead of starting a local instance",
    )
    ray.add_argument(
        "--shard-images",
        type=int,
        default=64,
        metavar="N",
        help="images per shard, the unit of work of one Ray worker (default 64)",
    )


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")  # before loading any model
    if args.ray_workers is not None or args.ray_address:
        return _run_with_ray(args)
    from personsearch.search.pipeline import baseline_pipeline, load_pipeline
    from personsearch.search.searcher import PersonSearcher

    sampling = video_sampling(args)  # checked before any model is loaded
    pipeline = load_pipeline(args.pipeline) if args.pipeline else baseline_pipeline()
    info = {"pipeline": pipeline.source}
    if args.pipeline:
        info["run"] = str(args.pipeline)  # the key indexes have always recorded it under
    out = Path(args.out)
    created = not out.exists()
    try:
        with PersonSearcher.open(
            out,
            pipeline.detector,
            pipeline.embedder,
            index_kind=args.index_kind,
            info=info,
            batch_images=args.batch_images,
        ) as searcher:
            started = time.perf_counter()
            report = searcher.index_folder(
                args.gallery, progress=not args.no_progress, sampling=sampling
            )
            searcher.index.prepare()  # build the FAISS index now: the first search is then fast
            _print_report(args, report, searcher.index.store, time.perf_counter() - started)
    except BaseException as error:
        if created:  # failed before its first batch was committed: leave no empty index behind
            _remove_if_empty(out)
        if isinstance(error, OSError):
            raise _os_error(out, error) from error
        raise
    return 0


def video_sampling(args: argparse.Namespace) -> Any:
    """The VideoSampling that --fps / --keyframes / --every-frame ask for."""
    import math

    from personsearch.data.video import DEFAULT_FPS
    from personsearch.search.video_indexing import VideoSampling

    if args.keyframes:
        return VideoSampling(None, keyframes=True)
    if args.every_frame:
        return VideoSampling(None)
    fps = DEFAULT_FPS if args.fps is None else args.fps
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise PersonSearchError(f"--fps {args.fps}: give frames per second in (0, 1000]")
    return VideoSampling(fps)


def _os_error(out: Path, error: OSError) -> Exception:
    """One line for an OSError: a write into the index, or anything else (reading the gallery)."""
    name = str(error.filename or "")
    if not name or Path(name).resolve().is_relative_to(out.resolve()):
        return write_error("--out", out, error)
    return PersonSearchError(f"{name}: {error.strerror or error}")


def _remove_if_empty(folder: Path) -> None:
    """Delete an index folder this run created if it records no image at all (else keep it)."""
    import shutil

    from personsearch.search.store.queries import has_images
    from personsearch.search.store.schema import DB_NAME, LOCK_NAME, PROGRESS_NAME, SHARD_DIR

    if not folder.is_dir() or has_images(folder):
        return
    own = {DB_NAME, LOCK_NAME, PROGRESS_NAME, SHARD_DIR, f"{DB_NAME}-journal"}
    if any(path.name not in own for path in folder.iterdir()):
        return  # something else was put there meanwhile: not ours to delete
    shutil.rmtree(folder, ignore_errors=True)


def _run_with_ray(args: argparse.Namespace) -> int:
    from personsearch.errors import PersonSearchError
    from personsearch.search.ray_indexing import RunPipeline, index_with_ray
    from personsearch.search.store.gallery import GalleryStore

    if args.ray_workers is None:
        raise PersonSearchError("--ray-address needs --ray-workers N: how many workers to use")
    run_dir = str(Path(args.pipeline).resolve()) if args.pipeline else None
    out = Path(args.out)
    created = not out.exists()
    started = time.perf_counter()
    try:
        report = index_with_ray(
            args.gallery,
            args.out,
            pipeline=RunPipeline(run_dir),
            num_workers=args.ray_workers,
            address=args.ray_address,
            index_kind=args.index_kind,
            shard_images=args.shard_images,
            batch_images=args.batch_images,
            info={"run": str(args.pipeline)} if args.pipeline else None,
            progress=not args.no_progress,
            sampling=video_sampling(args),
        )
    except BaseException:
        if created:  # as without Ray: a failed first run leaves no empty index behind
            _remove_if_empty(out)
        raise
    with GalleryStore.open(args.out) as store:
        _print_report(args, report, store, time.perf_counter() - started)
    return 0


def _files(store: Any) -> str:
    """ "12 images" or "12 images and 3 videos": what an index holds."""
    videos = store.num_videos
    images = f"{store.num_images - videos} images"
    return f"{images} and {videos} videos" if videos else images


def _print_report(args: argparse.Namespace, report: Any, store: Any, seconds: float) -> None:
    """The run's outcome (`store`: the index's GalleryStore): readable lines, or (--json) the
    same on stderr and one JSON line."""
    stream = sys.stderr if args.json else sys.stdout
    for path, error in report.failed:
        print(f"failed: {path}: {error}", file=stream)
    for path, error in report.stopped:
        print(f"stopped part-way: {path}: {error}", file=stream)
    print(report.summary(), file=stream)
    print(
        f"index {args.out}: {_files(store)}, {store.num_boxes} persons, "
        f"{store.index_kind} FAISS index, model {store.fingerprint}",
        file=stream,
    )
    if args.json:
        summary = {
            "index": str(args.out),
            "gallery": str(args.gallery),
            "found": report.found,
            "added": report.added,
            "persons_added": report.boxes,
            "skipped": report.skipped,
            "failed": [{"image": path, "error": error} for path, error in report.failed],
            "changed": len(report.changed),
            "videos": report.videos,
            "video_frames": report.frames,
            "videos_resumed": len(report.resumed),
            "videos_stopped": [{"video": path, "error": error} for path, error in report.stopped],
            "images": store.num_images - store.num_videos,
            "videos_indexed": store.num_videos,
            "persons": store.num_boxes,
            "index_kind": store.index_kind,
            "model": store.fingerprint,
            "seconds": round(seconds, 3),
        }
        print(json.dumps(summary))
