"""`personsearch search`: find a probe person in a gallery index; print and picture the ranking."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from personsearch.commands._outputs import check_output_file, write_error
from personsearch.commands._pipeline import add_pipeline_argument
from personsearch.errors import PersonSearchError

COMMAND = "search"
HELP = "search a gallery index for the person in a probe image"
DESCRIPTION = """\
Embed the person in --box of the --probe image (or the whole probe image, when it is a person
crop) and rank the persons of the gallery index by similarity. Prints the ranked list; --out
writes a picture of the top results with their boxes drawn: an HTML page (.html) or a PNG/JPEG
contact sheet (.png, .jpg). Use the same --pipeline that built the index (none for the
baseline); --run is a deprecated alias of --pipeline.

A person seen in a gallery video is one result: the best-matching frame of their track, with
the video's name, the frame's time and the track's first and last time (--every-frame: a
result for every sampled frame instead).

example:
  personsearch search --index gallery.index --probe frames/c1s1_000151.jpg \\
      --box 420,110,480,290 --top-k 10 --out results.html
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="INDEX", help="gallery index folder")
    parser.add_argument("--probe", required=True, metavar="IMG", help="probe image")
    parser.add_argument(
        "--box", metavar="x1,y1,x2,y2", help="the probe person's box in pixels (default: all)"
    )
    parser.add_argument("--top-k", type=int, default=10, metavar="K", help="results (default 10)")
    parser.add_argument(
        "--camera",
        type=int,
        action="append",
        metavar="C",
        help="only gallery persons from this camera (repeatable)",
    )
    parser.add_argument(
        "--every-frame",
        action="store_true",
        help="videos: a result for every sampled frame of a person, not one per track",
    )
    add_pipeline_argument(parser, "the trained pipeline folder that built the index")
    parser.add_argument("--out", metavar="FILE", help="write a picture: .html, .png or .jpg")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the ranking as one JSON document instead of a table (messages go to stderr)",
    )


def run(args: argparse.Namespace) -> int:
    from personsearch.report.search_picture import write_results_picture
    from personsearch.search.pipeline import open_searcher

    box = parse_box(args.box) if args.box else None
    if args.top_k <= 0:
        raise PersonSearchError(f"--top-k must be positive, got {args.top_k}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".html", ".htm", ".png", ".jpg", ".jpeg"):
        raise PersonSearchError(f"--out {out}: use a .html, .png or .jpg file name")
    if out is not None:
        check_output_file(out, "--out")  # before searching: a folder, below a file, read-only
        if out.suffix.lower() in (".jpg", ".jpeg"):
            check_jpeg_sheet(args.top_k)
    with open_searcher(args.index, args.pipeline) as searcher:
        hits = searcher.search(
            args.probe,
            box=box,
            top_k=args.top_k,
            cameras=args.camera,
            per_track=not args.every_frame,
        )
    if args.json:
        print(json.dumps(search_document(args, box, hits), indent=2))
    else:
        print_table(hits)
    if out is not None:
        try:
            write_results_picture(out, Path(args.probe), box, hits)
        except OSError as error:
            raise write_error("--out", out, error) from error
        print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def print_table(hits: list) -> None:
    print(f"{'rank':>4}  {'similarity':>10}  {'det':>5}  {'cam':>3}  {'box':<24}  image or video")
    for rank, hit in enumerate(hits, 1):
        box_text = ",".join(f"{v:.0f}" for v in hit.box)
        print(
            f"{rank:>4}  {hit.similarity:>10.4f}  {hit.det_score:>5.2f}  {hit.camera:>3}  "
            f"{box_text:<24}  {hit.image_path}{video_place(hit)}"
        )
    if not hits:
        print("no results: the index holds no persons (or none pass the camera filter)")


def video_place(hit: object) -> str:
    """ " at 12.5 s (frame 125; track 3, 10.0-17.5 s)" for a video hit, "" for an image's."""
    if getattr(hit, "frame", None) is None:
        return ""
    from personsearch.data.video import format_time

    text = f" at {format_time(hit.time_s)} (frame {hit.frame}"
    if hit.track is not None and hit.track >= 0:
        text += f"; track {hit.track}"
        if hit.track_start_s is not None:
            text += f", {format_time(hit.track_start_s)}-{format_time(hit.track_end_s)}"
    return text + ")"


def hit_document(rank: int, hit: object) -> dict:
    """One hit of `--json` (and of the server's /api/search): image or video, place, track."""
    doc = {
        "rank": rank,
        "image": hit.image_path,
        "box": [round(float(v), 2) for v in hit.box],
        "similarity": float(hit.similarity),
        "det_score": float(hit.det_score),
        "camera": int(hit.camera),
    }
    if getattr(hit, "frame", None) is not None:
        doc["video"] = hit.image_path
        doc["frame"] = int(hit.frame)
        doc["time_s"] = round(float(hit.time_s), 3)
        doc["track"] = int(hit.track)
        if hit.track_start_s is not None:
            doc["track_start_s"] = round(float(hit.track_start_s), 3)
            doc["track_end_s"] = round(float(hit.track_end_s), 3)
            doc["track_frames"] = int(hit.track_frames)
    return doc


def search_document(
    args: argparse.Namespace, box: tuple[float, float, float, float] | None, hits: list
) -> dict:
    """The `--json` output: the query and its ranked hits (boxes in the gallery image's pixels;
    camera -1 where unknown; a video's hits also carry video, frame, time_s, track and the
    track's start and end)."""
    return {
        "index": str(args.index),
        "probe": str(args.probe),
        "box": list(box) if box is not None else None,
        "top_k": args.top_k,
        "cameras": args.camera,
        "one_hit_per_track": not getattr(args, "every_frame", False),
        "hits": [hit_document(rank, hit) for rank, hit in enumerate(hits, 1)],
    }


def check_jpeg_sheet(top_k: int) -> None:
    """Refuse, before searching, a --top-k whose JPEG sheet would be taller than JPEG allows."""
    from personsearch.report.search_picture import JPEG_MAX_SIDE, sheet_size

    _, height = sheet_size(top_k, 1)
    if height > JPEG_MAX_SIDE:
        raise PersonSearchError(
            f"--top-k {top_k}: a JPEG sheet of that many results would be {height:,} px tall, "
            f"over JPEG's {JPEG_MAX_SIDE:,}; write .png or .html, or ask for fewer results"
        )


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x1,y1,x2,y2' -> four floats, or PersonSearchError saying what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise PersonSearchError(f"--box {text!r}: expected four numbers x1,y1,x2,y2")
    return values  # type: ignore[return-value]
