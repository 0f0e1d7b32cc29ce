"""`personsearch index`: build or extend a searchable gallery index from a folder of images."""

from __future__ import annotations

import argparse

COMMAND = "index"
HELP = "index a folder of scene images for person search (incremental, resumable)"
DESCRIPTION = """\
Detect every person in the images under --gallery, embed each person, and add them to the
gallery index folder --out. Running it again adds only images not indexed yet; a run that was
killed resumes where it stopped. Unreadable images are reported and skipped.

Without --run, a weak built-in baseline is used (OpenCV HOG people detector if cv2 is installed,
else each image is one person; colour-histogram features): fine to try the tools, not to
measure anything.

example:
  personsearch index --gallery frames/ --out gallery.index
"""

INDEX_KIND_CHOICES = ("flat", "hnsw", "ivf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", required=True, metavar="DIR", help="folder of scene images")
    parser.add_argument("--out", required=True, metavar="INDEX", help="gallery index folder")
    parser.add_argument(
        "--run", metavar="RUNDIR", help="trained run folder providing detector and re-id model"
    )
    parser.add_argument(
        "--index-kind",
        choices=INDEX_KIND_CHOICES,
        default=None,
        help="flat = exact (default for a new index); hnsw / ivf = approximate, for large galleries",
    )
    parser.add_argument(
        "--batch-images",
        type=int,
        default=8,
        metavar="N",
        help="images per committed batch (default 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from personsearch.search.pipeline import baseline_pipeline, load_pipeline
    from personsearch.search.searcher import PersonSearcher

    pipeline = load_pipeline(args.run) if args.run else baseline_pipeline()
    info = {"pipeline": pipeline.source}
    if args.run:
        info["run"] = str(args.run)
    with PersonSearcher.open(
        args.out,
        pipeline.detector,
        pipeline.embedder,
        index_kind=args.index_kind,
        info=info,
        batch_images=args.batch_images,
    ) as searcher:
        report = searcher.index_folder(args.gallery, progress=not args.no_progress)
        searcher.index.prepare()  # build the FAISS index now: the first search is then fast
        for path, error in report.failed:
            print(f"failed: {path}: {error}")
        print(report.summary())
        print(
            f"index {args.out}: {searcher.index.num_images} images, "
            f"{searcher.index.num_boxes} persons, {searcher.index.index_kind} FAISS index, "
            f"model {searcher.index.fingerprint}"
        )
    return 0
