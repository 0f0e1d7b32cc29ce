"""`personsearch export onnx`: a trained run's network as an ONNX graph, checked for parity."""

from __future__ import annotations

import argparse

COMMAND = "export"
HELP = "export a trained re-id net (or detector) to ONNX, verified against PyTorch"
DESCRIPTION = """\
Writes the network of a training run as an ONNX graph and checks that ONNX Runtime reproduces
PyTorch within 1e-4 on a test batch (nothing is written otherwise).

A re-id run gives `images` (N x 3 x H x W, ImageNet-normalised crops) -> `embeddings` (N x D,
unit rows), plus FILE.yaml beside it: the embedder config (crop size, normalisation) with which
an ONNX model replaces the built-in re-id net for indexing and search. A detector run (or
--detector) gives `image` (3 x H x W in [0, 1]) -> `boxes` (K x 4 pixels), `scores` (K).

Needs onnx and onnxruntime (pip install 'personsearch[export]').

examples:
  personsearch export onnx --run runs/clsa                     # runs/clsa/reid.onnx (+ .yaml)
  personsearch export onnx --run runs/det --detector --out det.onnx
"""

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="export format (onnx)")
    parser.add_argument("--run", required=True, metavar="RUNDIR",
                        help="training run folder (or its model.pt)")
    parser.add_argument("--out", metavar="FILE",
                        help="output file (default RUNDIR/reid.onnx or RUNDIR/detector.onnx)")
    parser.add_argument("--detector", action="store_true",
                        help="the run is a detector run: export the detector")


def run(args: argparse.Namespace) -> int:
    from personsearch.errors import ConfigError
    from personsearch.export.onnx import export_detector_run, export_reid_run, run_task

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
        print(f"embedder config {report.config_path} (use it to index and search with this model)")
    print(f"ONNX Runtime vs PyTorch on a {tuple(report.check_shape)} check input: "
          f"max difference {report.max_diff:.2g} (tolerance 1e-4)")
    return 0
