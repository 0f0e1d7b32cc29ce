"""CLSA against its baselines on the synthetic world: the paper's Table 4 question, on a CPU.

Trains the re-id net with each head (CLSA, plain, in-network pyramid without alignment) for
several seeds with the shipped `synthetic-reid` config, and reports crop re-id mAP / rank-1
(Market-1501 protocol on the test scenes' labelled boxes) as mean and spread.

    python experiments/reid_ablation.py --root data/synthetic-small --out runs/ablation
    python experiments/reid_ablation.py --heads clsa plain --seeds 0 1 2 --epochs 4
    python experiments/reid_ablation.py --heads clsa/level_ce_weight=1 clsa/detach_teacher=false

A head may carry model settings after slashes (`clsa/level_ce_weight=1`: CLSA with a
cross-entropy on every level too), to ablate one choice at a time.

Writes OUT/ablation.json and prints a Markdown table (the one in docs/models.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/synthetic-small"),
                        help="the synthetic world (generated if missing)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--heads", nargs="+", default=["clsa", "plain", "pyramid"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from personsearch.config import load_config
    from personsearch.engine.reid_task import train_reid

    rows = []
    for spec in args.heads:
        head, *settings = spec.split("/")
        for seed in args.seeds:
            run = args.out / f"{spec.replace('/', '-').replace('=', '')}-seed{seed}"
            metrics_file = run / "metrics.json"
            if not metrics_file.is_file() or "final" not in json.loads(metrics_file.read_text()):
                config = load_config("synthetic-reid", [
                    f"data.root={args.root}", f"run.out={run}", f"run.seed={seed}",
                    f"model.head={head}", f"optim.epochs={args.epochs}",
                    f"optim.milestones=[{max(1, args.epochs - 1)}]", "run.eval_period=0",
                    f"run.workers={args.workers}", "run.progress=false",
                    *(["model.levels=5"] if head == "plain" else []),  # plain pools res5 only
                    *(f"model.{setting}" for setting in settings),
                ])
                start = time.perf_counter()
                train_reid(config, resume=(run / "checkpoints" / "last.pt").is_file())
                print(f"{spec} seed {seed}: {time.perf_counter() - start:.0f} s")
            final = json.loads(metrics_file.read_text())["final"]
            rows.append({"head": spec, "seed": seed, "mAP": final["mAP"], "rank1": final["rank1"]})

    summary = {}
    for head in args.heads:
        maps = [r["mAP"] for r in rows if r["head"] == head]
        r1s = [r["rank1"] for r in rows if r["head"] == head]
        summary[head] = {
            "mAP_mean": statistics.mean(maps), "mAP_std": statistics.pstdev(maps),
            "rank1_mean": statistics.mean(r1s), "rank1_std": statistics.pstdev(r1s), "runs": len(maps),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"runs": rows, "summary": summary,
                                                        "epochs": args.epochs}, indent=2))
    print("| head | runs | mAP % (mean ± sd) | rank-1 % (mean ± sd) | per seed mAP % |")
    print("|---|---|---|---|---|")
    for head, s in summary.items():
        per_seed = ", ".join(f"{100 * r['mAP']:.1f}" for r in rows if r["head"] == head)
        print(f"| {head} | {s['runs']} | {100 * s['mAP_mean']:.1f} ± {100 * s['mAP_std']:.1f} | "
              f"{100 * s['rank1_mean']:.1f} ± {100 * s['rank1_std']:.1f} | {per_seed} |")


if __name__ == "__main__":
    main()
