"""`personsearch detect --run RUNDIR --out FILE.npz`: a dataset's detections, as a results file."""

from __future__ import annotations

import argparse
from pathlib import Path

from personsearch.errors import ConfigError

COMMAND = "detect"
HELP = "run a trained detector over a dataset's scenes and save the boxes and scores (.npz)"
DESCRIPTION = """\
Detects persons in every scene of a split with a detector training run's model.pt and writes
the detections in the results-file layout of `personsearch evaluate` (image_names, det_image,
det_boxes in the original image's pixels, det_scores); the re-id network fills in the features.
Every test image is listed in image_names, with or without detections. Boxes scored below
--score-thresh are dropped, those scored at least it kept (default 0.05, so
`evaluate --det-thresh` can still choose).

  personsearch detect --run runs/synthetic-detector --out runs/synthetic-detector/test-dets.npz
  personsearch detect --run runs/cuhk-sysu-detector --root /data/cuhk-sysu --split train \\
      --out train-dets.npz
"""

SPLITS = ("test", "train", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", required=True, help="detector training run folder (holds model.pt)"
    )
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="detections file to write")
    parser.add_argument("--dataset", help="cuhk-sysu, prw or synthetic (default: the run's)")
    parser.add_argument("--root", help="dataset folder (default: the run's)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="scenes to detect (test)")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.05,
        help="keep detections scored at least this (default 0.05)",
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def resolve_run_data(run: Path, dataset: str | None, root: str | None) -> tuple[str, str]:
    """The dataset name and folder to use: the arguments, else the run's config.yaml."""
    from personsearch.config import load_config

    if dataset and root:
        return dataset, root
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"{config_path} not found: is {run} a training run folder? "
            "(or give both --dataset and --root)"
        )
    data = load_config(config_path).data
    return dataset or data.dataset, root or data.root


def run(args: argparse.Namespace) -> int:
    from personsearch.engine.detector_eval import detect_scenes
    from personsearch.engine.detector_task import load_scenes
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.models.saving import load_detector

    if not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh {args.score_thresh} must be in [0, 1]")
    if not args.out.endswith(".npz"):
        raise ConfigError(f"--out {args.out}: the detections file must end in .npz")
    dataset, root = resolve_run_data(Path(args.run), args.dataset, args.root)
    scenes_of = load_scenes(dataset, root)
    scenes = {
        "test": scenes_of.test,
        "train": scenes_of.train,
        "all": scenes_of.train + scenes_of.test,
    }[args.split]
    if not scenes:
        raise ConfigError(f"{dataset} at {root} has no {args.split} scenes")
    device = resolve_device(args.device)
    model, _ = load_detector(args.run, device)
    detections = detect_scenes(
        model,
        scenes,
        score_thresh=args.score_thresh,
        batch_size=args.batch_size,
        workers=args.workers,
        dist_info=DistInfo(device=device),
        progress=True,
    )
    path = detections.save(args.out)
    print(
        f"{len(detections.det_scores)} detections in {len(scenes)} {args.split} scenes "
        f"({dataset}) written to {path}"
    )
    return 0
