"""Benchmark: the person detectors a user can pick, on real annotated frames and for speed.

Accuracy, on a folder in PRW's layout (`frames/`, `annotations/<frame>.jpg.mat`): for each
detector, the annotated persons found at IoU >= 0.5 (recall, overall and for the smallest third
by height), the boxes that match no annotated person (precision; PRW annotates most but not all
people, so this is a lower bound), boxes per frame. Detectors: OpenCV's HOG (trimmed windows), a
YOLOX-style ONNX model (`--yolox`, e.g. YOLOX-nano: 416 x 416 input) as a whole frame and sliced
(`SlicedDetector`: 416 x 416 tiles with 25 % overlap plus the whole frame), at the score
thresholds in `--thresholds`, and a trained run's detector (`--run`, e.g. the demo's).

Speed, on one 1920 x 1080 frame, interleaved round by round (medians): the same detectors plus
torchvision's COCO detectors in PyTorch (random weights: their cost does not depend on the
weights, since every one of them runs its whole head on a fixed number of candidates).

    .venv/bin/python benchmarks/bench_person_detectors.py --prw PRW_FOLDER --yolox yolox_nano.onnx \
        [--run runs/demo/runs/detector] [--rounds 2] [--threads 1]

Prints tables and writes benchmarks/results/person_detectors.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import benchutil  # noqa: E402
from personsearch.boxes import box_iou  # noqa: E402
from personsearch.io import write_json  # noqa: E402

YOLOX_SETTINGS = {
    "layout": "yolo",
    "yolo_rows_first": True,
    "yolo_objectness": True,
    "resize": "letterbox",
    "letterbox_align": "top_left",
    "input_height": 416,
    "input_width": 416,
    "channel_order": "bgr",
    "pixel_scale": 1.0,
}


def yolox_detector(model: Path, score_thresh: float) -> Any:
    from personsearch.search.onnx_detector import OnnxDetector, OnnxDetectorConfig

    return OnnxDetector(
        OnnxDetectorConfig(model=str(model), score_thresh=score_thresh, **YOLOX_SETTINGS), threads=1
    )


def detectors_for_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from personsearch.search.detectors import HogPeopleDetector, hog_available
    from personsearch.search.sliced import SlicedDetector

    found: dict[str, Any] = {}
    if hog_available():
        found["hog (opencv, trimmed)"] = HogPeopleDetector()
    if args.yolox:
        for thresh in args.thresholds:
            found[f"yolox-nano @ {thresh:g}"] = yolox_detector(args.yolox, thresh)
            found[f"yolox-nano sliced @ {thresh:g}"] = SlicedDetector(
                yolox_detector(args.yolox, thresh), tile=(416, 416), overlap=0.25
            )
    if args.run:
        from personsearch.search.torch_detector import TorchDetector

        found[f"trained run ({args.run.name})"] = TorchDetector.from_run(args.run)
    return found


def read_frames(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from personsearch.data.images import read_rgb
    from personsearch.data.prw import read_annotation

    names = sorted(p.name for p in (folder / "frames").iterdir() if p.suffix == ".jpg")[:limit]
    return [
        (
            name,
            read_rgb(folder / "frames" / name),
            read_annotation(folder / "annotations" / f"{name}.mat")[0],
        )
        for name in names
    ]


def accuracy(
    detector: Any, frames: list[tuple[str, np.ndarray, np.ndarray]], small_height: float
) -> dict[str, Any]:
    found = total = small_found = small_total = boxes_total = unmatched = 0
    started = time.perf_counter()
    for _, image, truth in frames:
        boxes, _ = detector.detect(image)
        boxes = np.asarray(boxes).reshape(-1, 4)
        iou = (
            box_iou(truth, boxes)
            if len(boxes) and len(truth)
            else np.zeros((len(truth), len(boxes)))
        )
        hit = iou.max(axis=1, initial=0) >= 0.5
        small = (truth[:, 3] - truth[:, 1]) <= small_height
        found, total = found + int(hit.sum()), total + len(truth)
        small_found, small_total = (
            small_found + int(hit[small].sum()),
            small_total + int(small.sum()),
        )
        boxes_total += len(boxes)
        unmatched += int((iou.max(axis=0, initial=0) < 0.5).sum()) if len(truth) else len(boxes)
    return {
        "recall": found / max(total, 1),
        "found": found,
        "annotated": total,
        "recall_small": small_found / max(small_total, 1),
        "small_found": small_found,
        "small_annotated": small_total,
        "precision_lower_bound": (boxes_total - unmatched) / max(boxes_total, 1),
        "boxes_per_frame": boxes_total / max(len(frames), 1),
        "seconds_per_frame": (time.perf_counter() - started) / max(len(frames), 1),
    }


def speed_entries(args: argparse.Namespace, frame: np.ndarray) -> list[dict[str, Any]]:
    import torch

    from personsearch.models.coco import COCO_DETECTORS
    from personsearch.search.coco_detectors import CocoDetector
    from personsearch.search.detectors import HogPeopleDetector, hog_available
    from personsearch.search.sliced import SlicedDetector

    runs: list[tuple[str, str, Callable[[], Any]]] = []
    if hog_available():
        hog = HogPeopleDetector()
        runs.append(("hog (opencv, trimmed)", "opencv", lambda: hog.detect(frame)))
    if args.yolox:
        yolox = yolox_detector(args.yolox, 0.3)
        sliced = SlicedDetector(yolox_detector(args.yolox, 0.3), tile=(416, 416), overlap=0.25)
        runs.append(("yolox-nano", "onnxruntime", lambda: yolox.detect(frame)))
        runs.append(
            (
                f"yolox-nano sliced ({len(sliced.windows(*frame.shape[:2]))} tiles + frame)",
                "onnxruntime",
                lambda: sliced.detect(frame),
            )
        )
    torch.manual_seed(0)
    for name in args.coco or COCO_DETECTORS:
        detector = CocoDetector(name, weights="random", score_thresh=0.5)
        runs.append((f"torchvision {name}", "pytorch", lambda d=detector: d.detect(frame)))
    entries = []
    for name, setting, run in runs:
        benchutil.reset_peak_rss()
        run()  # warm-up
        entries.append(
            {
                "detector": name,
                "setting": setting,
                "run": run,
                "seconds": [],
                "peak_rss_mb": round(benchutil.peak_rss_mb(), 1),
            }
        )
    for _ in range(args.rounds):
        for entry in entries:
            entry["seconds"].append(benchutil.timed(entry["run"]))
    for entry in entries:
        entry.pop("run")
        seconds = benchutil.median(entry["seconds"])
        entry.update(
            ms_per_frame=round(1000 * seconds, 1),
            frames_per_s=round(1 / seconds, 3),
            seconds=[round(s, 3) for s in entry["seconds"]],
        )
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prw", type=Path, help="a folder in PRW's layout (frames/, annotations/)")
    parser.add_argument("--yolox", type=Path, help="a YOLOX-style ONNX model (416 x 416 input)")
    parser.add_argument("--run", type=Path, help="a trained detector run (folder with model.pt)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument(
        "--coco", nargs="*", default=None, help="torchvision COCO detectors to time (default: all)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="1080x1920", help="speed frame HEIGHTxWIDTH")
    parser.add_argument("--out", type=Path, default=benchutil.RESULTS / "person_detectors.json")
    args = parser.parse_args()
    for path, what in ((args.prw, "--prw"), (args.yolox, "--yolox"), (args.run, "--run")):
        if path is not None and not path.exists():
            parser.error(f"{what} {path}: not found")

    import torch

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = benchutil.machine_info()
    result: dict[str, Any] = {"machine": info, "accuracy": None, "speed": None}
    if args.prw:
        frames = read_frames(args.prw, args.frames)
        heights = np.concatenate([t[:, 3] - t[:, 1] for _, _, t in frames])
        small = float(np.quantile(heights, 1 / 3))
        rows = []
        for name, detector in detectors_for_accuracy(args).items():
            rows.append({"detector": name, **accuracy(detector, frames, small)})
            print(f"{name}: recall {rows[-1]['recall']:.3f}", flush=True)
        result["accuracy"] = {
            "folder": str(args.prw),
            "frames": len(frames),
            "annotated": int(len(heights)),
            "small_height_px": round(small, 1),
            "rows": rows,
        }
        print(f"\n{len(frames)} frames, {len(heights)} annotated persons; small: <= {small:.0f} px")
        benchutil.print_table(
            rows,
            [
                ("detector", "detector"),
                ("recall", "recall"),
                ("recall_small", "recall small"),
                ("precision_lower_bound", "precision >="),
                ("boxes_per_frame", "boxes/frame"),
                ("seconds_per_frame", "s/frame"),
            ],
        )
    height, width = (int(v) for v in args.size.lower().split("x"))
    frame = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    result["speed"] = {
        "frame": f"{width}x{height}",
        "rounds": args.rounds,
        "threads": args.threads,
        "rows": speed_entries(args, frame),
    }
    print(
        f"\nspeed on one {width} x {height} frame, {args.threads} thread(s), median of "
        f"{args.rounds}"
    )
    benchutil.print_table(
        result["speed"]["rows"],
        [
            ("detector", "detector"),
            ("setting", "runtime"),
            ("ms_per_frame", "ms/frame"),
            ("peak_rss_mb", "peak RSS MB"),
        ],
    )
    result["machine"] = benchutil.finish_info(info, started)
    write_json(args.out, result)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
