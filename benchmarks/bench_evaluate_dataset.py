"""Benchmark: `personsearch evaluate --gallery-size all-sizes` on a CUHK-SYSU-format dataset,
and the evaluator against the plain reference loop at every gallery size.

Needs a dataset folder in CUHK-SYSU's layout; at CUHK-SYSU's size without the real data:

    .venv/bin/personsearch synth --out /tmp/synth-full --preset full      # about 4 minutes
    .venv/bin/python benchmarks/bench_evaluate_dataset.py --root /tmp/synth-full

It simulates a detector + re-id system's results file from the test set's ground truth (boxes
moved by a few percent, some scored under the 0.5 threshold, false positives; each identity one
random feature plus noise, as hard as --noise makes it), then:

1. runs the command itself in a fresh process, twice: imports, reading the .mat protocols
   (first parsed, then from the protocol cache) and the results file, every gallery size, the
   table and the plot (wall clock);
2. per gallery size, times reading the protocol (cached), the evaluator in this process, and the
   reference loop (tests/reference_eval.py) on --reference-queries evenly spaced queries,
   extrapolated to all; the compared queries' numbers must be identical (AP to 1e-9, top-k
   exactly), and the command's numbers must equal the in-process ones.

Prints a table and writes benchmarks/results/evaluate_dataset.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the one copy of the reference loop lives with the tests

from benchutil import RESULTS, finish_info, machine_info, print_table  # noqa: E402
from reference_eval import reference_search  # noqa: E402

from personsearch.data.cuhk_sysu import available_gallery_sizes  # noqa: E402
from personsearch.data.protocol_cache import CACHE_ENV  # noqa: E402
from personsearch.data.registry import load_scene_dataset, load_search_protocol  # noqa: E402
from personsearch.evaluation.results_file import load_results, save_results  # noqa: E402
from personsearch.evaluation.search import evaluate_search  # noqa: E402
from personsearch.io import write_json  # noqa: E402


def simulate_results(root: Path, out: Path, dim: int, noise: float, seed: int) -> dict:
    """Write a plausible system's results file for the dataset's test set; returns its shape."""
    rng = np.random.default_rng(seed)
    protocol = load_search_protocol("cuhk-sysu", root, "full")
    scenes = {scene.name: scene for scene in load_scene_dataset("cuhk-sysu", root).test}
    codes: dict[int, np.ndarray] = {}

    def code(pid: int) -> np.ndarray:
        if pid < 0:  # an unlabelled person or a false positive: a feature of its own
            return rng.standard_normal(dim, dtype=np.float32)
        if pid not in codes:
            codes[pid] = rng.standard_normal(dim, dtype=np.float32)
        return codes[pid]

    det_image, boxes, scores, feats = [], [], [], []
    for g, name in enumerate(protocol.images):
        scene = scenes[name]
        known = scene.size or tuple(scene.boxes[:, 2:].max(axis=0, initial=1.0))
        size = np.array(known, dtype=np.float32)
        for box, pid in zip(scene.boxes, scene.pids, strict=True):
            wh = box[2:] - box[:2]
            moved = box + rng.normal(0, 0.04, 4).astype(np.float32) * np.r_[wh, wh]
            boxes.append(np.clip(moved, 0, np.r_[size, size]))
            scores.append(rng.uniform(0.55, 1.0) if rng.random() > 0.05 else rng.uniform(0.1, 0.5))
            feats.append(code(int(pid)) + noise * rng.standard_normal(dim, dtype=np.float32))
            det_image.append(g)
        for _ in range(rng.poisson(1.0)):  # false positives
            wh = rng.uniform(0.05, 0.3, 2).astype(np.float32) * size
            xy = rng.uniform(0, 1, 2).astype(np.float32) * (size - wh)
            boxes.append(np.r_[xy, xy + wh])
            scores.append(rng.uniform(0.1, 0.8))
            feats.append(code(-1))
            det_image.append(g)
    query_feats = np.stack(
        [code(q.pid) + noise * rng.standard_normal(dim, dtype=np.float32) for q in protocol.queries]
    )
    feats_array = np.stack(feats)
    feats_array /= np.linalg.norm(feats_array, axis=1, keepdims=True)
    query_feats /= np.linalg.norm(query_feats, axis=1, keepdims=True)
    save_results(
        out,
        image_names=protocol.images,
        det_image=np.array(det_image),
        det_boxes=np.stack(boxes),
        det_scores=np.array(scores),
        det_feats=feats_array,
        query_feats=query_feats,
    )
    return {
        "images": len(protocol.images),
        "detections": len(det_image),
        "dim": dim,
        "queries": len(protocol.queries),
        "noise": noise,
        "file_mb": round(out.stat().st_size / 2**20, 1),
    }


def run_command(root: Path, results: Path, plot: Path, cache: Path) -> tuple[float, dict]:
    """`personsearch evaluate --gallery-size all-sizes --json` in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "personsearch",
        "evaluate",
        "--dataset",
        "cuhk-sysu",
        "--root",
        str(root),
        "--results",
        str(results),
        "--gallery-size",
        "all-sizes",
        "--plot",
        str(plot),
        "--json",
    ]
    env = {**os.environ, CACHE_ENV: str(cache)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"personsearch evaluate failed ({done.returncode}):\n{done.stderr}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="a CUHK-SYSU-format dataset folder"
    )
    parser.add_argument("--dim", type=int, default=2048, help="feature size (default 2048)")
    parser.add_argument(
        "--noise",
        type=float,
        default=3.5,
        help="feature noise relative to the identity signal (default 3.5)",
    )
    parser.add_argument(
        "--reference-queries",
        type=int,
        default=100,
        help="queries the reference loop is timed on per gallery size",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "evaluate_dataset.json")
    args = parser.parse_args()
    info, started = machine_info(), time.perf_counter()

    with tempfile.TemporaryDirectory() as scratch:
        results_path = Path(scratch) / "results.npz"
        t = time.perf_counter()
        shape = simulate_results(args.root, results_path, args.dim, args.noise, args.seed)
        print(
            f"simulated {shape['detections']} detections in {shape['images']} images, "
            f"{shape['queries']} queries ({shape['file_mb']} MB) in {time.perf_counter() - t:.0f} s"
        )
        # the command twice in fresh processes: parsing every .mat protocol (an empty protocol
        # cache), then reading the protocols back from the cache
        cache = Path(scratch) / "cache"
        os.environ[CACHE_ENV] = str(cache)  # this process's own reads below use it too
        walls = {}
        for state in ("cold", "warm"):
            walls[state], command_out = run_command(
                args.root, results_path, Path(scratch) / "plot.png", cache
            )
            print(
                f"personsearch evaluate --gallery-size all-sizes, {state} protocol cache: "
                f"{walls[state]:.1f} s in a fresh process"
            )

        results = load_results(results_path)
        flat = (results.det_image, results.det_boxes, results.det_scores, results.det_feats)
        by_size = {row["gallery_size"]: row for row in command_out["gallery_sizes"]}
        rows = []
        for size in available_gallery_sizes(args.root):
            t = time.perf_counter()
            protocol = load_search_protocol("cuhk-sysu", args.root, size)
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            gallery = results.gallery_for(protocol.images, 0.5)
            result = evaluate_search(protocol, gallery, results.query_feats)
            fast = time.perf_counter() - t
            queries = np.linspace(
                0, len(protocol.queries) - 1, min(args.reference_queries, len(protocol.queries))
            ).astype(int)
            t = time.perf_counter()
            reference = reference_search(
                protocol, *flat, results.query_feats, queries=queries.tolist()
            )
            slow = (time.perf_counter() - t) * len(protocol.queries) / len(queries)
            ap = np.array([r[0] for r in reference])
            hits = np.array([r[1] for r in reference])
            max_diff = float(np.abs(result.ap[queries] - ap).max())
            if max_diff > 1e-9 or not (result.hits[queries] == hits).all():
                raise SystemExit(f"MISMATCH at gallery {size}: max AP difference {max_diff}")
            command_row = by_size[size]
            if abs(command_row["mAP"] - result.mAP) > 1e-12 or command_row["top1"] != result.top(1):
                raise SystemExit(f"the command's numbers differ from the evaluator's at {size}")
            rows.append(
                {
                    "gallery_size": size,
                    "protocol_read_s": round(load_s, 2),
                    "evaluator_s": round(fast, 2),
                    "reference_s": round(slow, 1),
                    "reference_queries_timed": len(queries),
                    "speedup": round(slow / fast, 1),
                    "mAP": round(result.mAP, 4),
                    "top1": round(result.top(1), 4),
                    "max_ap_difference": max_diff,
                }
            )
    print_table(
        rows,
        [
            ("gallery_size", "gallery"),
            ("protocol_read_s", "read s"),
            ("evaluator_s", "evaluator s"),
            ("reference_s", "reference s*"),
            ("speedup", "speed-up"),
            ("mAP", "mAP"),
            ("top1", "top-1"),
        ],
    )
    print(
        "* the reference loop timed on evenly spaced queries and extrapolated; their numbers "
        "are identical to the evaluator's"
    )
    write_json(
        args.out,
        {
            "machine": finish_info(info, started),
            "command": " ".join(sys.argv),
            "dataset_root": str(args.root),
            "results_file": shape,
            "evaluate_all_sizes_command_wall_s": {k: round(v, 1) for k, v in walls.items()},
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
