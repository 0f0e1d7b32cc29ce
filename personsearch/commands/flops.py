"""`personsearch flops`: compute cost per person crop of every re-id model, beside the paper's."""

from __future__ import annotations

import argparse
import json

from personsearch.errors import ConfigError

COMMAND = "flops"
HELP = "GFLOPs (multiply-adds) per person crop of each re-id model, beside the paper's Table 4"
DESCRIPTION = """\
Builds each re-id model (random weights: the cost does not depend on them), runs it in eval mode
on one crop and counts the multiply-adds of its convolutions and linear layers (BatchNorm, ReLU
and pooling are not counted). The paper's Table 4 "FLOPs x 10^9" are multiply-adds too.

  personsearch flops                        # every model on ResNet-50, 256 x 128 crops
  personsearch flops --backbone mobilenet_v2 --models clsa,plain --json
"""

MODELS = ("plain", "pyramid", "clsa", "fpn", "mst")
PAPER_NAMES = {
    "plain": "ResNet-50",
    "pyramid": "In-Network Pyramid",
    "clsa": "CLSA",
    "fpn": "FPN",
    "mst": "MST (image pyramid)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default="resnet50",
        help="resnet50 | resnet18 | mobilenet_v2 | cifar_resnet110 (and 20, 32, "
        "44, 56; with --height 32 --width 32)",
    )
    parser.add_argument(
        "--models", default="all", help=f"comma-separated, from {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument("--height", type=int, default=256, help="crop height (default 256)")
    parser.add_argument("--width", type=int, default=128, help="crop width (default 128)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _chosen_models(text: str) -> list[str]:
    if text == "all":
        return list(MODELS)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in MODELS]
    if unknown or not chosen:
        raise ConfigError(f"--models: unknown {unknown}; choose from {', '.join(MODELS)} or all")
    return chosen


def measure(backbone: str, models: list[str], height: int, width: int) -> list[dict]:
    """One row per model: measured GFLOPs, the paper's where comparable, embedding size."""
    from personsearch.models.flops import PAPER_TABLE4_GFLOPS, gflops
    from personsearch.models.reid import ReidConfig, ReidModel

    comparable = backbone == "resnet50" and (height, width) == (256, 128)
    rows = []
    for head in models:
        # num_classes only sizes the classifiers, which eval mode (and so the count) skips.
        model = ReidModel(
            ReidConfig(num_classes=5532, head=head, backbone=backbone, pretrained=False)
        )
        rows.append(
            {
                "model": head,
                "paper_name": PAPER_NAMES[head],
                "levels": list(model.level_names),
                "embedding_dim": model.embedding_dim,
                "gflops": round(gflops(model, height, width), 4),
                "paper_gflops": PAPER_TABLE4_GFLOPS[head] if comparable else None,
            }
        )
    return rows


def _table(rows: list[dict], backbone: str, height: int, width: int) -> str:
    header = f"{'model':<8} {'Table 4 row':<20} {'dim':>5} {'GFLOPs':>8} {'paper':>7}  levels"
    lines = [f"backbone {backbone}, one {height} x {width} crop, multiply-adds x 1e9", header]
    for row in rows:
        paper = f"{row['paper_gflops']:.3f}" if row["paper_gflops"] is not None else "-"
        lines.append(
            f"{row['model']:<8} {row['paper_name']:<20} {row['embedding_dim']:>5} "
            f"{row['gflops']:>8.3f} {paper:>7}  {'-'.join(row['levels'])}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.height < 32 or args.width < 32:
        raise ConfigError("--height and --width must be at least 32 pixels (stride-32 backbones)")
    models = _chosen_models(args.models)
    rows = measure(args.backbone, models, args.height, args.width)
    if args.json:
        print(
            json.dumps(
                {"backbone": args.backbone, "crop": [args.height, args.width], "models": rows}
            )
        )
    else:
        print(_table(rows, args.backbone, args.height, args.width))
    return 0
