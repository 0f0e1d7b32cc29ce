"""What every benchmark records beside its numbers: the machine, its load, memory, a table.

Shared by the bench_*.py scripts in this folder (run them from the repository root).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python/torch versions, and the load average when called."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": list(os.getloadavg()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def finish_info(info: dict[str, Any], started: float) -> dict[str, Any]:
    """Add the end-of-run load average and the wall time to `info`."""
    info["load_avg_end"] = list(os.getloadavg())
    info["wall_s"] = round(time.perf_counter() - started, 1)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux; 0 elsewhere)."""
    return _status_field("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory since the last `reset_peak_rss`, in MiB (Linux; 0 elsewhere)."""
    return _status_field("VmHWM")


def reset_peak_rss() -> bool:
    """Restart the peak-memory count at the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_field(name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def matmul_gflops(size: int = 2048, repeats: int = 8) -> float:
    """This machine's dense float32 matmul rate now (torch/MKL, all threads), 2 FLOPs per FMA."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b  # warm-up: thread pool and MKL's first-call set-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print `rows` as an aligned text table; columns are (key, header) pairs."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_format(row.get(key, "")) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
