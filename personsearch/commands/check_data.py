"""`personsearch check-data`: validate a dataset folder and print its statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from personsearch.data.validation import DATASETS, DatasetReport, check_dataset

COMMAND = "check-data"
HELP = "validate a dataset folder (annotations, protocols, images) and print its statistics"
DESCRIPTION = """\
Read a dataset the way training and evaluation will, and report what it holds: images, boxes,
labelled boxes, identities, the search protocols found with their queries, and the range of box
sizes. Every image header is read to check that it decodes and that every box lies inside it
(--no-images only checks that the image files exist). Any problem is reported as one error naming
the file; exit status 1.

examples:
  personsearch check-data --dataset cuhk-sysu --root data/CUHK-SYSU
  personsearch check-data --dataset prw --root data/PRW-v16.04.20 --no-images
  personsearch check-data --dataset market1501 --root data/Market-1501-v15.09.15
  personsearch check-data --dataset cuhk03 --root data/cuhk03 --variant detected
  personsearch check-data --dataset cifar100 --root data/cifar-100-binary
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset format")
    parser.add_argument("--root", required=True, type=Path, help="the unpacked dataset folder")
    parser.add_argument(
        "--no-images",
        action="store_true",
        help="check that image files exist without reading them (faster)",
    )
    parser.add_argument(
        "--variant",
        choices=("labeled", "detected"),
        help="CUHK03 only: which crops and protocol file (default labeled)",
    )


def run(args: argparse.Namespace) -> int:
    # each line and warning is printed as soon as it is found, before the images are read
    report = DatasetReport(
        on_line=print, on_warning=lambda warning: print(f"warning: {warning}", file=sys.stderr)
    )
    check_dataset(
        args.dataset, args.root, read_images=not args.no_images, report=report, variant=args.variant
    )
    print("OK")
    return 0
