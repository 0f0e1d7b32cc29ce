"""`personsearch prepare-cuhk03`: write CUHK03's PNG folders once from the release's cuhk-03.mat."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "prepare-cuhk03"
HELP = "write CUHK03's images_labeled/ and images_detected/ PNG folders from cuhk-03.mat (once)"
DESCRIPTION = """\
The CUHK03 release keeps its crops inside cuhk03_release/cuhk-03.mat (MATLAB v7.3, an HDF5
file; reading it needs h5py: pip install 'personsearch[cuhk03]'). This writes them as the PNG
folders the reader (and torchreid) use, named {pair}_{pid:03d}_{view}_{index:02d}.png, as the
new protocol's file lists name them. Files already written are kept, so a stopped run resumes.
The two protocol files (cuhk03_new_protocol_config_labeled.mat / _detected.mat, Zhong et al.
2017) are a separate download; put them in the same folder.

  personsearch prepare-cuhk03 --root data/cuhk03
  personsearch prepare-cuhk03 --root data/cuhk03 --mat /elsewhere/cuhk-03.mat --variant labeled
  personsearch check-data --dataset cuhk03 --root data/cuhk03 --variant labeled
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="the CUHK03 folder: the PNG folders are written here",
    )
    parser.add_argument(
        "--mat",
        type=Path,
        help="the release's cuhk-03.mat (default ROOT/cuhk03_release/cuhk-03.mat)",
    )
    parser.add_argument(
        "--variant",
        choices=("labeled", "detected", "both"),
        default="both",
        help="which crops to write (default both)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from personsearch.data.cuhk03 import RELEASE_MAT, VARIANTS, image_folder, write_cuhk03_images

    mat = args.mat or args.root / RELEASE_MAT
    variants = VARIANTS if args.variant == "both" else (args.variant,)
    counts = write_cuhk03_images(mat, args.root, variants, progress=not args.no_progress)
    for variant, count in counts.items():
        print(f"{args.root / image_folder(variant)}: {count} images")
    return 0
