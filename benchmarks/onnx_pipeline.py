"""The ONNX pipeline against the PyTorch pipeline it was exported from, side by side in one run.

    python benchmarks/onnx_pipeline.py --pipeline personsearch-demo/pipeline \
        --root personsearch-demo/world-small-seed0

Exports the PyTorch pipeline (`personsearch export onnx --pipeline`) unless --onnx names an
exported one, then, for each of the two, over the world's CUHK-SYSU-style test set:
- detects and embeds every test image (the work of indexing) and times it: images/s;
- scores search mAP / top-1 at gallery 100 and detection recall / AP (IoU 0.5, detections
  scored at least the pipeline's det_thresh) with the project's evaluator;
- indexes the first --index-images test images into a fresh gallery index and times that.
The two pipelines run alternately on the same machine with the same thread count, so their
ratio means something even where absolute times are noisy. Prints a table and writes JSON
(default benchmarks/results/onnx_pipeline.json). The check: every metric within --tolerance
points (default 0.2), else exit status 1.
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
    parser.add_argument("--pipeline", required=True, help="the PyTorch pipeline folder")
    parser.add_argument("--onnx", help="its ONNX export (default: exported into a temp folder)")
    parser.add_argument(
        "--root", required=True, help="a CUHK-SYSU-layout world (personsearch synth)"
    )
    parser.add_argument("--dataset", default="cuhk-sysu")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime")
    parser.add_argument("--index-images", type=int, default=100, help="images to index (timing)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images per detector call when scoring (default 1: torchvision pads "
        "a batch to its largest image, which shifts boxes near the padding; the "
        "ONNX graph takes one image at a time)",
    )
    parser.add_argument("--tolerance", type=float, default=0.2, help="points, for every metric")
    parser.add_argument(
        "--labels",
        nargs=2,
        default=["pytorch", "onnx"],
        metavar=("A", "B"),
        help="names of the two rows (e.g. onnx int8 when --pipeline is itself "
        "an ONNX pipeline and --onnx its int8 copy)",
    )
    parser.add_argument("--out", default="benchmarks/results/onnx_pipeline.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="onnx-pipeline-"))
    try:
        onnx_dir = Path(args.onnx) if args.onnx else _export(args.pipeline, work / "onnx")
        rows = {}
        first, second = args.labels
        for name, folder in ((first, Path(args.pipeline)), (second, onnx_dir)):
            print(f"[{name}] {folder}", flush=True)
            rows[name] = measure(folder, args, work / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = ("mAP", "top1", "recall", "ap")
    base, other = (rows[name] for name in args.labels)
    differences = {m: abs(other[m] - base[m]) for m in metrics}
    passed = all(d <= args.tolerance for d in differences.values())
    print(
        f"\n{'':<9}{'mAP':>7}{'top-1':>7}{'recall':>8}{'AP':>7}{'detect+embed img/s':>20}"
        f"{'index img/s':>13}"
    )
    for name, row in rows.items():
        print(
            f"{name:<9}{row['mAP']:>7.2f}{row['top1']:>7.2f}{row['recall']:>8.2f}{row['ap']:>7.2f}"
            f"{row['detect_embed_images_per_s']:>20.2f}{row['index_images_per_s']:>13.2f}"
        )
    print(
        f"largest difference {max(differences.values()):.3f} points "
        f"({'within' if passed else 'OVER'} {args.tolerance}); {args.labels[1]} / "
        f"{args.labels[0]} indexing speed "
        f"{other['index_images_per_s'] / base['index_images_per_s']:.2f}x"
    )
    document = {
        "format": "personsearch-onnx-pipeline/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "batch": args.batch,
        "index_images": args.index_images,
        "pipeline": str(args.pipeline),
        "root": str(args.root),
        "dataset": args.dataset,
        "rows": rows,
        "differences": differences,
        "tolerance": args.tolerance,
        "passed": passed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if passed else 1


def _export(pipeline: str, out: Path) -> Path:
    from personsearch.export.onnx import export_pipeline

    export_pipeline(pipeline, out)
    return out


def measure(folder: Path, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Detect + embed the test set, score search and detection, time indexing."""
    from personsearch.data.registry import load_scene_dataset, load_search_protocol
    from personsearch.evaluation.results_file import load_results
    from personsearch.evaluation.scene_detection import SceneDetections, score_detections
    from personsearch.evaluation.search import evaluate_search
    from personsearch.search.pipeline import load_pipeline, read_pipeline_spec
    from personsearch.search.pipeline_results import (
        detect_and_embed,
        protocol_scenes,
        write_search_results,
    )

    pipeline = load_pipeline(folder)
    _set_onnx_threads(pipeline, args.threads)
    det_thresh = float(read_pipeline_spec(folder).get("det_thresh", 0.5))
    protocol = load_search_protocol(args.dataset, args.root, gallery_size=100)
    scenes = protocol_scenes(load_scene_dataset(args.dataset, args.root).test, protocol)
    started = time.perf_counter()
    detections = detect_and_embed(
        pipeline.detector, pipeline.embedder, scenes, batch=args.batch, progress=False
    )
    seconds = time.perf_counter() - started
    work.mkdir(parents=True, exist_ok=True)
    results = load_results(
        write_search_results(
            detections, pipeline.embedder, scenes, protocol, work / "results.npz", progress=False
        )
    )
    search = evaluate_search(
        protocol, results.gallery_for(protocol.images, det_thresh), results.query_feats
    )
    flat = SceneDetections(
        image_names=tuple(s.name for s in scenes),
        det_image=np.concatenate(
            [np.full(len(detections[s.name][0]), i) for i, s in enumerate(scenes)]
        ).astype(np.int64),
        det_boxes=np.concatenate([detections[s.name][0] for s in scenes]),
        det_scores=np.concatenate([detections[s.name][1] for s in scenes]),
    )
    detection = score_detections(scenes, flat, det_thresh=det_thresh)
    index_rate = _index_rate(pipeline, scenes[: args.index_images], work)
    return {
        "mAP": 100 * search.mAP,
        "top1": 100 * search.top(1),
        "recall": 100 * detection.recall,
        "ap": 100 * detection.ap,
        "images": len(scenes),
        "detect_embed_seconds": seconds,
        "detect_embed_images_per_s": len(scenes) / seconds,
        "index_images_per_s": index_rate,
        "embedder": pipeline.embedder.fingerprint,
    }


def _index_rate(pipeline, scenes, work: Path) -> float:  # noqa: ANN001
    from personsearch.search.searcher import PersonSearcher

    gallery = work / "gallery"
    gallery.mkdir()
    for scene in scenes:
        (gallery / Path(scene.path).name).symlink_to(Path(scene.path).resolve())
    started = time.perf_counter()
    with PersonSearcher.open(work / "index", pipeline.detector, pipeline.embedder) as searcher:
        report = searcher.index_folder(gallery, progress=False)
    seconds = time.perf_counter() - started
    assert report.added == len(scenes), report.summary()
    return len(scenes) / seconds


def _set_onnx_threads(pipeline, threads: int) -> None:  # noqa: ANN001
    """ONNX Runtime sessions were opened with its default threads: reopen with `threads`."""
    from personsearch.search.onnx_detector import OnnxDetector
    from personsearch.search.onnx_embedder import OnnxEmbedder

    if isinstance(pipeline.detector, OnnxDetector):
        object.__setattr__(
            pipeline, "detector", OnnxDetector(pipeline.detector.config, threads=threads)
        )
    if isinstance(pipeline.embedder, OnnxEmbedder):
        object.__setattr__(
            pipeline, "embedder", OnnxEmbedder(pipeline.embedder.config, threads=threads)
        )


if __name__ == "__main__":
    raise SystemExit(main())
