"""Benchmark: person detection throughput at the default input size, side by side.

The paper's detector (C4 Faster R-CNN, personsearch.models.detector) on ResNet-50 and on the light
MobileNetV2 backbone (the synthetic-world config), each as built (eager) and prepared for CPU
inference (personsearch.models.inference: frozen BatchNorms folded into the convolutions,
channels-last) and exported to ONNX and run by ONNX Runtime (if installed), plus OpenCV's HOG people detector (no training) when OpenCV 4 is installed.
Input: a PRW-sized 1920 x 1080 frame, which the detector resizes to its default 600 (shorter
side) / 1000 (longer side at most), i.e. 1000 x 563. Random weights: the cost is that of the
trained model, since the RPN always keeps its 256 top proposals for the box head.

Entries are interleaved round by round; medians over rounds are reported, with GFLOPs per image
(2 per multiply-add, convolutions and linear layers) and the peak memory of each.

    .venv/bin/python benchmarks/bench_detection.py [--rounds 3] [--size 1080x1920]

Prints a table and writes benchmarks/results/detection.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks import benchutil  # noqa: E402
from personsearch.errors import PersonSearchError  # noqa: E402
from personsearch.io import write_json  # noqa: E402
from personsearch.models.detector import DetectorConfig, build_detector  # noqa: E402
from personsearch.models.inference import prepare_for_inference  # noqa: E402
from personsearch.search.detectors import HogPeopleDetector, hog_available  # noqa: E402

BACKBONES = {"resnet50": "resnet50", "light (mobilenet_v2)": "mobilenet_v2"}


def torch_runner(
    detector: torch.nn.Module, image: torch.Tensor, setting: str, workdir: Path
) -> Callable[[], Any]:
    if setting == "onnxruntime":
        import onnxruntime

        from personsearch.export.onnx import export_detector_onnx

        path = workdir / f"{id(detector)}.onnx"
        export_detector_onnx(detector, path, tuple(image.shape[1:]))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"image": image.numpy()}
        return lambda: session.run(None, feeds)
    if setting == "prepared":
        detector = prepare_for_inference(copy.deepcopy(detector))

    def run() -> Any:
        with torch.inference_mode():
            return detector([image])

    return run


def gflops_per_image(detector: torch.nn.Module, image: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        detector([image])
    return counter.get_total_flops() / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="1080x1920", help="input frame HEIGHTxWIDTH")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-hog", dest="hog", action="store_false")
    parser.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="skip the ONNX Runtime setting (exported with personsearch.export)",
    )
    parser.add_argument("--out", type=Path, default=benchutil.RESULTS / "detection.json")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = benchutil.machine_info()
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    image = torch.rand(3, height, width)
    settings = ["eager", "prepared"]
    if args.onnx:
        settings.append("onnxruntime")
    entries: list[dict[str, Any]] = []
    workdir = tempfile.TemporaryDirectory()
    for name, backbone in BACKBONES.items():
        detector = build_detector(DetectorConfig(backbone=backbone, pretrained=False)).eval()
        config = detector.config
        flops = gflops_per_image(detector, image)
        for setting in settings:
            benchutil.reset_peak_rss()
            try:
                run = torch_runner(detector, image, setting, Path(workdir.name))
            except PersonSearchError as error:  # e.g. an export that fails its parity check
                print(f"{name} {setting}: skipped: {error}")
                continue
            run()  # warm-up
            entries.append(
                {
                    "detector": name,
                    "setting": setting,
                    "run": run,
                    "gflops_per_image": round(flops, 1),
                    "input": f"{width}x{height} -> shorter side {config.min_size}, longer <= {config.max_size}",
                    "peak_rss_mb": round(benchutil.peak_rss_mb(), 1),
                    "seconds": [],
                }
            )
    if args.hog and hog_available():
        hog = HogPeopleDetector()
        frame = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        benchutil.reset_peak_rss()
        hog.detect(frame)
        entries.append(
            {
                "detector": "hog (opencv)",
                "setting": "opencv",
                "run": lambda: hog.detect(frame),
                "gflops_per_image": None,
                "input": f"{width}x{height} (full size, multi-scale)",
                "peak_rss_mb": round(benchutil.peak_rss_mb(), 1),
                "seconds": [],
            }
        )

    matmul = []
    for _ in range(args.rounds):
        matmul.append(benchutil.matmul_gflops())
        for entry in entries:
            entry["seconds"].append(benchutil.timed(entry["run"]))
    workdir.cleanup()
    for entry in entries:
        entry.pop("run")
        seconds = benchutil.median(entry["seconds"])
        entry.update(
            images_per_s=round(1 / seconds, 3),
            ms_per_image=round(1000 * seconds, 1),
            seconds=[round(s, 3) for s in entry["seconds"]],
        )
        if entry["gflops_per_image"]:
            entry["achieved_gflops_per_s"] = round(entry["gflops_per_image"] / seconds, 1)

    matmul_rate = benchutil.median(matmul)
    print(
        f"{width} x {height} frames, {info['torch_threads']} threads, {args.rounds} rounds; "
        f"float32 matmul {matmul_rate:.0f} GFLOP/s; load {info['load_avg_start']}"
    )
    benchutil.print_table(
        entries,
        [
            ("detector", "detector"),
            ("setting", "setting"),
            ("images_per_s", "images/s"),
            ("ms_per_image", "ms/image"),
            ("gflops_per_image", "GFLOP/image"),
            ("achieved_gflops_per_s", "GFLOP/s"),
            ("peak_rss_mb", "peak MiB"),
        ],
    )
    result = {
        "benchmark": "detection",
        "command": " ".join(["benchmarks/bench_detection.py", *sys.argv[1:]]),
        "frame": [height, width],
        "rounds": args.rounds,
        "matmul_gflops_per_s": round(matmul_rate, 1),
        "entries": entries,
        "machine": benchutil.finish_info(info, started),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
