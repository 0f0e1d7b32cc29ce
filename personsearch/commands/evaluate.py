"""`personsearch evaluate`: score any system's search results file on the standard protocols."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from personsearch.commands._outputs import check_output_file, write_error
from personsearch.commands._pipeline import add_pipeline_argument
from personsearch.errors import ConfigError

COMMAND = "evaluate"
HELP = "evaluate a search results file (.npz) on CUHK-SYSU or PRW: mAP and top-1/5/10"
DESCRIPTION = """\
Compute person-search mAP and top-1/5/10 exactly as the published tables do (see
docs/evaluation.md), from a results file any detector + re-id system can write: image_names,
det_image, det_boxes (x1 y1 x2 y2), det_scores, det_feats and query_feats (L2-normalised, queries
in the protocol's order). Detections scored below --det-thresh are dropped first.

CUHK-SYSU: --gallery-size 50|100|500|1000|2000|4000|full, or all-sizes for every size whose
TestG file exists plus the full test set, with a table and a plot of mAP/top-1 against gallery
size. PRW: every other test frame is the gallery; --cross-camera keeps other cameras only.

End to end: --pipeline FOLDER (a trained pipeline: a folder with pipeline.yaml pairing a detector
run and a re-id run, see docs/search.md) detects and embeds the test set first and writes the
results file (to --results, default FOLDER/results-<dataset>.npz); --gt-boxes uses the
ground-truth gallery boxes instead of detections (the paper's Figure 6(b) comparison). --run is
a deprecated alias of --pipeline.

--by-scale adds mAP and top-1 per bin of r = gallery person height / query person height
(r <= 1/3, 1/3-2/3, 2/3-1.5, 1.5-3, >= 3): each query is scored against only its true matches in
the bin (the others are removed from its gallery), queries without one are not counted. With
--json they come as "by_scale": {bin: {mAP, top1, queries, pairs, label, range}}.

examples:
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results runs/x/results.npz
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --pipeline runs/pipeline
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results r.npz --gallery-size all-sizes
  personsearch evaluate --dataset prw --root data/PRW-v16.04.20 --results r.npz --cross-camera --json
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results r.npz --by-scale
"""

GALLERY_CHOICES = ("50", "100", "500", "1000", "2000", "4000", "full", "all-sizes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("cuhk-sysu", "prw"))
    parser.add_argument("--root", required=True, type=Path, help="the unpacked dataset folder")
    parser.add_argument(
        "--results", type=Path, help="results .npz file (written when --pipeline is given)"
    )
    add_pipeline_argument(
        parser, "trained pipeline folder: detect and embed the test set first", type=Path
    )
    parser.add_argument(
        "--gt-boxes",
        action="store_true",
        help="with --pipeline: embed the ground-truth gallery boxes instead of detections",
    )
    parser.add_argument(
        "--gallery-size",
        default="100",
        choices=GALLERY_CHOICES,
        metavar="N",
        help="CUHK-SYSU gallery size: 50, 100 (default), 500, 1000, 2000, 4000, full, or all-sizes",
    )
    parser.add_argument(
        "--det-thresh",
        type=float,
        default=0.5,
        help="drop detections scored below this (default 0.5)",
    )
    parser.add_argument(
        "--cross-camera", action="store_true", help="PRW: search other cameras' frames only"
    )
    parser.add_argument(
        "--duplicates",
        choices=("original", "first"),
        default="original",
        help="images listed twice in a CUHK-SYSU query's gallery: 'original' (OIM, "
        "default) evaluates every entry, 'first' (SeqNet) only the first",
    )
    parser.add_argument(
        "--cbgm",
        action="store_true",
        help="SeqNet's context bipartite graph matching (needs the ctx_* arrays)",
    )
    parser.add_argument(
        "--cbgm-k1",
        type=int,
        default=None,
        help="CBGM: re-scored top detections (default 10 CUHK-SYSU, 30 PRW)",
    )
    parser.add_argument(
        "--cbgm-k2",
        type=int,
        default=None,
        help="CBGM: query-image persons incl. the query (default 3 CUHK-SYSU, 4 PRW)",
    )
    parser.add_argument(
        "--per-query",
        type=Path,
        default=None,
        help="write per-query AP, top-k hits and counts to this CSV",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="all-sizes: where to write the plot (default: beside the results file)",
    )
    parser.add_argument(
        "--by-scale",
        action="store_true",
        help="also mAP and top-1 per bin of the gallery/query person height ratio "
        "(scale-gap metrics, docs/evaluation.md), for every gallery size",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from personsearch.evaluation.search_protocols import evaluate_results_file

    _check_arguments(args)
    _check_outputs(args)  # before any detection, embedding or evaluation
    if args.pipeline is not None:
        args.results = _compute_results(args)
    evaluation = evaluate_results_file(
        args.dataset,
        args.root,
        args.results,
        gallery_size=args.gallery_size,
        det_thresh=args.det_thresh,
        cross_camera=args.cross_camera,
        duplicates=args.duplicates,
        cbgm=args.cbgm,
        cbgm_k1=args.cbgm_k1,
        cbgm_k2=args.cbgm_k2,
        by_scale=args.by_scale,
    )
    summary = evaluation.summary()
    _write_files(args, evaluation, summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_tables(evaluation, summary)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """ConfigError for options that do not go together, before any work."""
    if args.dataset == "prw" and args.gallery_size != "100":
        raise ConfigError(
            "--gallery-size applies to CUHK-SYSU; PRW's gallery is every other test frame"
        )
    if args.dataset == "cuhk-sysu" and args.cross_camera:
        raise ConfigError("--cross-camera applies to PRW only; CUHK-SYSU has no cameras")
    if not 0.0 <= args.det_thresh <= 1.0:
        raise ConfigError(f"--det-thresh must be in 0..1, got {args.det_thresh}")
    if args.pipeline is None and args.results is None:
        raise ConfigError("give --results FILE.npz, or --pipeline FOLDER to compute it")
    if args.gt_boxes and args.pipeline is None:
        raise ConfigError("--gt-boxes needs --pipeline (it decides which boxes get embedded)")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every file this run will write can be written: refused now, not after the evaluation."""
    if args.per_query is not None:
        check_output_file(args.per_query, "--per-query")
    if args.plot is not None:
        check_output_file(args.plot, "--plot")
    if args.pipeline is not None:
        label = (
            "--results" if args.results else "the results file (--results, default in --pipeline)"
        )
        check_output_file(_results_path(args), label)


def _results_path(args: argparse.Namespace) -> Path:
    """Where --pipeline writes the results file: --results, else inside the pipeline folder."""
    suffix = "-gt-boxes" if args.gt_boxes else ""
    return args.results or Path(args.pipeline) / f"results-{args.dataset}{suffix}.npz"


def _compute_results(args: argparse.Namespace) -> Path:
    """Run the --pipeline over the test set and write the results file."""
    from personsearch.search.pipeline_results import pipeline_results_file

    out = _results_path(args)
    try:
        path = pipeline_results_file(
            args.pipeline,
            args.dataset,
            args.root,
            out,
            gt_boxes=args.gt_boxes,
            cross_camera=args.cross_camera,
        )
    except OSError as error:
        raise write_error("--results", out, error) from error
    print(f"results file: {path}", file=sys.stderr)  # stdout stays one JSON object with --json
    return path


def _write_files(args: argparse.Namespace, evaluation: Any, summary: dict[str, Any]) -> None:
    """The plot (several gallery sizes) and the per-query CSV; their paths go into `summary`."""
    from personsearch.evaluation.search_protocols import write_per_query
    from personsearch.report.gallery_curve import plot_gallery_sizes

    if len(evaluation.rows) > 1:
        path = args.plot or args.results.with_name(args.results.stem + "_gallery_sizes.png")
        try:
            summary["plot"] = str(plot_gallery_sizes(path, evaluation.rows))
        except OSError as error:
            raise write_error("--plot", args.plot or args.results, error) from error
    if args.per_query is not None:
        try:
            write_per_query(args.per_query, evaluation.rows)
        except OSError as error:
            raise write_error("--per-query", args.per_query, error) from error
        summary["per_query"] = str(args.per_query)


def _print_tables(evaluation: Any, summary: dict[str, Any]) -> None:
    from personsearch.evaluation.scale_gap import scale_table

    print(
        f"{summary['dataset']} search, det_thresh {summary['det_thresh']}, duplicates "
        f"{summary['duplicates']}" + (", CBGM" if summary["cbgm"] else "")
    )
    print(f"{'protocol':<24}{'queries':>8}{'mAP':>8}{'top-1':>8}{'top-5':>8}{'top-10':>8}")
    for row in evaluation.rows:
        protocol, result = row.protocol, row.result
        print(
            f"{protocol.name:<24}{len(protocol.queries):>8}{100 * result.mAP:>8.2f}"
            f"{100 * result.top(1):>8.2f}{100 * result.top(5):>8.2f}{100 * result.top(10):>8.2f}"
        )
    if "plot" in summary:
        print(f"plot: {summary['plot']}")
    if "per_query" in summary:
        print(f"per-query results: {summary['per_query']}")
    for row in evaluation.rows:
        if row.by_scale is not None:
            print()
            print(
                scale_table(
                    row.by_scale,
                    f"{row.protocol.name} by scale (r = gallery / query person height)",
                )
            )
