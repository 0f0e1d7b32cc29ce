"""`personsearch synth`: generate the built-in synthetic person-search world (no download)."""

from __future__ import annotations

import argparse
import time

from personsearch.commands._outputs import check_output_folder, write_error

COMMAND = "synth"
HELP = "generate a synthetic person-search world in CUHK-SYSU's layout (no download needed)"
DESCRIPTION = """\
Generate a procedural person-search benchmark: identities with stable clothing, body shape and
accessories seen at widely varying scales (30 pixels to most of the image height), unlabelled
background people, clutter and occlusion. It is written in CUHK-SYSU's own layout and .mat
structures, so every command that takes --dataset cuhk-sysu reads it.

presets:
  tiny   200 scenes (~320x240), 70 identities, TestG50/100: seconds, for tests
  small  2,000 scenes (~480x360), 920 identities, TestG50/100/500: the CPU demo
  full   18,184 scenes, 8,432 identities, 2,900 queries, TestG50..4000: CUHK-SYSU's size

The same --seed gives byte-identical files. The world is built beside DIR and renamed onto it
when complete; an existing non-empty DIR is replaced only with --force. Besides the dataset it
writes DIR/contact_sheet.png, DIR/scale_histogram.png and DIR/stats.json.

--video writes the world in motion instead: one H.264 video per camera (3 cameras, 20 s at
10 fps, 640 x 360) of people walking through, every identity in two or more cameras, a query
picture per identity (DIR/queries/) and every person's box per frame (DIR/ground_truth.json):
footage to try `personsearch index --gallery DIR/videos` on (docs/footage.md).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    parser.add_argument(
        "--preset",
        choices=("tiny", "small", "full"),
        default="tiny",
        help="world size (default: tiny)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="render processes (default: one per CPU; 0 renders in this process)",
    )
    parser.add_argument("--force", action="store_true", help="replace DIR if it is not empty")
    parser.add_argument(
        "--video",
        action="store_true",
        help="write the world in motion (videos of several cameras) instead of scenes",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from personsearch.data.synthetic import generate_world

    out = Path(args.out)
    # before rendering anything: the world is built in a sibling folder, then renamed onto DIR
    check_output_folder(out, "--out")
    check_output_folder(out.absolute().parent, "--out's parent")
    start = time.perf_counter()
    if args.video:
        return _video_world(args, out, start)
    try:
        stats = generate_world(
            out,
            args.preset,
            args.seed,
            workers=args.workers,
            force=args.force,
            progress=args.preset != "tiny",
        )
    except OSError as error:
        raise write_error("--out", out, error) from error
    seconds = time.perf_counter() - start
    scenes, boxes, ids = stats["scenes"], stats["boxes"], stats["identities"]
    heights = stats["box_height"]
    print(f"synthetic world '{stats['preset']}' (seed {stats['seed']}) written to {args.out}")
    print(f"  scenes      {scenes['total']} ({scenes['train']} train, {scenes['test']} test)")
    print(
        f"  people      {boxes['total']} boxes ({boxes['labelled']} labelled, "
        f"{boxes['background']} background)"
    )
    print(
        f"  identities  {ids['train']} train, {ids['test']} test; {stats['queries']} queries; "
        f"protocols {', '.join(stats['protocols'])}"
    )
    print(
        f"  box height  {heights['min']}-{heights['max']} px "
        f"(median {heights['percentiles']['50']:g})"
    )
    print(f"  time        {seconds:.1f} s")
    return 0


def _video_world(args: argparse.Namespace, out: object, start: float) -> int:
    from pathlib import Path

    from personsearch.data.synthetic_video import VideoWorldSettings, generate_video_world
    from personsearch.errors import PersonSearchError

    out = Path(str(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise PersonSearchError(f"--out {out} exists and is not empty: use --force to replace it")
    settings = VideoWorldSettings(seed=args.seed)
    try:
        generate_video_world(out, settings, progress=True)
    except OSError as error:
        raise write_error("--out", out, error) from error
    print(
        f"world in motion (seed {settings.seed}) written to {out}: {settings.cameras} videos "
        f"in {out / 'videos'} ({settings.duration_s:g} s at {settings.fps:g} fps, "
        f"{settings.width} x {settings.height}), {settings.identities} identities, queries in "
        f"{out / 'queries'}, truth in {out / 'ground_truth.json'}; "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
