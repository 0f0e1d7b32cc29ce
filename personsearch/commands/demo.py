"""`personsearch demo [--quick] [--out DIR]`: the whole system on the synthetic world."""

from __future__ import annotations

import argparse

COMMAND = "demo"
HELP = (
    "generate the synthetic world, train detector + CLSA re-id, index, evaluate, write report.html"
)
DESCRIPTION = """\
Runs the whole system on the built-in synthetic world, on the CPU, with no download:
generate the world, train the light detector and a CLSA re-id net, index the test gallery,
evaluate (detection recall/AP, search mAP/top-k per gallery size) and write report.html.
Every step is cached in --out: a second run (or one after an interruption) continues.
  personsearch demo            # about 9.5 minutes on 2 cores
  personsearch demo --quick    # about 2 minutes: a tiny world, short training
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="personsearch-demo", help="output folder (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="a first look in about 2 minutes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and the training")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import time

    from personsearch.demo import check_demo_outputs, run_demo

    start = time.perf_counter()
    result = run_demo(
        args.out,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        workers=args.workers,
    )
    check_demo_outputs(result)
    print()
    for size, values in result.metrics["search"].items():
        print(
            f"gallery {size:>5}: mAP {100 * values['mAP']:.1f}%  top-1 {100 * values['top1']:.1f}%"
        )
    det = result.metrics["detection"]
    print(f"detection: recall {100 * det['recall']:.1f}%  AP {100 * det['ap']:.1f}%")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    print(f"report: {result.report.resolve()}")
    print("search the indexed gallery yourself, e.g.:")
    print(
        f"  personsearch search --index {result.index} --pipeline {result.pipeline} "
        "--probe IMAGE --box x1,y1,x2,y2 --out results.html"
    )
    print(f"  personsearch serve --index {result.index} --pipeline {result.pipeline}")
    return 0
