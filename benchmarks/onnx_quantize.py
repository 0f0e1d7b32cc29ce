"""Does int8 quantisation pay for the ONNX re-id net and detector on this CPU? Measured side by side.

    python benchmarks/onnx_quantize.py --onnx personsearch-demo/pipeline-onnx \
        --root personsearch-demo/world-small-seed0

For each model of an exported ONNX pipeline (`personsearch export onnx --pipeline`), writes
ONNX Runtime's int8 variants into a temp folder:
- dynamic: weights int8, activations quantised on the fly (`quantize_dynamic`);
- static: QDQ weights and activations, calibrated on crops / scenes of the world's training
  images (`quantize_static`, MinMax).
Then times each variant against the fp32 model on the same inputs, alternating rounds, and
reports the speed-up and the largest feature / score difference. With --pipeline-out DIR it also
writes the static variant as a whole pipeline (calibrated on up to 64 of the world's training
scenes and the persons the fp32 detector finds in them), for `benchmarks/onnx_pipeline.py
--pipeline ONNX --onnx DIR --labels onnx onnx-int8` to score its search mAP. The project ships a quantised
model only if it is at least --min-speedup (1.5x) faster with search mAP within 1 point; a
variant that is not that fast, or whose outputs are far from fp32's (features at cosine < 0.95,
detections off by more than 10 %), stops here. Prints a
table and writes JSON (default benchmarks/results/onnx_quantize.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="an exported ONNX pipeline folder")
    parser.add_argument("--root", required=True, help="the synthetic world (calibration, inputs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crops", type=int, default=256, help="crops per timing round")
    parser.add_argument("--scenes", type=int, default=12, help="scenes per timing round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-speedup", type=float, default=1.5)
    parser.add_argument("--out", default="benchmarks/results/onnx_quantize.json")
    parser.add_argument(
        "--pipeline-out",
        metavar="DIR",
        help="also write the static int8 variant as a pipeline folder",
    )
    args = parser.parse_args(argv)

    from personsearch.data.images import read_rgb
    from personsearch.data.registry import load_scene_dataset
    from personsearch.search.onnx_detector import OnnxDetector, read_detector_config
    from personsearch.search.onnx_embedder import OnnxEmbedder, read_embedder_config
    from personsearch.search.pipeline import read_pipeline_spec
    from personsearch.search.searcher import crop_box

    folder = Path(args.onnx)
    spec = read_pipeline_spec(folder)
    reid_config = read_embedder_config(folder / spec["reid"])
    det_config = read_detector_config(folder / spec["detector"])
    dataset = load_scene_dataset("cuhk-sysu", args.root)
    rng = np.random.default_rng(0)
    train = [dataset.train[i] for i in rng.choice(len(dataset.train), 32, replace=False)]
    test = dataset.test[: args.scenes]
    scenes = [read_rgb(s.path) for s in test]
    crops = [crop_box(read_rgb(s.path), box) for s in test for box in s.boxes]
    crops = (crops * (args.crops // max(len(crops), 1) + 1))[: args.crops]
    calibration_crops = [crop_box(read_rgb(s.path), box) for s in train for box in s.boxes][:128]
    calibration_scenes = [read_rgb(s.path) for s in train[:16]]

    work = Path(tempfile.mkdtemp(prefix="quantize-"))
    rows = []
    try:
        reid = OnnxEmbedder(reid_config, threads=args.threads)
        detector = OnnxDetector(det_config, threads=args.threads)
        reid_inputs = [reid_config, reid]
        for variant in ("dynamic", "static"):
            path = work / f"reid-{variant}.onnx"
            feed = [{reid._input.name: b} for b in _reid_batches(reid, calibration_crops)]
            error = _quantize(Path(reid_config.model), path, variant, feed)
            rows.append(_compare_embedder(reid_inputs, path, variant, crops, args, error))
        for variant in ("dynamic", "static"):
            path = work / f"detector-{variant}.onnx"
            feed = [
                {detector._input: detector.network_input(image)[0]} for image in calibration_scenes
            ]
            error = _quantize(Path(det_config.model), path, variant, feed)
            rows.append(_compare_detector(det_config, detector, path, variant, scenes, args, error))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'model':<10}{'variant':<9}{'fp32 s':>9}{'int8 s':>9}{'speed-up':>10}  difference")
    for row in rows:
        if row.get("error"):
            print(f"{row['model']:<10}{row['variant']:<9}  failed: {row['error']}")
            continue
        print(
            f"{row['model']:<10}{row['variant']:<9}{row['fp32_s']:>9.3f}{row['int8_s']:>9.3f}"
            f"{row['speedup']:>9.2f}x  {row['difference']}"
        )
    fast = [r for r in rows if not r.get("error") and r["speedup"] >= args.min_speedup]
    paying = [r for r in fast if _keeps_outputs(r)]
    if paying:
        verdict = (
            "faster with outputs kept: "
            + ", ".join(f"{r['model']} {r['variant']}" for r in paying)
            + " (measure search mAP before shipping)"
        )
    else:
        broken = [f"{r['model']} {r['variant']} ({r['difference']})" for r in fast]
        verdict = (
            f"no int8 variant is both >= {args.min_speedup:.1f}x faster and faithful: none is shipped"
            + (f"; fast but broken: {', '.join(broken)}" if broken else "")
        )
    print(verdict)
    document = {
        "format": "personsearch-onnx-quantize/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
        },
        "onnx": str(folder),
        "crops": args.crops,
        "scenes": args.scenes,
        "rounds": args.rounds,
        "min_speedup": args.min_speedup,
        "rows": rows,
        "verdict": verdict,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if args.pipeline_out:
        calibration = [read_rgb(s.path) for s in _spread(dataset.train, 64)]
        print(f"wrote {write_int8_pipeline(folder, Path(args.pipeline_out), calibration)}")
    return 0


def _spread(items, count: int) -> list:  # noqa: ANN001
    """`count` items spread evenly over `items`."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def write_int8_pipeline(folder: Path, out: Path, images: list[np.ndarray]) -> Path:
    """The ONNX pipeline `folder` with both models quantised (static QDQ, per-channel weights),
    calibrated on `images` (the detector) and the persons the fp32 detector finds in them (the
    re-id net); returns the new pipeline.yaml."""
    import dataclasses

    from personsearch.search.onnx_detector import (
        OnnxDetector,
        read_detector_config,
        write_detector_config,
    )
    from personsearch.search.onnx_embedder import (
        OnnxEmbedder,
        read_embedder_config,
        write_embedder_config,
    )
    from personsearch.search.pipeline import read_pipeline_spec, write_pipeline_spec
    from personsearch.search.searcher import crop_box

    spec = read_pipeline_spec(folder)
    det_config = read_detector_config(folder / spec["detector"])
    reid_config = read_embedder_config(folder / spec["reid"])
    detector, reid = OnnxDetector(det_config), OnnxEmbedder(reid_config)
    crops = [crop_box(image, box) for image in images for box in detector.detect(image)[0]]
    out.mkdir(parents=True, exist_ok=True)
    det_model, reid_model = out / "detector.int8.onnx", out / "reid.int8.onnx"
    for source, target, feeds in (
        (
            det_config.model,
            det_model,
            [{detector._input: detector.network_input(image)[0]} for image in images],
        ),
        (
            reid_config.model,
            reid_model,
            [{reid._input.name: batch} for batch in _reid_batches(reid, crops[:512])],
        ),
    ):
        error = _quantize(Path(source), target, "static", feeds)
        if error:
            raise SystemExit(f"cannot quantise {source}: {error}")
    det_yaml, reid_yaml = out / "detector.int8.onnx.yaml", out / "reid.int8.onnx.yaml"
    write_detector_config(det_yaml, dataclasses.replace(det_config, model=str(det_model)))
    write_embedder_config(reid_yaml, dataclasses.replace(reid_config, model=str(reid_model)))
    return write_pipeline_spec(out, det_yaml, reid_yaml, float(spec.get("det_thresh", 0.5)))


def _keeps_outputs(row: dict) -> bool:
    """Close enough to fp32 to be worth an mAP measurement: features with cosine >= 0.95 to
    fp32's, or detections within 10 % of fp32's count."""
    if row["model"] == "re-id":
        return row["min_cosine_to_fp32"] >= 0.95
    return abs(row["boxes_int8"] - row["boxes_fp32"]) <= 0.1 * max(row["boxes_fp32"], 1)


def _reid_batches(reid, crops):  # noqa: ANN001, ANN202
    from personsearch.data.preprocess import preprocess_crops

    c = reid.config
    for start in range(0, len(crops), 16):
        yield preprocess_crops(
            crops[start : start + 16],
            reid.height,
            reid.width,
            c.mean,
            c.std,
            c.pixel_scale,
            c.channel_order,
        )


def _quantize(source: Path, target: Path, variant: str, feeds: list[dict]) -> str | None:
    """Write the int8 model; the error text when ONNX Runtime cannot quantise it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):  # noqa: ANN202
            return next(self._feeds, None)

    try:
        prepared = target.with_suffix(".pre.onnx")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if variant == "dynamic":
            quantize_dynamic(
                str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True
            )
        else:
            quantize_static(
                str(prepared),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )  # per-tensor ruins MobileNetV2's depthwise convs
    except Exception as error:  # quantisation of an arbitrary graph fails in many ways
        return f"{type(error).__name__}: {str(error)[:200]}"
    return None


def _timed(function, rounds: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _compare_embedder(inputs, path: Path, variant: str, crops, args, error) -> dict:  # noqa: ANN001
    from dataclasses import replace

    from personsearch.search.onnx_embedder import OnnxEmbedder

    config, fp32 = inputs
    row = {"model": "re-id", "variant": variant}
    if error:
        return {**row, "error": error}
    try:
        int8 = OnnxEmbedder(replace(config, model=str(path)), threads=args.threads)
    except Exception as failure:  # an int8 graph ONNX Runtime cannot run on this CPU
        return {**row, "error": f"{type(failure).__name__}: {str(failure)[:200]}"}
    fp32_s, int8_s = [], []
    for _ in range(args.rounds):  # alternate, so load changes hit both alike
        fp32_s.append(_timed(lambda: fp32.embed_crops(crops), 1))
        int8_s.append(_timed(lambda: int8.embed_crops(crops), 1))
    a, b = fp32.embed_crops(crops), int8.embed_crops(crops)
    cosines = (a * b).sum(axis=1)
    cosine = float(cosines.min())
    return {
        **row,
        "fp32_s": min(fp32_s),
        "int8_s": min(int8_s),
        "speedup": min(fp32_s) / min(int8_s),
        "min_cosine_to_fp32": cosine,
        "mean_cosine_to_fp32": float(cosines.mean()),
        "difference": f"cosine to fp32 features: lowest {cosine:.3f}, mean "
        f"{float(cosines.mean()):.3f}",
    }


def _compare_detector(config, fp32, path: Path, variant: str, scenes, args, error) -> dict:  # noqa: ANN001
    from dataclasses import replace

    from personsearch.search.onnx_detector import OnnxDetector

    row = {"model": "detector", "variant": variant}
    if error:
        return {**row, "error": error}
    try:
        int8 = OnnxDetector(replace(config, model=str(path)), threads=args.threads)
    except Exception as failure:
        return {**row, "error": f"{type(failure).__name__}: {str(failure)[:200]}"}
    fp32_s, int8_s = [], []
    for _ in range(args.rounds):
        fp32_s.append(_timed(lambda: [fp32.detect(s) for s in scenes], 1))
        int8_s.append(_timed(lambda: [int8.detect(s) for s in scenes], 1))
    found_fp32 = sum(len(fp32.detect(s)[0]) for s in scenes)
    found_int8 = sum(len(int8.detect(s)[0]) for s in scenes)
    return {
        **row,
        "fp32_s": min(fp32_s),
        "int8_s": min(int8_s),
        "speedup": min(fp32_s) / min(int8_s),
        "boxes_fp32": found_fp32,
        "boxes_int8": found_int8,
        "difference": f"{found_int8} boxes vs {found_fp32} at the pipeline's threshold",
    }


if __name__ == "__main__":
    raise SystemExit(main())
