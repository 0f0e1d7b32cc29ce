"""`personsearch evaluate-reid`: re-id on crops (Market-1501 protocol) for a trained run or any
embedder, optionally per pyramid level and per query-to-gallery scale gap."""

from __future__ import annotations

import argparse
from typing import Any

from personsearch.errors import ConfigError
from personsearch.io import write_json

COMMAND = "evaluate-reid"
HELP = "evaluate a re-id network or any embedder on query/gallery crops (mAP, CMC)"
DESCRIPTION = """\
Re-id evaluation on crops, Market-1501 protocol (gallery crops of the query's identity in the
query's camera are dropped; for scene datasets each test image counts as one camera, so only the
query's own image is dropped).

What is evaluated (exactly one):
  --run RUN          a training run's model.pt; its config's dataset and root are used unless
                     --dataset/--root say otherwise
  --embedder NAME    colour (HSV stripe histograms), bands (12 mean colours down the body's
                     centre line), imagenet (ImageNet MobileNetV2, no re-id training) or
                     FILE.yaml (an ONNX embedder config); needs --dataset and --root

  --per-level        (--run only) each pyramid level alone, and their concatenation as deployed
  --by-scale         mAP and rank-1 per bin of the gallery-to-query crop height ratio
  --json             print the metrics as one JSON object instead of a table

  personsearch evaluate-reid --run runs/market1501-reid
  personsearch evaluate-reid --run runs/cuhk-sysu-reid --dataset prw --root /data/prw
  personsearch evaluate-reid --run runs/cuhk03-reid --variant detected
  personsearch evaluate-reid --run runs/synthetic-reid --per-level --by-scale
  personsearch evaluate-reid --embedder bands --dataset synthetic --root data/synthetic-small --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="training run folder (holds model.pt)")
    source.add_argument(
        "--embedder", metavar="colour|bands|imagenet|FILE.yaml", help="an embedder to evaluate"
    )
    parser.add_argument("--dataset", help="cuhk-sysu, prw, market1501, cuhk03 or synthetic")
    parser.add_argument(
        "--variant",
        choices=("labeled", "detected"),
        help="CUHK03 only: which crops (default: the run's, else labeled)",
    )
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--per-level", action="store_true", help="score each pyramid level alone")
    parser.add_argument("--by-scale", action="store_true", help="score per scale-gap bin")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="crop loaders (--run)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--output",
        help="metrics JSON (default with --run: RUN/eval-reid-<dataset>.json; with --embedder "
        "written only when given)",
    )


def run(args: argparse.Namespace) -> int:
    from personsearch.engine.distributed import resolve_device
    from personsearch.engine.reid_eval import crop_heights
    from personsearch.engine.reid_task import reid_samples

    _check_arguments(args)
    config = _config(args)
    device = resolve_device(args.device)
    _, query, gallery = reid_samples(config)
    if not query:
        raise ConfigError(f"{config.data.dataset} at {config.data.root} has no query crops")
    heights = (crop_heights(query), crop_heights(gallery)) if args.by_scale else None
    if args.run:
        metrics = _evaluate_run(args, config, device, query, gallery, heights)
    else:
        metrics = _evaluate_embedder(args, device, query, gallery, heights)
    metrics.update(
        dataset=config.data.dataset, root=config.data.root, queries=len(query), gallery=len(gallery)
    )
    name = config.data.dataset
    if config.data.variant:
        metrics["variant"] = config.data.variant
        name += f"-{config.data.variant}"
    _report(args, metrics, name)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """ConfigError for options that do not go together, before anything is read."""
    if args.per_level and not args.run:
        raise ConfigError("--per-level needs --run: only a trained pyramid net has levels")
    if args.embedder and not (args.dataset and args.root):
        raise ConfigError("--embedder needs --dataset and --root (the crops to evaluate on)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")


def _report(args: argparse.Namespace, metrics: dict[str, Any], name: str) -> None:
    """Write the metrics JSON (--output, else RUN/eval-reid-<name>.json with --run) and print
    them: one JSON object with --json (the written path then goes to stderr), else a table."""
    import json
    import sys
    from pathlib import Path

    output = Path(args.output) if args.output else None
    if output is None and args.run:
        output = Path(args.run) / f"eval-reid-{name}.json"
    if output is not None:
        write_json(output, metrics)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(format_metrics(metrics))
    if output is not None:
        print(f"written: {output}", file=sys.stderr if args.json else sys.stdout)


def _config(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from personsearch.config import load_config

    overrides = [f"data.dataset={args.dataset}"] if args.dataset else []
    overrides += [f"data.root={args.root}"] if args.root else []
    if args.variant:
        overrides.append(f"data.variant={args.variant}")
    elif args.dataset and args.dataset != "cuhk03":
        overrides.append("data.variant=")  # a CUHK03 run evaluated on another dataset
    if args.embedder:
        # only the data section matters: the shipped re-id config gives its defaults
        return load_config("synthetic-reid", overrides)
    run_dir = Path(args.run)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path} not found: is {run_dir} a training run folder?")
    return load_config(config_path, overrides)


def _evaluate_run(args, config, device, query, gallery, heights) -> dict[str, Any]:
    from pathlib import Path

    from personsearch.data.crops import CropImageDataset
    from personsearch.data.transforms import CropTransform
    from personsearch.engine.distributed import DistInfo
    from personsearch.engine.reid_eval import (
        LevelOutputs,
        evaluate_embeddings,
        evaluate_levels,
        extract_embeddings,
    )
    from personsearch.models.saving import load_reid_model

    model, meta = load_reid_model(Path(args.run), device)
    height, width = meta["crop_size"]
    transform = CropTransform(height, width)
    datasets = CropImageDataset(query, transform, {}), CropImageDataset(gallery, transform, {})
    dist = DistInfo(device=device)
    info = {"embedder": f"run:{args.run}", "head": model.config.head}
    if not args.per_level:
        query_emb, gallery_emb = (
            extract_embeddings(model, d, args.batch_size, dist, args.workers) for d in datasets
        )
        metrics = evaluate_embeddings(query_emb, gallery_emb, query, gallery, heights)
        return {**metrics, **info, "dim": int(query_emb.shape[1])}
    wrapped = LevelOutputs(model)
    query_out, gallery_out = (
        extract_embeddings(wrapped, d, args.batch_size, dist, args.workers) for d in datasets
    )
    levels = evaluate_levels(
        query_out, gallery_out, wrapped.level_names, wrapped.feature_dims, query, gallery, heights
    )
    # the top-level keys stay the deployed embedding's, as without --per-level
    concat = {k: v for k, v in levels["concat"].items() if k != "norm_share"}
    return {
        **concat,
        **info,
        "levels": levels,
        "level_names": list(wrapped.level_names),  # lowest first: JSON keys lose the order
        "top_level": wrapped.level_names[-1],
    }


def _evaluate_embedder(args, device, query, gallery, heights) -> dict[str, Any]:
    from personsearch.engine.reid_eval import (
        build_embedder,
        embed_query_gallery,
        evaluate_embeddings,
    )

    embedder = build_embedder(args.embedder, device)
    query_emb, gallery_emb = embed_query_gallery(
        embedder, query, gallery, args.batch_size, progress=not args.no_progress
    )
    metrics = evaluate_embeddings(query_emb, gallery_emb, query, gallery, heights)
    return {
        **metrics,
        "embedder": args.embedder,
        "fingerprint": embedder.fingerprint,
        "dim": int(embedder.dim),
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """The human-readable form: a row per level (or one row), then the scale-gap bins."""
    lines = [
        f"re-id on {metrics['dataset']}{' ' + metrics['variant'] if metrics.get('variant') else ''} "
        f"({metrics['root']}): {metrics['queries']} queries, "
        f"{metrics['gallery']} gallery crops, {metrics['valid_queries']:.0f} scored; "
        f"{metrics['embedder']} ({metrics['dim']}-d)"
    ]
    rows = metrics.get("levels") or {"all": metrics}
    top = metrics.get("top_level")
    lines.append(
        f"{'':<14}{'dim':>6}{'mAP %':>9}{'rank-1 %':>10}{'rank-5 %':>10}{'rank-10 %':>11}"
        + ("  share of |x|^2" if "levels" in metrics else "")
    )
    for name, row in rows.items():
        label = f"{name} (top)" if name == top else name
        share = f"{100 * row['norm_share']:>15.1f}%" if "levels" in metrics else ""
        lines.append(
            f"{label:<14}{row['dim']:>6}{100 * row['mAP']:>9.1f}{100 * row['rank1']:>10.1f}"
            f"{100 * row['rank5']:>10.1f}{100 * row['rank10']:>11.1f}{share}"
        )
    for name, row in rows.items():
        if "by_scale" in row:
            title = "" if name == "all" else f" ({name})"
            lines.append(f"by scale gap r = gallery / query crop height{title}:")
            lines.extend(_scale_table(row["by_scale"]))
    return "\n".join(lines)


def _scale_table(bins: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"  {'bin':<26}{'range':<17}{'queries':>8}{'pairs':>8}{'mAP %':>9}{'rank-1 %':>10}"]
    for key, row in bins.items():
        # an empty bin reports 0.0: show a dash rather than a score no query earned
        empty = not row.get("queries")
        score = ("-", "-") if empty else (f"{100 * row['mAP']:.1f}", f"{100 * row['rank1']:.1f}")
        lines.append(
            f"  {row.get('label') or key:<26}{row.get('range', ''):<17}{row['queries']:>8}"
            f"{row['pairs']:>8}{score[0]:>9}{score[1]:>10}"
        )
    return lines
