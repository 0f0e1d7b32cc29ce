"""Benchmark: gallery search latency and recall, exact against approximate FAISS indexes.

For each gallery size: exact inner-product search (IndexFlatIP, the gallery index's "flat" kind),
IVF-Flat over an nprobe sweep and HNSW-Flat over an efSearch sweep (the "ivf" and "hnsw" kinds),
and the "ivfpq" kind exactly as the gallery index builds it (IVF lists of 4-bit PQ codes scanned
with SIMD, the top k * k_factor candidates re-ranked with the exact vectors) over an nprobe
sweep, with single-query latency (p50, p99), recall@10 against the exact top 10, build time and
the memory each index adds. The operating point of each approximate index is the cheapest setting
reaching the target recall.

Gallery features. `--data reid` (default): unit vectors of the real embedding size (CLSA, 1536)
with the structure re-id features have: persons are points of a low-dimensional latent space, each
gallery box a noisy view of one person, mapped into `--dim` dimensions by a fixed random linear
map and a ReLU (CLSA's levels end in ReLUs), then L2-normalised; queries are new views of gallery
persons. `--data random`: i.i.d. uniform unit vectors, the structureless worst case, where no
approximate index reaches high recall without scanning most of the gallery (reported, not
targeted).

The gallery is generated chunk by chunk from fixed seeds and streamed into one index at a time,
so the benchmark never holds more than one copy of the features (6.1 GB at 1M x 1536).

    .venv/bin/python benchmarks/bench_index.py                    # 10k and 100k
    .venv/bin/python benchmarks/bench_index.py --sizes 1000000 --indexes ivfpq    # the 1M figure

Prints a table and writes benchmarks/results/index.json (--out to change).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import benchutil  # noqa: E402
from personsearch.io import write_json  # noqa: E402
from personsearch.search.faiss_backends import (  # noqa: E402
    HNSW_EF_CONSTRUCTION,
    HNSW_NEIGHBORS,
    IVFPQ_K_FACTOR,
    empty_faiss_index,
    ivf_training_rows,
    ivfpq_nlist,
    ivfpq_search_params,
    ivfpq_training_set,
)

CHUNK = 50_000
K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256, 512)
PROBE_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1)  # of the IVF-PQ lists
APPROXIMATE = ("ivf-flat", "hnsw", "ivfpq")


class Gallery:
    """A reproducible synthetic gallery of `size` unit vectors, produced in chunks."""

    def __init__(
        self,
        size: int,
        dim: int,
        kind: str,
        seed: int = 0,
        latent: int = 64,
        boxes_per_person: float = 4.0,
        noise: float = 0.35,
    ) -> None:
        self.size, self.dim, self.kind, self.seed = size, dim, kind, seed
        rng = np.random.default_rng(seed)
        self.noise = noise
        self.persons = max(1, int(size / boxes_per_person))
        self.centres = rng.standard_normal((self.persons, latent), dtype=np.float32)
        self.projection = rng.standard_normal((latent, dim), dtype=np.float32) / math.sqrt(latent)

    def _make(self, person: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "random":
            vectors = rng.standard_normal((len(person), self.dim), dtype=np.float32)
        else:
            latent = self.centres[person]
            latent = latent + self.noise * rng.standard_normal(latent.shape, dtype=np.float32)
            vectors = np.maximum(latent @ self.projection, 0.0)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def chunks(self, rows: int | None = None) -> Iterator[np.ndarray]:
        """The gallery (or its first `rows` rows) in chunks, identical on every call."""
        rows = self.size if rows is None else min(rows, self.size)
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            rng = np.random.default_rng((self.seed, 1, start))
            yield self._make(rng.integers(0, self.persons, count), rng)

    def sample(self, count: int) -> np.ndarray:
        """`count` gallery rows spread over the whole gallery (for IVF training)."""
        stride = max(1, self.size // count)
        picked = [chunk[::stride] for chunk in self.chunks()]
        return np.ascontiguousarray(np.concatenate(picked)[:count])

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 2))
        return self._make(rng.integers(0, self.persons, count), rng)


def add_streaming(index: Any, gallery: Gallery) -> float:
    start = time.perf_counter()
    for chunk in gallery.chunks():
        index.add(chunk)
    return time.perf_counter() - start


SEARCH_THREADS = (
    0  # FAISS threads while timing single queries (0: as many as building); set in main
)


def latencies_ms(
    search: Callable[[np.ndarray], Any], queries: np.ndarray, budget_s: float
) -> list[float]:
    """Single-query latencies in ms (one search call per query), stopping after `budget_s`."""
    build_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREADS or build_threads)
    try:
        return _latencies_ms(search, queries, budget_s)
    finally:
        faiss.omp_set_num_threads(build_threads)


def _latencies_ms(
    search: Callable[[np.ndarray], Any], queries: np.ndarray, budget_s: float
) -> list[float]:
    search(queries[:1])  # warm-up
    times: list[float] = []
    started = time.perf_counter()
    for query in queries:
        times.append(1000 * benchutil.timed(lambda q=query: search(q[None, :])))
        if time.perf_counter() - started > budget_s and len(times) >= 10:
            break
    return times


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


def row(
    size: int, kind: str, param: str, lat: list[float], recall: float, **extra: Any
) -> dict[str, Any]:
    return {
        "size": size,
        "index": kind,
        "param": param,
        "p50_ms": round(benchutil.percentile(lat, 50), 3),
        "p99_ms": round(benchutil.percentile(lat, 99), 3),
        "latency_queries": len(lat),
        "recall_at_10": round(recall, 4),
        **extra,
    }


def bench_size(gallery: Gallery, args: argparse.Namespace) -> list[dict[str, Any]]:
    n, dim = gallery.size, gallery.dim
    queries = gallery.queries(args.queries)
    rows: list[dict[str, Any]] = []

    # exact: the ground truth and the flat index's latency
    rss = benchutil.rss_mb()
    flat = faiss.IndexFlatIP(dim)
    build = add_streaming(flat, gallery)
    memory = benchutil.rss_mb() - rss
    _, truth = flat.search(queries, K)
    lat = latencies_ms(lambda q, index=flat: index.search(q, K), queries, args.budget_s)
    rows.append(
        row(n, "flat (exact)", "-", lat, 1.0, build_s=round(build, 2), memory_mb=round(memory))
    )
    print_progress(rows[-1])
    del flat
    gc.collect()

    if "ivf-flat" in args.indexes:
        # IVF-Flat: k-means on a sample, then the gallery streamed in
        nlist = args.nlist or 2 ** round(math.log2(2 * math.sqrt(n)))
        rss = benchutil.rss_mb()
        start = time.perf_counter()
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = args.kmeans_iters
        ivf.train(gallery.sample(min(n, args.train_per_list * nlist)))
        train_s = time.perf_counter() - start
        add_s = add_streaming(ivf, gallery)
        memory = benchutil.rss_mb() - rss
        for nprobe in NPROBES:
            if nprobe > nlist:
                break
            ivf.nprobe = nprobe
            _, found = ivf.search(queries, K)
            recall = recall_at_k(found, truth)
            lat = latencies_ms(lambda q, index=ivf: index.search(q, K), queries, args.budget_s)
            rows.append(
                row(
                    n,
                    "ivf-flat",
                    f"nlist={nlist} nprobe={nprobe}",
                    lat,
                    recall,
                    build_s=round(train_s + add_s, 2),
                    train_s=round(train_s, 2),
                    memory_mb=round(memory),
                    nprobe=nprobe,
                    nlist=nlist,
                )
            )
            print_progress(rows[-1])
            if recall >= args.stop_recall:
                break
        del ivf, quantizer
        gc.collect()

    if "ivfpq" in args.indexes:
        rows += bench_ivfpq(gallery, queries, truth, args)

    if "hnsw" in args.indexes and n <= args.hnsw_max_size:
        rss = benchutil.rss_mb()
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        build = add_streaming(hnsw, gallery)
        memory = benchutil.rss_mb() - rss
        for ef in EF_SEARCHES:
            hnsw.hnsw.efSearch = ef
            _, found = hnsw.search(queries, K)
            recall = recall_at_k(found, truth)
            lat = latencies_ms(lambda q, index=hnsw: index.search(q, K), queries, args.budget_s)
            rows.append(
                row(
                    n,
                    "hnsw-flat",
                    f"M={HNSW_NEIGHBORS} efSearch={ef}",
                    lat,
                    recall,
                    build_s=round(build, 2),
                    memory_mb=round(memory),
                    ef_search=ef,
                )
            )
            print_progress(rows[-1])
            if recall >= args.stop_recall:
                break
        del hnsw
        gc.collect()
    return rows


def bench_ivfpq(
    gallery: Gallery, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The gallery index's "ivfpq" kind, built as it builds it: IVF over 4-bit PQ codes
    (fast scan), trained on its sample size, the top k * k_factor re-ranked exactly."""
    n, rows = gallery.size, []
    nlist = ivfpq_nlist(n)
    sample = ivf_training_rows(n, nlist)
    rss = benchutil.rss_mb()
    start = time.perf_counter()
    index = empty_faiss_index("ivfpq", gallery.dim, n)
    index.train(ivfpq_training_set(gallery.sample(n if sample is None else len(sample))))
    train_s = time.perf_counter() - start
    add_s = add_streaming(index, gallery)
    memory = benchutil.rss_mb() - rss
    spec = f"nlist={nlist} PQ{faiss.downcast_index(index.base_index).pq.M}x4fs"
    nprobes = sorted({max(1, round(f * nlist)) for f in PROBE_FRACTIONS})
    for nprobe in nprobes:
        for k_factor in args.k_factors:
            params, _ = ivfpq_search_params(index, nprobe, k_factor)
            _, found = index.search(queries, K, params=params)
            recall = recall_at_k(found, truth)
            lat = latencies_ms(
                lambda q, p=params, i=index: i.search(q, K, params=p), queries, args.budget_s
            )
            rows.append(
                row(
                    n,
                    "ivfpq",
                    f"{spec} nprobe={nprobe} k_factor={k_factor}",
                    lat,
                    recall,
                    build_s=round(train_s + add_s, 2),
                    train_s=round(train_s, 2),
                    memory_mb=round(memory),
                    nprobe=nprobe,
                    nlist=nlist,
                    k_factor=k_factor,
                )
            )
            print_progress(rows[-1])
        if max(r["recall_at_10"] for r in rows[-len(args.k_factors) :]) >= args.stop_recall:
            break
    del index
    gc.collect()
    return rows


def print_progress(entry: dict[str, Any]) -> None:
    print(
        f"  {entry['size']:>8} {entry['index']:<12} {entry['param']:<24} p50 {entry['p50_ms']:8.2f} ms"
        f"  p99 {entry['p99_ms']:8.2f} ms  recall@10 {entry['recall_at_10']:.3f}"
        f"  build {entry.get('build_s', 0):.1f} s",
        flush=True,
    )


def operating_points(rows: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per size and index: the fastest (by p50) setting whose recall reaches `target`."""
    chosen = []
    for key in sorted({(r["size"], r["index"]) for r in rows}):
        candidates = [
            r for r in rows if (r["size"], r["index"]) == key and r["recall_at_10"] >= target
        ]
        if candidates:
            chosen.append(min(candidates, key=lambda r: r["p50_ms"]))
        else:
            best = max(
                (r for r in rows if (r["size"], r["index"]) == key), key=lambda r: r["recall_at_10"]
            )
            chosen.append({**best, "param": best["param"] + " (target not reached)"})
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=1536, help="feature size (CLSA: 1536)")
    parser.add_argument("--data", choices=("reid", "random"), default="reid")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall (default 200)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=5.0,
        help="seconds of single-query timing per setting (at least 10 queries)",
    )
    parser.add_argument(
        "--nlist", type=int, default=0, help="IVF lists (default ~2 sqrt(N), a power of 2)"
    )
    parser.add_argument(
        "--train-per-list", type=int, default=40, help="IVF training vectors per list"
    )
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument(
        "--stop-recall", type=float, default=0.99, help="stop a sweep once recall@10 reaches this"
    )
    parser.add_argument(
        "--indexes",
        default=",".join(APPROXIMATE),
        help=f"approximate indexes to run, comma-separated (of {', '.join(APPROXIMATE)});"
        " exact search always runs (it is the ground truth)",
    )
    parser.add_argument(
        "--no-hnsw", action="store_true", help="same as leaving hnsw out of --indexes"
    )
    parser.add_argument(
        "--k-factors",
        default=str(IVFPQ_K_FACTOR),
        help=f"IVF-PQ re-ranking factors to sweep (default {IVFPQ_K_FACTOR}, the index's)",
    )
    parser.add_argument(
        "--hnsw-max-size",
        type=int,
        default=100_000,
        help="skip HNSW above this size (its build is slow on few cores)",
    )
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (default: all)")
    parser.add_argument(
        "--search-threads",
        type=int,
        default=0,
        help="FAISS threads while timing single queries (default: as --threads); 1 "
        "avoids OpenMP stalls when other processes load the cores",
    )
    parser.add_argument("--out", type=Path, default=benchutil.RESULTS / "index.json")
    args = parser.parse_args()
    args.indexes = {name.strip() for name in args.indexes.split(",") if name.strip()}
    if args.no_hnsw:
        args.indexes.discard("hnsw")
    if args.indexes - set(APPROXIMATE):
        parser.error(f"--indexes: unknown {sorted(args.indexes - set(APPROXIMATE))}")
    args.k_factors = [int(k) for k in args.k_factors.split(",") if k.strip()]

    started = time.perf_counter()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    global SEARCH_THREADS
    SEARCH_THREADS = args.search_threads
    info = benchutil.machine_info()
    info["faiss"] = faiss.__version__
    info["faiss_threads"] = faiss.omp_get_max_threads()
    info["faiss_search_threads"] = args.search_threads or info["faiss_threads"]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    benchutil.reset_peak_rss()
    for size in sizes:
        print(f"gallery of {size} boxes, {args.dim}-d, '{args.data}' features", flush=True)
        rows += bench_size(Gallery(size, args.dim, args.data), args)
    points = operating_points(rows, args.target_recall)
    print(
        f"\noperating points (fastest setting with recall@10 >= {args.target_recall}); "
        f"load {info['load_avg_start']}"
    )
    benchutil.print_table(
        points,
        [
            ("size", "boxes"),
            ("index", "index"),
            ("param", "setting"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("recall_at_10", "recall@10"),
            ("build_s", "build s"),
            ("memory_mb", "MiB"),
        ],
    )
    result = {
        "benchmark": "index",
        "command": " ".join(["benchmarks/bench_index.py", *sys.argv[1:]]),
        "data": args.data,
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "target_recall": args.target_recall,
        "operating_points": points,
        "rows": rows,
        "peak_rss_mb": round(benchutil.peak_rss_mb()),
        "machine": benchutil.finish_info(info, started),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
