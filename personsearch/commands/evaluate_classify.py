"""`personsearch evaluate-classify`: top-1 of a trained classification run on CIFAR-100's test set."""

from __future__ import annotations

import argparse
from typing import Any

from personsearch.errors import ConfigError
from personsearch.io import write_json

COMMAND = "evaluate-classify"
HELP = "top-1 accuracy of a `train classify` run on the CIFAR-100 test set"
DESCRIPTION = """\
Scores a classification run's model.pt on the test split of the CIFAR-100 binary release:
top-1 of the top level's classifier (top1), of the concatenated level features scored by the
stacked level classifiers (top1_concat), and of each pyramid level's own classifier. The
dataset folder is the run config's data.root unless --root says otherwise.

  personsearch evaluate-classify --run runs/cifar100-classify
  personsearch evaluate-classify --run runs/cifar100-classify --root /data/cifar-100-binary --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="training run folder (holds model.pt)")
    parser.add_argument("--root", help="the cifar-100-binary folder (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", help="metrics JSON (default RUN/eval-classify-<dataset>.json)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from personsearch.config import load_config
    from personsearch.data.cifar100 import CifarImageDataset, load_cifar100
    from personsearch.engine.classify_task import evaluate_classifier
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.models.saving import load_classifier

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    run_dir = Path(args.run)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path} not found: is {run_dir} a training run folder?")
    config = load_config(config_path, [f"data.root={args.root}"] if args.root else [])
    device = resolve_device(args.device)
    model, _ = load_classifier(run_dir, device)
    test = CifarImageDataset(load_cifar100(config.data.root).test)
    metrics: dict[str, Any] = evaluate_classifier(
        model, test, args.batch_size, DistInfo(device=device), args.workers
    )
    metrics.update(
        dataset=config.data.dataset,
        root=config.data.root,
        run=str(run_dir),
        head=model.config.head,
        backbone=model.config.backbone,
    )
    output = (
        Path(args.output) if args.output else run_dir / f"eval-classify-{config.data.dataset}.json"
    )
    write_json(output, metrics)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(format_metrics(metrics, model.level_names))
    print(f"written: {output}", file=sys.stderr if args.json else sys.stdout)
    return 0


def format_metrics(metrics: dict[str, Any], level_names: tuple[str, ...]) -> str:
    lines = [
        f"top-1 on {metrics['dataset']} ({metrics['root']}): {metrics['images']:.0f} test images; "
        f"{metrics['backbone']}, head {metrics['head']}",
        f"  top level ({level_names[-1]}): {100 * metrics['top1']:.2f} %",
        f"  concatenation of {len(level_names)} level(s): {100 * metrics['top1_concat']:.2f} %",
    ]
    for name in level_names if len(level_names) > 1 else ():
        lines.append(f"  level {name} alone: {100 * metrics[f'top1_{name}']:.2f} %")
    return "\n".join(lines)
