"""The demo: the whole system on the built-in synthetic world, on a CPU, in minutes.

Steps (each cached in the output folder, so a second run, or a killed one, picks up where it was):
1. generate the synthetic world (CUHK-SYSU layout);
2. train the light detector (MobileNetV2 Faster R-CNN with the paper's three changes);
3. train a CLSA re-id net (MobileNetV2, pyramid 5-4-3, cross-level alignment);
4. index the test gallery with the trained pair (the same code as `personsearch index`);
5. evaluate what was indexed: detection recall/AP, search mAP/top-k per gallery size;
6. write one self-contained report.html.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.config import load_config
from personsearch.data.cuhk_sysu import load_cuhk_sysu, load_cuhk_sysu_protocol
from personsearch.data.synthetic import generate_world
from personsearch.errors import PersonSearchError
from personsearch.evaluation.results_file import load_results
from personsearch.evaluation.search_protocols import evaluate_protocols
from personsearch.io import write_json
from personsearch.report.demo_report import write_demo_report
from personsearch.search.index import GalleryIndex
from personsearch.search.pipeline import load_pipeline, write_pipeline_spec
from personsearch.search.pipeline_results import detections_from_index, write_search_results
from personsearch.search.searcher import PersonSearcher


@dataclass(frozen=True)
class DemoPlan:
    """How big each step is."""

    world: str  #: synthetic preset
    detector_overrides: tuple[str, ...]
    reid_overrides: tuple[str, ...]
    gallery_sizes: tuple[int | str, ...]
    examples: int = 6


PLANS = {
    # about 10 minutes on a 2-core CPU
    "full": DemoPlan(
        world="small",
        detector_overrides=(),  # the shipped synthetic-detector config: 600 iterations
        reid_overrides=("optim.epochs=12", "optim.milestones=[9]"),
        gallery_sizes=(50, 100, 500, "full"),
    ),
    # a first look in under 100 seconds (and what the test suite runs)
    "quick": DemoPlan(
        world="tiny",
        # lr 0.005 and clipped gradients: at lr 0.01 the classifier diverged on the tiny world
        # (loss 12 at step 200; nothing scored over 0.5). A step costs the same at 200 or 240
        # pixels: the sampled regions, not the pixels, set it, so fewer regions buy the time.
        detector_overrides=(
            "optim.iterations=240",
            "optim.milestones=[200]",
            "optim.warmup_iterations=30",
            "optim.lr=0.005",
            "optim.grad_clip=10",
            "model.min_size=240",
            "model.box_batch_size_per_image=32",
            "model.rpn_post_nms_top_n_train=128",
        ),
        reid_overrides=("optim.epochs=10", "optim.milestones=[8]", "optim.batch_size=32"),
        gallery_sizes=(50, 100, "full"),
        examples=4,
    ),
}


@dataclass
class DemoResult:
    out: Path
    report: Path
    index: Path
    pipeline: Path
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _step(timings: dict[str, float], name: str, log: Callable[[str], None]) -> Iterator[None]:
    """Log a step's start, time it into `timings`."""
    log(f"== {name}")
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 1)
    log(f"   {name}: {timings[name]:.0f} s")


def schedule_text(overrides: tuple[str, ...]) -> str:
    """'12 epochs, lr / 10 after epoch 9' from a plan's optim overrides (for the report)."""
    values = dict(item.partition("=")[::2] for item in overrides)
    epochs = values.get("optim.epochs", "?")
    steps = values.get("optim.milestones", "").strip("[]").replace(",", " and ")
    return f"{epochs} epochs" + (f", lr / 10 after epoch {steps}" if steps else "")


def _train(
    task: str,
    config_name: str,
    run_dir: Path,
    world: Path,
    overrides: tuple[str, ...],
    progress: bool,
    workers: int,
) -> Path:
    """Train (or resume, or reuse) a run; returns the run folder holding model.pt."""
    if (run_dir / "model.pt").is_file():
        return run_dir
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    config = load_config(
        config_name,
        [
            f"data.root={world}",
            f"run.out={run_dir}",
            f"run.progress={str(progress).lower()}",
            f"run.workers={workers}",
            "run.evaluate=false",  # the demo evaluates what it indexes, once, at the end
            *overrides,
        ],
    )
    if task == "detector":
        from personsearch.engine.detector_task import train_detector as train
    else:
        from personsearch.engine.reid_task import train_reid as train
    train(config, resume=resume)
    return run_dir


def run_demo(
    out: str | Path = "personsearch-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run every step of the demo into `out` and return where the report and index are."""
    import torch

    plan = PLANS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}

    world = out / f"world-{plan.world}-seed{seed}"
    with _step(timings, f"synthetic world ({plan.world})", log):
        if not (world / "annotation" / "Images.mat").is_file():
            generate_world(world, plan.world, seed=seed, progress=progress)
    dataset = load_cuhk_sysu(world)

    runs = out / ("runs-quick" if quick else "runs")
    with _step(timings, "train detector", log):
        detector_run = _train(
            "detector",
            "synthetic-detector",
            runs / "detector",
            world,
            plan.detector_overrides,
            progress,
            workers,
        )
    with _step(timings, "train re-id (CLSA)", log):
        reid_run = _train(
            "reid", "synthetic-reid", runs / "reid", world, plan.reid_overrides, progress, workers
        )

    pipeline_dir = out / ("pipeline-quick" if quick else "pipeline")
    write_pipeline_spec(pipeline_dir, detector_run, reid_run, det_thresh=0.5)
    pipeline = load_pipeline(pipeline_dir)

    index_dir = out / ("index-quick" if quick else "index")
    with (
        _step(timings, "index test gallery", log),
        PersonSearcher.open(
            index_dir, pipeline.detector, pipeline.embedder, info={"pipeline": str(pipeline_dir)}
        ) as searcher,
    ):
        searcher.index_paths([scene.path for scene in dataset.test], progress=progress)
        searcher.index.prepare()

    with _step(timings, "evaluate", log):
        index = GalleryIndex.open(index_dir, fingerprint=pipeline.embedder.fingerprint)
        detections = detections_from_index(index, dataset.test)
        index.close()
        protocols = {
            size: load_cuhk_sysu_protocol(world, size)
            for size in plan.gallery_sizes
            if size == "full"
            or (world / "annotation" / "test" / "train_test" / f"TestG{size}.mat").is_file()
        }
        results_path = write_search_results(
            detections,
            pipeline.embedder,
            dataset.test,
            protocols[100],
            out / "results.npz",
            progress=progress,
        )
        metrics = _evaluate(results_path, protocols, dataset.test, detections)
        write_json(out / "metrics.json", {**metrics, "timings_s": timings})

    with _step(timings, "report", log):
        report = write_demo_report(
            out / "report.html",
            metrics=metrics,
            timings=timings,
            plan_name="quick" if quick else "full",
            world=world,
            dataset=dataset,
            protocol=protocols[100],
            results_path=results_path,
            examples=plan.examples,
            reid_schedule=schedule_text(plan.reid_overrides),
        )
    write_json(out / "metrics.json", {**metrics, "timings_s": timings})
    return DemoResult(out, report, index_dir, pipeline_dir, metrics, timings)


def _evaluate(results_path: Path, protocols: dict, test_scenes, detections) -> dict[str, Any]:
    """Search mAP/top-k per gallery size (with the scale-gap bins at gallery 100 and full), and
    detection recall/AP, of the indexed detections."""
    rows = evaluate_protocols(
        load_results(results_path),
        protocols.items(),
        det_thresh=0.5,
        by_scale=(100, "full"),
        source=results_path,
    )
    return {
        "search": {str(row.size): _search_entry(row) for row in rows},
        "detection": _detection_metrics(test_scenes, detections),
    }


def _search_entry(row: Any) -> dict[str, Any]:
    """A gallery size's metrics for metrics.json and the report (by_scale: the report's chart)."""
    protocol = row.protocol
    images = (
        int(max(len(q.gallery) for q in protocol.queries))
        if protocol.unlisted == "none"
        else len(protocol.images) - 1
    )
    entry = {**row.result.summary(), "queries": len(protocol.queries), "images": images}
    if row.by_scale is not None:
        entry["by_scale"] = row.by_scale
    return entry


def _detection_metrics(test_scenes, detections) -> dict[str, Any]:
    """Detection recall and AP (all persons, and labelled ones) of the indexed detections."""
    from personsearch.evaluation.scene_detection import SceneDetections, score_detections

    names = tuple(scene.name for scene in test_scenes)
    flat = SceneDetections(
        image_names=names,
        det_image=np.concatenate(
            [np.full(len(detections[n][0]), i) for i, n in enumerate(names)]
        ).astype(np.int64),
        det_boxes=np.concatenate([detections[n][0] for n in names]),
        det_scores=np.concatenate([detections[n][1] for n in names]),
    )
    everyone = score_detections(test_scenes, flat, det_thresh=0.5)
    labeled = score_detections(test_scenes, flat, det_thresh=0.5, labeled_only=True)
    return {
        "recall": everyone.recall,
        "ap": everyone.ap,
        "labeled_recall": labeled.recall,
        "labeled_ap": labeled.ap,
        "pr_recall": everyone.recall_curve.tolist(),
        "pr_precision": everyone.precision_curve.tolist(),
        "detections_per_image": float(len(flat.det_scores) / max(len(names), 1)),
    }


def check_demo_outputs(result: DemoResult) -> None:
    """Raise if the demo's outputs are missing (used by the CLI and the tests)."""
    for path in (result.report, result.index / "index.sqlite", result.out / "metrics.json"):
        if not path.exists():
            raise PersonSearchError(f"demo output missing: {path}")
