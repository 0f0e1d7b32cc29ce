"""`personsearch evaluate`: score any system's search results file on the standard protocols."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from personsearch.errors import ConfigError, ResultsError

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

End to end: --run FOLDER (a trained pipeline: a folder with pipeline.yaml pairing a detector run
and a re-id run, see docs/search.md) detects and embeds the test set first and writes the results
file (to --results, default FOLDER/results-<dataset>.npz); --gt-boxes uses the ground-truth
gallery boxes instead of detections (the paper's Figure 6(b) comparison).

--by-scale adds mAP and top-1 per bin of r = gallery person height / query person height
(r <= 1/3, 1/3-2/3, 2/3-1.5, 1.5-3, >= 3): each query is scored against only its true matches in
the bin (the others are removed from its gallery), queries without one are not counted. With
--json they come as "by_scale": {bin: {mAP, top1, queries, pairs, label, range}}.

examples:
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results runs/x/results.npz
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --run runs/pipeline
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results r.npz --gallery-size all-sizes
  personsearch evaluate --dataset prw --root data/PRW-v16.04.20 --results r.npz --cross-camera --json
  personsearch evaluate --dataset cuhk-sysu --root data/CUHK-SYSU --results r.npz --by-scale
"""

GALLERY_CHOICES = ("50", "100", "500", "1000", "2000", "4000", "full", "all-sizes")
ALL_SIZES = "all-sizes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("cuhk-sysu", "prw"))
    parser.add_argument("--root", required=True, type=Path, help="the unpacked dataset folder")
    parser.add_argument("--results", type=Path, help="results .npz file (written when --run is given)")
    parser.add_argument("--run", type=Path, default=None,
                        help="trained pipeline folder: detect and embed the test set first")
    parser.add_argument("--gt-boxes", action="store_true",
                        help="with --run: embed the ground-truth gallery boxes instead of detections")
    parser.add_argument("--gallery-size", default="100", choices=GALLERY_CHOICES, metavar="N",
                        help="CUHK-SYSU gallery size: 50, 100 (default), 500, 1000, 2000, 4000, "
                             "full, or all-sizes")
    parser.add_argument("--det-thresh", type=float, default=0.5,
                        help="drop detections scored below this (default 0.5)")
    parser.add_argument("--cross-camera", action="store_true",
                        help="PRW: search other cameras' frames only")
    parser.add_argument("--duplicates", choices=("original", "first"), default="original",
                        help="images listed twice in a CUHK-SYSU query's gallery: 'original' (OIM, "
                             "default) evaluates every entry, 'first' (SeqNet) only the first")
    parser.add_argument("--cbgm", action="store_true",
                        help="SeqNet's context bipartite graph matching (needs the ctx_* arrays)")
    parser.add_argument("--cbgm-k1", type=int, default=None,
                        help="CBGM: re-scored top detections (default 10 CUHK-SYSU, 30 PRW)")
    parser.add_argument("--cbgm-k2", type=int, default=None,
                        help="CBGM: query-image persons incl. the query (default 3 CUHK-SYSU, 4 PRW)")
    parser.add_argument("--per-query", type=Path, default=None,
                        help="write per-query AP, top-k hits and counts to this CSV")
    parser.add_argument("--plot", type=Path, default=None,
                        help="all-sizes: where to write the plot (default: beside the results file)")
    parser.add_argument("--by-scale", action="store_true",
                        help="also mAP and top-1 per bin of the gallery/query person height ratio "
                             "(scale-gap metrics, docs/evaluation.md), for every gallery size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from personsearch.commands._outputs import write_error
    from personsearch.data.registry import load_search_protocol
    from personsearch.evaluation.cbgm import CBGM_DEFAULTS, CBGMOptions
    from personsearch.evaluation.results_file import load_results
    from personsearch.evaluation.search import evaluate_search

    if args.dataset == "prw" and args.gallery_size != "100":
        raise ConfigError("--gallery-size applies to CUHK-SYSU; PRW's gallery is every other test frame")
    if args.dataset == "cuhk-sysu" and args.cross_camera:
        raise ConfigError("--cross-camera applies to PRW only; CUHK-SYSU has no cameras")
    if not 0.0 <= args.det_thresh <= 1.0:
        raise ConfigError(f"--det-thresh must be in 0..1, got {args.det_thresh}")

    if args.run is None and args.results is None:
        raise ConfigError("give --results FILE.npz, or --run FOLDER to compute it")
    if args.gt_boxes and args.run is None:
        raise ConfigError("--gt-boxes needs --run (it decides which boxes get embedded)")
    _check_outputs(args)  # before any detection, embedding or evaluation
    if args.run is not None:
        args.results = _compute_results(args)
    results = load_results(args.results)
    cbgm = None
    if args.cbgm:
        if results.context is None:
            raise ResultsError(
                f"{args.results}: --cbgm needs the query images' detections (ctx_query, "
                "ctx_scores, ctx_feats, optional ctx_boxes)"
            )
        default = CBGM_DEFAULTS[args.dataset]
        try:
            cbgm = CBGMOptions(args.cbgm_k1 or default.k1, args.cbgm_k2 or default.k2)
        except ValueError as error:
            raise ConfigError(str(error)) from error

    sizes: list[Any]
    if args.dataset == "prw":
        sizes = [None]
    elif args.gallery_size == ALL_SIZES:
        from personsearch.data.cuhk_sysu import available_gallery_sizes

        sizes = available_gallery_sizes(args.root) or [100]
    else:
        sizes = [args.gallery_size if args.gallery_size == "full" else int(args.gallery_size)]

    if args.dataset == "cuhk-sysu" and len(sizes) > 1:
        from personsearch.data.cuhk_sysu import cache_protocols

        cache_protocols(args.root, sizes)  # first parse of every .mat file, in parallel
    rows = []
    scale_rows: list[dict[str, Any]] = []  # with --by-scale: one per row, aligned
    gallery_cache: dict[tuple[str, ...], Any] = {}
    for size in sizes:
        protocol = load_search_protocol(
            args.dataset, args.root, gallery_size=100 if size is None else size,
            cross_camera=args.cross_camera,
        )
        _check_queries(results, protocol, args.results)
        key = protocol.images
        if key not in gallery_cache:  # every CUHK-SYSU size shares the pool: group once
            gallery_cache[key] = results.gallery_for(protocol.images, args.det_thresh)
        result = evaluate_search(
            protocol, gallery_cache[key], results.query_feats, duplicates=args.duplicates,
            cbgm=cbgm, query_context=results.context,
        )
        rows.append((size, protocol, result))
        if args.by_scale:
            from personsearch.evaluation.scale_gap import search_by_scale

            scale_rows.append(search_by_scale(
                protocol, gallery_cache[key], results.query_feats, duplicates=args.duplicates,
                cbgm=cbgm, query_context=results.context,
            ))

    summary: dict[str, Any] = {
        "dataset": args.dataset,
        "results": str(args.results),
        "det_thresh": args.det_thresh,
        "duplicates": args.duplicates,
        "cbgm": None if cbgm is None else {"k1": cbgm.k1, "k2": cbgm.k2},
    }
    main_index = next((i for i, r in enumerate(rows) if r[0] == 100), 0)
    main_row = rows[main_index]
    summary.update(protocol=main_row[1].name, num_queries=len(main_row[1].queries))
    summary.update(main_row[2].summary())
    if scale_rows:
        summary["by_scale"] = scale_rows[main_index]
    if len(rows) > 1:
        summary["gallery_sizes"] = [
            {"gallery_size": size, "protocol": p.name, **r.summary()} for size, p, r in rows
        ]
        for entry, by_scale in zip(summary["gallery_sizes"], scale_rows, strict=False):
            entry["by_scale"] = by_scale
        try:
            summary["plot"] = str(_plot(rows, args))
        except OSError as error:
            raise write_error("--plot", args.plot or args.results, error) from error
    if args.per_query is not None:
        try:
            _write_per_query(args.per_query, rows)
        except OSError as error:
            raise write_error("--per-query", args.per_query, error) from error
        summary["per_query"] = str(args.per_query)

    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_table(rows, summary)
        if scale_rows:
            from personsearch.evaluation.scale_gap import scale_table

            for (_, protocol, _), by_scale in zip(rows, scale_rows, strict=True):
                print()
                print(scale_table(by_scale, f"{protocol.name} by scale (r = gallery / query person height)"))
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Every file this run will write can be written: refused now, not after the evaluation."""
    from personsearch.commands._outputs import check_output_file

    if args.per_query is not None:
        check_output_file(args.per_query, "--per-query")
    if args.plot is not None:
        check_output_file(args.plot, "--plot")
    if args.run is not None:
        label = "--results" if args.results else "the results file (--results, default in --run)"
        check_output_file(_results_path(args), label)


def _results_path(args: argparse.Namespace) -> Path:
    """Where --run writes the results file: --results, else inside the pipeline folder."""
    suffix = "-gt-boxes" if args.gt_boxes else ""
    return args.results or Path(args.run) / f"results-{args.dataset}{suffix}.npz"


def _compute_results(args: argparse.Namespace) -> Path:
    """Run the --run pipeline over the test set and write the results file."""
    from personsearch.data.registry import load_scene_dataset, load_search_protocol
    from personsearch.search.pipeline import load_pipeline
    from personsearch.search.pipeline_results import (
        detect_and_embed,
        protocol_scenes,
        write_search_results,
    )

    pipeline = load_pipeline(args.run)
    dataset = load_scene_dataset(args.dataset, args.root)
    protocol = load_search_protocol(args.dataset, args.root, gallery_size=100,
                                    cross_camera=args.cross_camera)
    scenes = protocol_scenes(dataset.test, protocol)
    detector = None if args.gt_boxes else pipeline.detector
    detections = detect_and_embed(detector, pipeline.embedder, scenes)
    from personsearch.commands._outputs import write_error

    out = _results_path(args)
    try:
        path = write_search_results(detections, pipeline.embedder, scenes, protocol, out)
    except OSError as error:
        raise write_error("--results", out, error) from error
    print(f"results file: {path}", file=sys.stderr)  # stdout stays one JSON object with --json
    return path


def _check_queries(results: Any, protocol: Any, path: Path) -> None:
    if len(results.query_feats) != len(protocol.queries):
        raise ResultsError(
            f"{path}: {len(results.query_feats)} query features, but {protocol.name} has "
            f"{len(protocol.queries)} queries (one feature per query, in protocol order)"
        )


def _plot(rows: list, args: argparse.Namespace) -> Path:
    from personsearch.report.gallery_curve import plot_gallery_curve

    sizes = [len(p.images) if s == "full" else int(s) for s, p, _ in rows]
    labels = [f"full\n({len(p.images)})" if s == "full" else str(s) for s, p, _ in rows]
    path = args.plot or args.results.with_name(args.results.stem + "_gallery_sizes.png")
    return plot_gallery_curve(
        sizes, [r.mAP for *_, r in rows], [r.top(1) for *_, r in rows], path, labels=labels
    )


def _write_per_query(path: Path, rows: list) -> None:
    from personsearch.io import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as handle:
        ks = rows[0][2].ks
        handle.write("protocol,query,image,pid,ap,count_gt,count_tp," + ",".join(f"top{k}" for k in ks) + "\n")
        for _, protocol, result in rows:
            for i, task in enumerate(protocol.queries):
                hits = ",".join(str(int(h)) for h in result.hits[i])
                handle.write(
                    f"{protocol.name},{i},{task.image},{task.pid},{result.ap[i]:.10f},"
                    f"{result.count_gt[i]},{result.count_tp[i]},{hits}\n"
                )


def _print_table(rows: list, summary: dict[str, Any]) -> None:
    print(f"{summary['dataset']} search, det_thresh {summary['det_thresh']}, duplicates "
          f"{summary['duplicates']}" + (", CBGM" if summary["cbgm"] else ""))
    print(f"{'protocol':<24}{'queries':>8}{'mAP':>8}{'top-1':>8}{'top-5':>8}{'top-10':>8}")
    for _, protocol, result in rows:
        print(f"{protocol.name:<24}{len(protocol.queries):>8}{100 * result.mAP:>8.2f}"
              f"{100 * result.top(1):>8.2f}{100 * result.top(5):>8.2f}{100 * result.top(10):>8.2f}")
    if "plot" in summary:
        print(f"plot: {summary['plot']}")
    if "per_query" in summary:
        print(f"per-query results: {summary['per_query']}")
