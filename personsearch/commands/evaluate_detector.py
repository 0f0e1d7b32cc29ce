"""`personsearch evaluate-detector --run RUNDIR | --detector SPEC`: detection recall and AP, with
the PR curve, of a trained detector or of any other (HOG, an ONNX detector, a torchvision COCO
model, a pipeline's detector)."""

from __future__ import annotations

import argparse

from personsearch.errors import ConfigError
from personsearch.io import atomic_path, write_json

COMMAND = "evaluate-detector"
HELP = "evaluate any detector on the test scenes (recall, AP at IoU 0.5, PR curve)"
DESCRIPTION = """\
Runs a detector over the test scenes and scores it with the person-search papers' detection
measure (IoU >= 0.5, one-to-one best matches): recall and AP of the detections scored >=
--det-thresh (0.5, the search-time threshold), and over every detection the detector returns
(a trained run's down to 0.05).

The detector: --run RUNDIR, a detector training run (its own dataset and root by default), or
--detector SPEC, anything a pipeline.yaml's `detector:` takes: hog, whole-image, an ONNX
detector's FILE.yaml, torchvision:NAME (a COCO detector; torchvision:NAME?weights=FILE for a
local weights file), a detector run folder, or a pipeline folder (its detector); --detector
needs --dataset and --root. An ONNX or torchvision detector keeps its boxes down to
--min-score (0.05) so that the whole precision-recall curve is traced.

Writes into --out (default RUN/eval-detector-<dataset>/, or eval-detector-<dataset>/ in the
current folder for --detector): metrics.json, pr_curve.png and detections.npz (image_names,
det_image, det_boxes, det_scores: the results-file layout of `personsearch evaluate`, without
features).

  personsearch evaluate-detector --run runs/synthetic-detector
  personsearch evaluate-detector --run runs/cuhk-sysu-detector --root /data/cuhk-sysu
  personsearch evaluate-detector --detector yolox-nano.yaml --dataset prw --root /data/PRW
  personsearch evaluate-detector --detector torchvision:fasterrcnn_resnet50_fpn_v2 --dataset prw --root /data/PRW
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="detector training run folder (holds model.pt)")
    source.add_argument(
        "--detector",
        metavar="SPEC",
        help="hog, whole-image, FILE.yaml (ONNX), torchvision:NAME[?weights=FILE], "
        "a detector run or a pipeline folder",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.05,
        help="--detector: keep boxes down to this score for the PR curve (0.05)",
    )
    parser.add_argument("--dataset", help="cuhk-sysu, prw or synthetic (default: the run's)")
    parser.add_argument("--root", help="dataset folder (default: the run's)")
    parser.add_argument("--out", help="output folder (default RUN/eval-detector-<dataset>)")
    parser.add_argument(
        "--det-thresh",
        type=float,
        default=0.5,
        help="score threshold of the headline recall and AP (default 0.5)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="evaluate the first N test scenes only (quick checks)",
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not 0.0 <= args.det_thresh <= 1.0:
        raise ConfigError(f"--det-thresh {args.det_thresh} must be in [0, 1]")
    if not 0.0 <= args.min_score <= args.det_thresh:
        raise ConfigError(
            f"--min-score {args.min_score} must be in [0, --det-thresh {args.det_thresh}]"
        )
    if args.detector:
        if not (args.dataset and args.root):
            raise ConfigError("--detector needs --dataset and --root (the scenes to detect in)")
        dataset, root = args.dataset, Path(args.root)
    else:
        from personsearch.commands.detect import resolve_run_data

        dataset, root = resolve_run_data(Path(args.run), args.dataset, args.root)
    scenes = _test_scenes(dataset, root, args.limit)
    if args.detector:
        out = Path(args.out) if args.out else Path(f"eval-detector-{dataset}")
        detections, min_score = _any_detector(args, scenes), args.min_score
    else:
        out = Path(args.out) if args.out else Path(args.run) / f"eval-detector-{dataset}"
        detections, min_score = _trained_detector(args, scenes)
    _report(args, scenes, detections, out, dataset, root, min_score)
    return 0


def _test_scenes(dataset: str, root, limit: int):  # type: ignore[no-untyped-def]
    from personsearch.data import registry
    from personsearch.errors import ConfigError

    # the synthetic world is written in CUHK-SYSU's layout
    scenes = registry.load_scene_dataset(
        "cuhk-sysu" if dataset == "synthetic" else dataset, root
    ).test
    if limit > 0:
        scenes = scenes[:limit]
    if not scenes:
        raise ConfigError(f"{dataset} at {root} has no test scenes")
    return scenes


def _trained_detector(args: argparse.Namespace, scenes):  # type: ignore[no-untyped-def]
    from personsearch.engine.detector_eval import EVAL_SCORE_THRESH, detect_scenes
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.models.saving import load_detector

    device = resolve_device(args.device)
    model, _ = load_detector(args.run, device)
    detections = detect_scenes(
        model,
        scenes,
        score_thresh=EVAL_SCORE_THRESH,
        batch_size=args.batch_size,
        workers=args.workers,
        dist_info=DistInfo(device=device),
        progress=True,
    )
    return detections, EVAL_SCORE_THRESH


def _any_detector(args: argparse.Namespace, scenes):  # type: ignore[no-untyped-def]
    """Any detector a pipeline can name, or a pipeline folder's, kept down to --min-score."""
    from pathlib import Path

    from personsearch.search.detectors import detect_scene_images
    from personsearch.search.pipeline import (
        PIPELINE_FILE,
        detector_from_spec,
        read_pipeline_spec,
        sliced_detector,
    )

    value, folder, slices = args.detector, Path.cwd(), None
    if (Path(value) / PIPELINE_FILE).is_file():  # a pipeline folder: its detector
        folder = Path(value)
        spec = read_pipeline_spec(folder)
        value, slices = str(spec["detector"]), spec.get("slices")
    device = None if args.device == "auto" else args.device
    detector = detector_from_spec(value, folder, args.min_score, True, device)
    if slices is not None:
        detector = sliced_detector(detector, slices, folder / PIPELINE_FILE)
    return detect_scene_images(detector, scenes, progress=True, min_score=args.min_score)


def _report(
    args: argparse.Namespace,
    scenes,
    detections,
    out,
    dataset: str,
    root,  # type: ignore[no-untyped-def]
    min_score: float,
) -> None:
    from personsearch.evaluation.scene_detection import detection_metrics, score_detections

    metrics = detection_metrics(scenes, detections, det_thresh=args.det_thresh)
    curve = score_detections(scenes, detections, det_thresh=0.0)
    detections.save(out / "detections.npz")
    _plot_pr_curve(
        curve,
        out / "pr_curve.png",
        args.det_thresh,
        f"{dataset} test, {len(scenes)} scenes: detection at IoU 0.5",
    )
    write_json(
        out / "metrics.json",
        {
            **metrics,
            "dataset": dataset,
            "root": str(root),
            "test_scenes": len(scenes),
            "det_thresh": args.det_thresh,
            "min_score": min_score,
            **({"detector": args.detector} if args.detector else {"run": str(args.run)}),
        },
    )
    print(
        f"recall {metrics['recall']:.2f}%  AP {metrics['ap']:.2f}%  (IoU 0.5, score >= "
        f"{args.det_thresh:g}); over all detections: recall {metrics['recall_all']:.2f}%  "
        f"AP {metrics['ap_all']:.2f}%"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'pr_curve.png'}, {out / 'detections.npz'}")


def _plot_pr_curve(curve, path, det_thresh: float, title: str) -> None:  # type: ignore[no-untyped-def]
    """Precision against recall over score thresholds, the det_thresh operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(5, 4.2), dpi=120)
    axes.plot(
        curve.recall_curve, curve.precision_curve, lw=1.5, label=f"AP (all) {100 * curve.ap:.1f}%"
    )
    above = np.flatnonzero(curve.thresholds >= det_thresh)
    if len(above):
        point = above[-1]
        axes.plot(
            curve.recall_curve[point],
            curve.precision_curve[point],
            "o",
            label=f"score >= {det_thresh:g}: recall {100 * curve.recall_curve[point]:.1f}%",
        )
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
