"""Benchmark: Market-1501 re-id evaluation (CMC, mAP) against the plain reference loop, at
Market-1501's test shape (3,368 queries x 15,913 gallery crops, 751 identities, 6 cameras).

Both run in the same process on the same synthetic scores (float32 similarities with ties, as
features give). The reference loop is timed on --reference-queries evenly spaced queries and
extrapolated; those queries' AP must agree to 1e-12 and their first-hit ranks exactly. Prints a
table and writes benchmarks/results/reid_eval.json.

    .venv/bin/python benchmarks/bench_reid_eval.py [--repeats 3] [--reference-queries 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the one copy of the reference loop lives with the tests

from benchutil import RESULTS, finish_info, machine_info, median, print_table  # noqa: E402
from reference_eval import reference_reid  # noqa: E402

from personsearch.evaluation.reid import evaluate_reid  # noqa: E402
from personsearch.io import write_json  # noqa: E402


def synthesize(num_query: int, num_gallery: int, ids: int, dim: int, seed: int = 0):
    """Identity-structured features; scores are their float32 dot products."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids + 1, num_query)
    g_pids = rng.integers(-1, ids + 1, num_gallery)  # -1 junk, 0 distractors
    q_cams = rng.integers(1, 7, num_query)
    g_cams = rng.integers(1, 7, num_gallery)
    centres = rng.standard_normal((ids + 1, dim), dtype=np.float32)
    q = centres[q_pids] + 2 * rng.standard_normal((num_query, dim), dtype=np.float32)
    g = centres[np.clip(g_pids, 0, None)] + 2 * rng.standard_normal(
        (num_gallery, dim), dtype=np.float32
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    scores = np.round(q @ g.T, 4)  # 4 decimals: ties, as low-precision features produce
    return scores.astype(np.float32), q_pids, g_pids, q_cams, g_cams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "reid_eval.json")
    args = parser.parse_args()
    info, started = machine_info(), time.perf_counter()

    scores, q_pids, g_pids, q_cams, g_cams = synthesize(
        args.queries, args.gallery, args.ids, args.dim
    )
    walls = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = evaluate_reid(scores, q_pids, g_pids, q_cams, g_cams)
        walls.append(time.perf_counter() - t)
    subset = np.linspace(0, args.queries - 1, min(args.reference_queries, args.queries)).astype(int)
    t = time.perf_counter()
    # the reference ranks distances: negated similarities, exactly
    _, _, aps = reference_reid(-scores[subset], q_pids[subset], q_cams[subset], g_pids, g_cams)
    reference_s = (time.perf_counter() - t) * args.queries / len(subset)
    ours = result.ap[subset]
    compared = ours[~np.isnan(ours)]
    max_diff = float(np.abs(compared - np.array(aps)).max()) if len(aps) else 0.0
    if len(compared) != len(aps) or max_diff > 1e-12:
        raise SystemExit(
            f"MISMATCH: {len(compared)} vs {len(aps)} valid queries, max AP diff {max_diff}"
        )
    check = evaluate_reid(scores[subset], q_pids[subset], g_pids, q_cams[subset], g_cams)
    reference_cmc, _, _ = reference_reid(
        -scores[subset], q_pids[subset], q_cams[subset], g_pids, g_cams
    )
    if [check.rank1, check.rank5, check.rank10] != reference_cmc:
        raise SystemExit("MISMATCH in CMC on the compared queries")
    row = {
        "shape": f"{args.queries} x {args.gallery}",
        "evaluator_s": round(median(walls), 2),
        "evaluator_runs_s": [round(w, 2) for w in walls],
        "reference_s": round(reference_s, 1),
        "reference_queries_timed": len(subset),
        "speedup": round(reference_s / median(walls), 1),
        "mAP": round(result.mAP, 4),
        "rank1": round(result.rank1, 4),
        "max_ap_difference": max_diff,
    }
    print_table(
        [row],
        [
            ("shape", "queries x gallery"),
            ("evaluator_s", "evaluator s"),
            ("reference_s", "reference s*"),
            ("speedup", "speed-up"),
            ("mAP", "mAP"),
            ("rank1", "rank-1"),
        ],
    )
    print(
        f"evaluator: median of {args.repeats} runs; * reference timed on {len(subset)} queries "
        "and extrapolated, their AP and CMC identical to the evaluator's"
    )
    write_json(
        args.out,
        {"machine": finish_info(info, started), "command": " ".join(sys.argv), "rows": [row]},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
