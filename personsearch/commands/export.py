"""`personsearch export onnx`: a trained run's network as an ONNX graph, checked for parity."""

from __future__ import annotations

import argparse

from personsearch.commands._outputs import check_output_folder
from personsearch.errors import ConfigError, PersonSearchError

COMMAND = "export"
HELP = "export a trained re-id net, detector or whole pipeline to ONNX, verified against PyTorch"
DESCRIPTION = """\
Writes the network of a training run as an ONNX graph and checks that ONNX Runtime reproduces
PyTorch within 1e-4 on a test batch (nothing is written otherwise).

A re-id run gives `images` (N x 3 x H x W, ImageNet-normalised crops) -> `embeddings` (N x D,
unit rows), plus FILE.yaml beside it: the embedder config (crop size, normalisation) with which
an ONNX model replaces the built-in re-id net for indexing and search. A detector run (or
--detector) gives `image` (3 x H x W in [0, 1]) -> `boxes` (K x 4 pixels), `scores` (K), and
FILE.yaml beside it: the ONNX detector config a pipeline.yaml can name.

--pipeline DIR --out OUTDIR exports both models of a pipeline folder (and writes
OUTDIR/pipeline.yaml): `index`, `search`, `serve` and `evaluate --pipeline OUTDIR` then run
with ONNX Runtime alone, no PyTorch installed.

--torchvision NAME --out FILE.onnx exports one of torchvision's COCO detectors as a person
detector (the graph keeps the person class only) with its detector config: its COCO weights come
from torch hub's cache or --weights FILE.

Needs PyTorch and onnx (pip install 'personsearch[train,export]').

examples:
  personsearch export onnx --run runs/clsa                     # runs/clsa/reid.onnx (+ .yaml)
  personsearch export onnx --run runs/det --detector --out det.onnx
  personsearch export onnx --pipeline runs/pipeline --out runs/pipeline-onnx
  personsearch export onnx --torchvision fasterrcnn_resnet50_fpn_v2 --out frcnn.onnx
"""

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="export format (onnx)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUNDIR", help="training run folder (or its model.pt)")
    source.add_argument(
        "--pipeline",
        metavar="DIR",
        help="a pipeline folder: export its detector and re-id net (needs --out)",
    )
    source.add_argument(
        "--torchvision",
        metavar="NAME",
        help="one of torchvision's COCO detectors (e.g. fasterrcnn_resnet50_fpn_v2) "
        "as an ONNX person detector (needs --out)",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="--torchvision: a local COCO weights file (default: torch hub's cache)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="--torchvision: the score threshold written into its YAML (0.5)",
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="output file (default RUNDIR/reid.onnx or RUNDIR/detector.onnx); "
        "with --pipeline, the output folder",
    )
    parser.add_argument(
        "--detector", action="store_true", help="the run is a detector run: export the detector"
    )


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401 - torch's exporter needs it, and says so only deep inside
    except ImportError:
        raise PersonSearchError(
            "exporting needs the onnx package: pip install 'personsearch[train,export]'"
        ) from None
    from personsearch.export.onnx import export_detector_run, export_reid_run, run_task

    if args.pipeline:
        return _export_pipeline(args)
    if args.torchvision:
        return _export_torchvision(args)
    task = run_task(args.run)
    if args.detector and task != "detector":
        raise ConfigError(f"--detector given but {args.run} holds a {task!r} model")
    if task == "detector":
        report = export_detector_run(args.run, args.out)
        what = "detector"
    elif task == "reid":
        report = export_reid_run(args.run, args.out)
        what = "re-id net"
    else:
        raise ConfigError(f"{args.run} holds a {task!r} model: only re-id and detector runs export")
    print(f"exported the {what} to {report.path}")
    if report.config_path is not None:
        kind = "detector" if task == "detector" else "embedder"
        print(f"{kind} config {report.config_path} (name it in a pipeline.yaml to use this model)")
    print(
        f"ONNX Runtime vs PyTorch on a {tuple(report.check_shape)} check input: "
        f"max difference {report.max_diff:.2g} (tolerance 1e-4)"
    )
    _note_empty_check(report)
    return 0


def _export_torchvision(args: argparse.Namespace) -> int:
    from personsearch.export.onnx import export_coco_detector

    if not args.out:
        raise ConfigError("--torchvision needs --out PATH.onnx (where to write the detector)")
    if not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh {args.score_thresh} must be in [0, 1]")
    report = export_coco_detector(args.torchvision, args.out, args.weights, args.score_thresh)
    print(f"exported torchvision's {args.torchvision} (persons only) to {report.path}")
    print(f"detector config {report.config_path} (name it in a pipeline.yaml to use this model)")
    print(
        f"ONNX Runtime vs PyTorch on a {tuple(report.check_shape)} check input: "
        f"max difference {report.max_diff:.2g} (tolerance 1e-4)"
    )
    _note_empty_check(report)
    return 0


def _note_empty_check(report: object) -> None:
    """A trained detector finds nobody in the random check image: say what was not compared."""
    if getattr(report, "compared_boxes", None) == 0:
        print(
            "note: the detector found no person in the random check image, so only the graph's "
            "outputs' shapes were compared; benchmarks/onnx_pipeline.py compares it on real "
            "scenes"
        )


def _export_pipeline(args: argparse.Namespace) -> int:
    from personsearch.export.onnx import export_pipeline

    if args.detector:
        raise ConfigError("--detector is for --run; --pipeline exports both models")
    if not args.out:
        raise ConfigError("--pipeline needs --out OUTDIR: the folder for the ONNX pipeline")
    check_output_folder(args.out, "--out")
    result = export_pipeline(args.pipeline, args.out)
    for what, report in (("detector", result.detector), ("re-id net", result.reid)):
        if report is not None:
            print(
                f"exported the {what} to {report.path} (ONNX Runtime vs PyTorch: max "
                f"difference {report.max_diff:.2g} on a {tuple(report.check_shape)} input)"
            )
            _note_empty_check(report)
    print(
        f"wrote {result.pipeline_file}: use --pipeline {args.out} with index, search, serve "
        "and evaluate (no PyTorch needed)"
    )
    return 0
