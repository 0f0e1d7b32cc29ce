"""Load benchmark of `personsearch serve` on 127.0.0.1: concurrent clients, a fixed number of
requests per scenario, bounded in time.

Builds a synthetic gallery index (ground-truth boxes, colour-histogram features: the baseline
model the server uses without --run), starts the real server command in a subprocess on a free
loopback port, and runs each scenario with --clients concurrent clients until --requests requests
are done (or --max-seconds pass). Reports requests per second, p50/p90/p99/max latency and the
error count per scenario; prints a table and writes benchmarks/results/serve_load.json.

Scenarios:
  search-upload   POST /api/search/upload: a 240 x 180 PNG probe + box (decode, embed, rank)
  search-indexed  POST /api/search/indexed: a random indexed image + one of its boxes
  thumbnail       GET /api/images/{id}/thumbnail: random images (rendered once, then cached)

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 20] [--requests 400]
        [--images 300] [--max-seconds 120]

Client and server share the machine, so on a small machine the numbers are a lower bound.

--memory: the server's memory under hostile load instead. Every client uploads a 131 KB PNG that
decodes to 6300 x 6300 pixels (just under the default 40-megapixel limit) with a box, all at
once; the server process's resident memory is read from /proc: before the load, its peak
(VmHWM), and 1 s and 10 s after the last answer. --before-src DIR runs the same load first
against a server started from another source tree (e.g. `git archive <commit> personsearch |
tar -x -C DIR`: the code before a change), so both lines come from one run. Each --serve-arg is
passed to the current server (e.g. --serve-arg=--decode-budget-mp=40):

    .venv/bin/python benchmarks/bench_serve_load.py --memory --clients 40 --requests 40 \
        [--before-src DIR] [--big-side 6300] [--serve-arg=...]

Writes benchmarks/results/serve_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic gallery helpers live with the tests

import httpx2  # noqa: E402
from serve_fixture import ServedGallery, build_served_gallery  # noqa: E402

from personsearch.io import write_json  # noqa: E402

SCENARIOS = ("search-upload", "search-indexed", "thumbnail")
DEFAULT_OUT = ROOT / "benchmarks/results/serve_load.json"
MEMORY_SETTLE_S = (1.0, 10.0)  # after-load RSS is read this long after the last answer
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    index_dir: Path, port: int, source: Path | None = None, extra: list[str] | None = None
) -> subprocess.Popen:
    """`personsearch serve` on 127.0.0.1:port; from the source tree `source` if given."""
    env = dict(os.environ)
    if source is not None:  # that tree's package shadows the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    command = [
        sys.executable,
        "-m",
        "personsearch",
        "serve",
        "--index",
        str(index_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(extra or []),
    ]
    # A file, not a pipe: a chatty server never blocks on it.
    log_path = Path(tempfile.gettempdir()) / f"personsearch-serve-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=source or ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"the server exited with status {server.returncode}:\n{output}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the server did not answer within {STARTUP_TIMEOUT_S:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def list_all_images(base_url: str) -> list[dict]:
    images: list[dict] = []
    while True:
        page = httpx2.get(f"{base_url}/api/images", params={"offset": len(images), "limit": 200})
        page.raise_for_status()
        images += page.json()["images"]
        if len(images) >= page.json()["total"]:
            return images


def request_makers(
    gallery: ServedGallery, images: list[dict], seed: int
) -> dict[str, Callable[[httpx2.AsyncClient], Awaitable[httpx2.Response]]]:
    """One coroutine factory per scenario: each call sends one request."""
    rng = random.Random(seed)
    probe = gallery.probe.read_bytes()
    probe_box = ",".join(f"{v:g}" for v in gallery.probe_box)
    with_persons = [im for im in images if im["persons"] > 0]
    boxes = {im.path.name: im.boxes for im in gallery.images}

    def search_upload(client: httpx2.AsyncClient) -> Awaitable[httpx2.Response]:
        return client.post(
            "/api/search/upload",
            files={"file": ("probe.png", probe, "image/png")},
            data={"box": probe_box, "top_k": "10"},
        )

    def search_indexed(client: httpx2.AsyncClient) -> Awaitable[httpx2.Response]:
        image = rng.choice(with_persons)
        box = boxes[image["name"]][rng.randrange(image["persons"])].tolist()
        body = {"image_id": image["id"], "box": box, "top_k": 10}
        return client.post("/api/search/indexed", json=body)

    def thumbnail(client: httpx2.AsyncClient) -> Awaitable[httpx2.Response]:
        image = rng.choice(images)
        return client.get(f"/api/images/{image['id']}/thumbnail")

    return {
        "search-upload": search_upload,
        "search-indexed": search_indexed,
        "thumbnail": thumbnail,
    }


async def run_scenario(
    base_url: str,
    send: Callable[[httpx2.AsyncClient], Awaitable[httpx2.Response]],
    clients: int,
    requests: int,
    max_seconds: float,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx2.AsyncClient(
        base_url=base_url, limits=limits, timeout=request_timeout_s
    ) as client:

        async def one_client() -> None:
            nonlocal issued
            while issued < requests and time.monotonic() < deadline:
                issued += 1  # no await between the check and this: asyncio tasks don't race
                started = time.perf_counter()
                try:
                    response = await send(client)
                    response.read()
                    failed = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx2.HTTPError as error:
                    failed = type(error).__name__
                latencies.append(time.perf_counter() - started)
                if failed:
                    errors[failed] = errors.get(failed, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started

    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
        "stopped_by_time_limit": len(latencies) < requests,
    }


def big_png(side: int) -> tuple[bytes, str]:
    """A side x side PNG of a plain background and one red figure (about 131 KB at 6300), and
    a box around the figure."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (128, 128, 128))
    x1, y1, x2, y2 = side * 10 // 21, side * 8 // 21, side * 11 // 21, side * 11 // 21
    ImageDraw.Draw(image).rectangle((x1, y1, x2, y2), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue(), f"{x1},{y1},{x2},{y2}"


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MB
    return found


def memory_run(
    gallery: ServedGallery,
    png: bytes,
    box: str,
    args: argparse.Namespace,
    source: Path | None,
    extra: list[str],
) -> dict:
    """One server, one burst of large uploads, its memory before, at peak and after."""
    port = free_port()
    server = start_server(gallery.index_dir, port, source, extra)
    base_url = f"http://127.0.0.1:{port}"

    def send(client: httpx2.AsyncClient) -> Awaitable[httpx2.Response]:
        return client.post(
            "/api/search/upload",
            files={"file": ("big.png", png, "image/png")},
            data={"box": box, "top_k": "10"},
        )

    try:
        idle = memory_mb(server.pid)["VmRSS"]
        load = asyncio.run(  # every answer is waited for: the load ends when the server is done
            run_scenario(
                base_url, send, args.clients, args.requests, args.max_seconds, args.max_seconds
            )
        )
        finished = time.monotonic()
        after = {}
        for settle in MEMORY_SETTLE_S:
            time.sleep(max(0.0, finished + settle - time.monotonic()))
            after[f"rss_{settle:g}s_after_mb"] = memory_mb(server.pid)["VmRSS"]
        peak = memory_mb(server.pid)["VmHWM"]
        healthy = httpx2.get(f"{base_url}/api/health", timeout=5).status_code == 200
    finally:
        stop_server(server)
    return {
        "server": "before (--before-src)" if source is not None else args.label,
        "serve_args": extra,
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
        **after,
        "answers": {"HTTP 200": load["requests"] - load["errors"], **load["error_kinds"]},
        "wall_s": load["wall_s"],
        "p50_ms": load["p50_ms"],
        "max_ms": load["max_ms"],
        "healthy_after": healthy,
    }


def memory_main(args: argparse.Namespace) -> int:
    png, box = big_png(args.big_side)
    with tempfile.TemporaryDirectory(prefix="personsearch-memory-") as tmp:
        gallery = build_served_gallery(Path(tmp), n_images=args.images, seed=0)
        runs = []
        if args.before_src is not None:
            runs.append(memory_run(gallery, png, box, args, args.before_src, []))
        runs.append(memory_run(gallery, png, box, args, None, args.serve_arg or []))
    print(
        f"\n{args.clients} concurrent uploads ({args.requests} in all) of a {len(png):,}-byte PNG "
        f"of {args.big_side} x {args.big_side} pixels, 127.0.0.1, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'server':<24} {'idle MB':>8} {'peak MB':>8} {'+1 s MB':>8} {'+10 s MB':>9} "
        f"{'wall s':>7}  answers"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        answers = ", ".join(f"{k}: {v}" for k, v in run["answers"].items() if v)
        print(
            f"{run['server']:<24} {run['rss_idle_mb']:>8.0f} {run['rss_peak_mb']:>8.0f} "
            f"{run['rss_1s_after_mb']:>8.0f} {run['rss_10s_after_mb']:>9.0f} "
            f"{run['wall_s']:>7.1f}  {answers}"
        )
    out = args.out if args.out != DEFAULT_OUT else ROOT / "benchmarks/results/serve_memory.json"
    write_json(
        out,
        {
            "benchmark": "personsearch serve memory under concurrent large uploads, 127.0.0.1",
            "clients": args.clients,
            "requests": args.requests,
            "upload": {"bytes": len(png), "width": args.big_side, "height": args.big_side},
            "gallery_images": args.images,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "runs": runs,
        },
    )
    print(f"wrote {out}")
    return 0 if all(run["healthy_after"] for run in runs) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("--requests", type=int, default=400, help="requests per scenario (400)")
    parser.add_argument("--images", type=int, default=300, help="gallery images (300)")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="time limit per scenario (120)"
    )
    parser.add_argument("--scenario", choices=SCENARIOS, action="append", help="(default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--memory", action="store_true", help="measure memory under large uploads instead"
    )
    parser.add_argument(
        "--before-src", type=Path, help="--memory: also run a server from this source tree"
    )
    parser.add_argument(
        "--big-side", type=int, default=6300, help="--memory: the upload's side in pixels (6300)"
    )
    parser.add_argument(
        "--serve-arg", action="append", help="--memory: an option for the current server"
    )
    parser.add_argument(
        "--label", default="current", help="--memory: the current server's name in the table"
    )
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.images < 3 or args.max_seconds <= 0:
        parser.error("--clients and --requests must be positive, --images at least 3")
    if args.big_side < 16:
        parser.error("--big-side must be at least 16")
    if args.memory:
        return memory_main(args)
    scenarios = args.scenario or list(SCENARIOS)

    with tempfile.TemporaryDirectory(prefix="personsearch-load-") as tmp:
        started = time.perf_counter()
        gallery = build_served_gallery(Path(tmp), n_images=args.images, seed=0)
        print(f"built a {args.images}-image index in {time.perf_counter() - started:.1f} s")
        port = free_port()
        server = start_server(gallery.index_dir, port)
        base_url = f"http://127.0.0.1:{port}"
        try:
            images = list_all_images(base_url)
            makers = request_makers(gallery, images, seed=0)
            results = {}
            for name in scenarios:
                results[name] = asyncio.run(
                    run_scenario(
                        base_url, makers[name], args.clients, args.requests, args.max_seconds
                    )
                )
        finally:
            stop_server(server)

    header = f"{'scenario':<16} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(f"\n{args.clients} concurrent clients, 127.0.0.1, {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<16} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>8.1f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}"
        )
    write_json(
        args.out,
        {
            "benchmark": "personsearch serve under concurrent load on 127.0.0.1",
            "clients": args.clients,
            "requests_per_scenario": args.requests,
            "gallery_images": args.images,
            "gallery_persons": sum(len(im.boxes) for im in gallery.images),
            "model": "color-hist-v1 (baseline)",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "scenarios": results,
        },
    )
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
