"""Benchmark: the vectorised search evaluator against the plain reference loop, at CUHK-SYSU's
test shape (2,900 queries, 6,978 gallery images, about 6 detections each, 2048-dim features).

Runs both in the same process on the same synthetic inputs, checks the numbers are identical
(mAP to 1e-9, top-k exactly, per query), prints a table and writes
benchmarks/results/search_eval.json. The reference loop on the full gallery is timed on a subset
of queries and extrapolated (it would take minutes); the subset's per-query numbers are compared.

    .venv/bin/python benchmarks/bench_search_eval.py [--queries 2900] [--full-subset 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the one copy of the reference loop lives with the tests

from reference_eval import reference_search  # noqa: E402

from personsearch.data.scenes import QueryTask, SearchProtocol  # noqa: E402
from personsearch.evaluation.search import GalleryDetections, evaluate_search  # noqa: E402
from personsearch.io import write_json  # noqa: E402


def synthesize(num_queries: int, num_images: int, dim: int, seed: int = 0):
    """CUHK-SYSU-shaped inputs: every query person appears in 1-4 gallery images."""
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.poisson(6, num_images), 1, None)
    det_image = np.repeat(np.arange(num_images), counts)
    m = len(det_image)
    xy = rng.uniform(0, 500, (m, 2))
    wh = rng.uniform(20, 200, (m, 2)) * [0.4, 1.0]
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    scores = rng.uniform(0.2, 1.0, m).astype(np.float32)
    feats = rng.standard_normal((m, dim), dtype=np.float32)
    centres = rng.standard_normal((num_queries, dim), dtype=np.float32)
    query_feats = centres + rng.standard_normal((num_queries, dim), dtype=np.float32)

    names = tuple(f"s{g}.jpg" for g in range(num_images))
    tasks = {100: [], 50: []}
    for q in range(num_queries):
        own = int(rng.integers(num_images))
        holding = rng.choice(num_images, size=int(rng.integers(1, 5)), replace=False)
        holding = holding[holding != own]
        gts = []
        for g in holding:
            # the person is one of the image's detections' true boxes (slightly moved)
            d = int(rng.integers(counts[g])) + int(np.searchsorted(det_image, g))
            feats[d] = centres[q] + 1.5 * rng.standard_normal(dim, dtype=np.float32)
            gts.append(boxes[d] + rng.normal(0, 3, 4).astype(np.float32))
        for size in tasks:
            pool = rng.choice(num_images, size=size + 10, replace=False)
            pool = pool[~np.isin(pool, np.r_[holding, own])][: size - len(holding)]
            gallery = np.r_[holding, pool]
            gt = np.full((len(gallery), 4), np.nan, dtype=np.float32)
            gt[: len(holding)] = np.array(gts).reshape(-1, 4)
            perm = rng.permutation(len(gallery))
            tasks[size].append(QueryTask(names[own], boxes[0], q, -1, gallery[perm], gt[perm]))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query_feats /= np.linalg.norm(query_feats, axis=1, keepdims=True)
    g100 = SearchProtocol("synthetic/TestG100", names, tuple(tasks[100]))
    full = SearchProtocol("synthetic/full", names, tuple(tasks[50]), unlisted="all")
    return (det_image, boxes, scores, feats), query_feats, g100, full


def compare(result, reference, queries) -> dict:
    ap = np.array([r[0] for r in reference])
    hits = np.array([r[1] for r in reference])
    max_ap_diff = float(np.abs(result.ap[queries] - ap).max())
    same_hits = bool((result.hits[queries] == hits).all())
    if max_ap_diff > 1e-9 or not same_hits:
        raise SystemExit(f"MISMATCH: max AP difference {max_ap_diff}, top-k equal: {same_hits}")
    return {"max_ap_difference": max_ap_diff, "topk_identical": same_hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2900)
    parser.add_argument("--images", type=int, default=6978)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument(
        "--full-subset", type=int, default=100, help="reference queries timed on full"
    )
    parser.add_argument("--repeats", type=int, default=3, help="evaluator runs per protocol")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_eval.json"
    )
    args = parser.parse_args()

    t = time.perf_counter()
    flat, query_feats, g100, full = synthesize(args.queries, args.images, args.dim)
    print(
        f"synthesised {len(flat[0])} detections, {args.queries} queries "
        f"in {time.perf_counter() - t:.1f}s"
    )
    rows = []
    for protocol, subset in ((g100, None), (full, args.full_subset)):
        walls, cpus = [], []
        for _ in range(args.repeats):  # the evaluator is timed from the raw flat arrays
            t, c = time.perf_counter(), time.process_time()
            gallery = GalleryDetections.from_flat(*flat, len(protocol.images), det_thresh=0.5)
            result = evaluate_search(protocol, gallery, query_feats)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        queries = np.arange(len(protocol.queries))
        if subset is not None and subset < len(queries):
            queries = np.linspace(0, len(queries) - 1, subset).astype(int)
        t, c = time.perf_counter(), time.process_time()
        reference = reference_search(protocol, *flat, query_feats, queries=queries.tolist())
        scale = len(protocol.queries) / len(queries)
        slow, slow_cpu = (time.perf_counter() - t) * scale, (time.process_time() - c) * scale
        fast, fast_cpu = float(np.median(walls)), float(np.median(cpus))
        check = compare(result, reference, queries)
        rows.append(
            {
                "protocol": protocol.name,
                "queries": len(protocol.queries),
                "reference_queries_timed": len(queries),
                "reference_extrapolated": len(queries) < len(protocol.queries),
                "evaluator_wall_s_median": round(fast, 3),
                "evaluator_wall_s_runs": [round(w, 3) for w in walls],
                "evaluator_cpu_s_median": round(fast_cpu, 3),
                "reference_wall_s": round(slow, 2),
                "reference_cpu_s": round(slow_cpu, 2),
                "speedup_wall": round(slow / fast, 1),
                "speedup_cpu": round(slow_cpu / fast_cpu, 1),
                "mAP": result.mAP,
                "top1": result.top(1),
                **check,
            }
        )
    print(
        f"{'protocol':<20}{'evaluator s':>12}{'reference s':>13}{'speed-up':>10}"
        f"{'cpu speed-up':>14}{'mAP':>9}{'top-1':>8}"
    )
    for r in rows:
        star = "*" if r["reference_extrapolated"] else " "
        print(
            f"{r['protocol']:<20}{r['evaluator_wall_s_median']:>12.2f}{r['reference_wall_s']:>12.1f}"
            f"{star}{r['speedup_wall']:>10.1f}{r['speedup_cpu']:>14.1f}{r['mAP']:>9.4f}"
            f"{r['top1']:>8.4f}"
        )
    print(f"evaluator: median of {args.repeats} runs (wall clock; cpu = process time, all threads)")
    print("* extrapolated from the timed subset; numbers identical on every compared query")
    print(
        f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs"
    )
    write_json(
        args.out,
        {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
            },
            "shape": {
                "queries": args.queries,
                "images": args.images,
                "dim": args.dim,
                "detections": len(flat[0]),
            },
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
