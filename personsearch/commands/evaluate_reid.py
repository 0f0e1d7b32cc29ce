"""`personsearch evaluate-reid --run RUNDIR`: re-id on crops (Market-1501 protocol) on demand."""

from __future__ import annotations

import argparse

COMMAND = "evaluate-reid"
HELP = "evaluate a trained re-id network on query/gallery crops (mAP, CMC)"
DESCRIPTION = """\
Re-id evaluation of a training run's model.pt on crops, Market-1501 protocol (gallery crops of
the query's identity in the query's camera are dropped; for scene datasets each test image
counts as one camera, so only the query's own image is dropped). By default the dataset and
root of the run's config are used; --dataset/--root evaluate on another one.

  personsearch evaluate-reid --run runs/market1501-reid
  personsearch evaluate-reid --run runs/cuhk-sysu-reid --dataset prw --root /data/prw
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="training run folder (holds model.pt)")
    parser.add_argument("--dataset", help="cuhk-sysu, prw, market1501 or synthetic")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", help="metrics JSON (default RUN/eval-reid-<dataset>.json)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from personsearch.config import load_config
    from personsearch.data.crops import CropImageDataset
    from personsearch.data.transforms import CropTransform
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.engine.reid_eval import evaluate_crops
    from personsearch.engine.reid_task import load_reid_model, reid_samples
    from personsearch.errors import ConfigError
    from personsearch.io import write_json

    run_dir = Path(args.run)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path} not found: is {run_dir} a training run folder?")
    overrides = [f"data.dataset={args.dataset}"] if args.dataset else []
    overrides += [f"data.root={args.root}"] if args.root else []
    config = load_config(config_path, overrides)
    device = resolve_device(args.device)
    model, meta = load_reid_model(run_dir, device)
    _, query, gallery = reid_samples(config)
    if not query:
        raise ConfigError(f"{config.data.dataset} at {config.data.root} has no query crops")
    height, width = meta["crop_size"]
    transform = CropTransform(height, width)
    metrics = evaluate_crops(
        model,
        CropImageDataset(query, transform, {}),
        CropImageDataset(gallery, transform, {}),
        args.batch_size,
        DistInfo(device=device),
        args.workers,
    )
    metrics.update(
        dataset=config.data.dataset, root=config.data.root, queries=len(query), gallery=len(gallery)
    )
    output = Path(args.output) if args.output else run_dir / f"eval-reid-{config.data.dataset}.json"
    write_json(output, metrics)
    for key, value in sorted(metrics.items()):
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"written: {output}")
    return 0
