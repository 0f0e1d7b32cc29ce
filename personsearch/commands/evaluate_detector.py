"""`personsearch evaluate-detector --run RUNDIR`: detection recall and AP, with the PR curve."""

from __future__ import annotations

import argparse

from personsearch.commands.detect import resolve_run_data
from personsearch.errors import ConfigError
from personsearch.io import atomic_path, write_json

COMMAND = "evaluate-detector"
HELP = "evaluate a trained detector on the test scenes (recall, AP at IoU 0.5, PR curve)"
DESCRIPTION = """\
Runs a detector training run's model.pt over the test scenes and scores it with the person-search
papers' detection measure (IoU >= 0.5, one-to-one best matches): recall and AP of the detections
scored >= --det-thresh (0.5, the search-time threshold), and over every detection down to 0.05.
By default the run's own dataset and root are used.

Writes into --out (default RUN/eval-detector-<dataset>/): metrics.json, pr_curve.png and
detections.npz (image_names, det_image, det_boxes, det_scores: the results-file layout of
`personsearch evaluate`, without features).

  personsearch evaluate-detector --run runs/synthetic-detector
  personsearch evaluate-detector --run runs/cuhk-sysu-detector --root /data/cuhk-sysu
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="detector training run folder (holds model.pt)")
    parser.add_argument("--dataset", help="cuhk-sysu, prw or synthetic (default: the run's)")
    parser.add_argument("--root", help="dataset folder (default: the run's)")
    parser.add_argument("--out", help="output folder (default RUN/eval-detector-<dataset>)")
    parser.add_argument("--det-thresh", type=float, default=0.5,
                        help="score threshold of the headline recall and AP (default 0.5)")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="evaluate the first N test scenes only (quick checks)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from personsearch.engine.detector_eval import (
        EVAL_SCORE_THRESH,
        detect_scenes,
        detection_metrics,
        score_detections,
    )
    from personsearch.engine.detector_task import load_scenes
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.models.saving import load_detector

    if not 0.0 <= args.det_thresh <= 1.0:
        raise ConfigError(f"--det-thresh {args.det_thresh} must be in [0, 1]")
    dataset, root = resolve_run_data(Path(args.run), args.dataset, args.root)
    scenes = load_scenes(dataset, root).test
    if args.limit > 0:
        scenes = scenes[: args.limit]
    if not scenes:
        raise ConfigError(f"{dataset} at {root} has no test scenes")
    out = Path(args.out) if args.out else Path(args.run) / f"eval-detector-{dataset}"
    device = resolve_device(args.device)
    model, _ = load_detector(args.run, device)
    detections = detect_scenes(model, scenes, score_thresh=EVAL_SCORE_THRESH,
                               batch_size=args.batch_size, workers=args.workers,
                               dist_info=DistInfo(device=device), progress=True)
    metrics = detection_metrics(scenes, detections, det_thresh=args.det_thresh)
    curve = score_detections(scenes, detections, det_thresh=0.0)
    detections.save(out / "detections.npz")
    _plot_pr_curve(curve, out / "pr_curve.png", args.det_thresh,
                   f"{dataset} test, {len(scenes)} scenes: detection at IoU 0.5")
    write_json(out / "metrics.json", {
        **metrics, "dataset": dataset, "root": str(root), "test_scenes": len(scenes),
        "det_thresh": args.det_thresh, "min_score": EVAL_SCORE_THRESH, "run": str(args.run),
    })
    print(f"recall {metrics['recall']:.2f}%  AP {metrics['ap']:.2f}%  (IoU 0.5, score >= "
          f"{args.det_thresh:g}); over all detections: recall {metrics['recall_all']:.2f}%  "
          f"AP {metrics['ap_all']:.2f}%")
    print(f"wrote {out / 'metrics.json'}, {out / 'pr_curve.png'}, {out / 'detections.npz'}")
    return 0


def _plot_pr_curve(curve, path, det_thresh: float, title: str) -> None:  # type: ignore[no-untyped-def]
    """Precision against recall over score thresholds, the det_thresh operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(5, 4.2), dpi=120)
    axes.plot(curve.recall_curve, curve.precision_curve, lw=1.5, label=f"AP (all) {100 * curve.ap:.1f}%")
    above = np.flatnonzero(curve.thresholds >= det_thresh)
    if len(above):
        point = above[-1]
        axes.plot(curve.recall_curve[point], curve.precision_curve[point], "o",
                  label=f"score >= {det_thresh:g}: recall {100 * curve.recall_curve[point]:.1f}%")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
