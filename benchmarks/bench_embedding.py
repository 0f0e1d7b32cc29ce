"""Benchmark: re-id embedding throughput, plain ResNet-50 against CLSA, side by side.

For each model (random weights: speed does not depend on them) and each execution setting, the
crops per second at one batch size, the cost per crop (GFLOPs, 2 per multiply-add, and the
paper's multiply-add count), the achieved GFLOP/s and its fraction of this machine's dense
float32 matmul rate, measured in the same rounds. Entries are interleaved round by round, so a
change of machine load hits all of them alike; medians over rounds are reported.

Settings:
  eager        model.eval(), torch.no_grad(), NCHW input (what a first script does)
  prepared     personsearch.models.inference.prepare_for_inference (BatchNorm folded into the
               convolutions, channels-last) under torch.inference_mode, channels-last input
  onnxruntime  the model exported with personsearch.export.onnx, run by ONNX Runtime (if installed)
  compiled     personsearch.models.inference.compile_for_inference: torch.compile of the prepared
               model with frozen weights (only with --compile: compiling takes a minute or two)

    .venv/bin/python benchmarks/bench_embedding.py [--batch 64] [--rounds 3] [--compile]

Prints a table and writes benchmarks/results/embedding.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import benchutil  # noqa: E402
from personsearch.io import write_json  # noqa: E402
from personsearch.models.flops import PAPER_TABLE4_GFLOPS, count_multiply_adds  # noqa: E402
from personsearch.models.inference import (  # noqa: E402
    compile_for_inference,
    prepare_for_inference,
)
from personsearch.models.reid import ReidConfig, ReidModel  # noqa: E402

MODELS = {"resnet50-plain": "plain", "clsa": "clsa"}
SETTINGS = ("eager", "prepared", "onnxruntime", "compiled")


def build_runner(
    model: torch.nn.Module, setting: str, batch: torch.Tensor, workdir: Path
) -> tuple[Callable[[], Any], float]:
    """A zero-argument function running one batch in `setting`, and its set-up seconds."""
    start = time.perf_counter()
    if setting == "eager":
        model = model.eval()

        def run() -> Any:
            with torch.no_grad():
                return model(batch)

    elif setting in ("prepared", "compiled"):
        if setting == "compiled":
            prepared = compile_for_inference(copy.deepcopy(model))
        else:
            prepared = prepare_for_inference(copy.deepcopy(model))
        images = batch.contiguous(memory_format=torch.channels_last)

        def run() -> Any:
            with torch.inference_mode():
                return prepared(images)

        if setting == "compiled":
            run()  # compiling happens on the first call: count it as set-up
    elif setting == "onnxruntime":
        import onnxruntime

        from personsearch.export.onnx import export_reid_onnx

        path = workdir / f"{id(model)}.onnx"
        export_reid_onnx(model, path, tuple(batch.shape[-2:]))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"images": batch.numpy()}

        def run() -> Any:
            return session.run(None, feeds)

    else:
        raise ValueError(setting)
    return run, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64, help="crops per batch (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per entry (default 3)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--settings",
        default="eager,prepared,onnxruntime",
        help=f"comma-separated from {', '.join(SETTINGS)}",
    )
    parser.add_argument("--compile", action="store_true", help="add the torch.compile setting")
    parser.add_argument("--out", type=Path, default=benchutil.RESULTS / "embedding.json")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.compile and "compiled" not in settings:
        settings.append("compiled")
    if "onnxruntime" in settings:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: skipping that setting")
            settings.remove("onnxruntime")
    info = benchutil.machine_info()
    torch.manual_seed(0)
    batch = torch.randn(args.batch, 3, args.height, args.width)

    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, head in MODELS.items():
            model = ReidModel(ReidConfig(num_classes=1000, head=head, pretrained=False)).eval()
            multiply_adds = count_multiply_adds(model, args.height, args.width)
            for setting in settings:
                benchutil.reset_peak_rss()
                rss_before = benchutil.rss_mb()
                run, setup_s = build_runner(model, setting, batch, Path(workdir))
                run()  # warm-up: allocator, thread pool, oneDNN kernel selection
                entries.append(
                    {
                        "model": name,
                        "head": head,
                        "setting": setting,
                        "run": run,
                        "setup_s": round(setup_s, 2),
                        "gmacs_per_crop": round(multiply_adds / 1e9, 4),
                        "gflops_per_crop": round(2 * multiply_adds / 1e9, 4),
                        "paper_gflops": PAPER_TABLE4_GFLOPS[head]
                        if (args.height, args.width) == (256, 128)
                        else None,
                        "rss_before_mb": round(rss_before, 1),
                        "peak_rss_mb": round(benchutil.peak_rss_mb(), 1),
                        "seconds": [],
                    }
                )

        matmul = []
        for _ in range(args.rounds):  # interleaved: every entry sees the same load drift
            matmul.append(benchutil.matmul_gflops())
            for entry in entries:
                entry["seconds"].append(benchutil.timed(entry["run"]))
        matmul.append(benchutil.matmul_gflops())

    matmul_rate = benchutil.median(matmul)
    rows = []
    for entry in entries:
        entry.pop("run")
        seconds = benchutil.median(entry["seconds"])
        crops_per_s = args.batch / seconds
        achieved = crops_per_s * entry["gflops_per_crop"]
        entry.update(
            crops_per_s=round(crops_per_s, 2),
            ms_per_crop=round(1000 * seconds / args.batch, 2),
            achieved_gflops_per_s=round(achieved, 1),
            fraction_of_matmul=round(achieved / matmul_rate, 3),
            seconds=[round(s, 3) for s in entry["seconds"]],
        )
        rows.append(entry)
    for setting in settings:  # CLSA's throughput relative to the baseline in the same setting
        by_model = {e["model"]: e for e in rows if e["setting"] == setting}
        ratio = by_model["clsa"]["crops_per_s"] / by_model["resnet50-plain"]["crops_per_s"]
        by_model["clsa"]["throughput_vs_plain"] = round(ratio, 3)

    print(
        f"batch {args.batch}, {args.height} x {args.width} crops, {info['torch_threads']} threads, "
        f"{args.rounds} rounds; float32 matmul {matmul_rate:.0f} GFLOP/s "
        f"(rounds: {', '.join(f'{m:.0f}' for m in matmul)}); load {info['load_avg_start']}"
    )
    for entry in rows:  # the 0.002 GMAC of CLSA's head shows at 4 decimals
        entry["gmac_text"] = f"{entry['gmacs_per_crop']:.4f}"
    benchutil.print_table(
        rows,
        [
            ("model", "model"),
            ("setting", "setting"),
            ("crops_per_s", "crops/s"),
            ("gflops_per_crop", "GFLOP/crop"),
            ("gmac_text", "GMAC/crop"),
            ("achieved_gflops_per_s", "GFLOP/s"),
            ("fraction_of_matmul", "of matmul"),
            ("throughput_vs_plain", "vs plain"),
            ("peak_rss_mb", "peak MiB"),
            ("setup_s", "setup s"),
        ],
    )
    for entry in rows:
        entry.pop("gmac_text")
    result = {
        "benchmark": "embedding",
        "command": " ".join(["benchmarks/bench_embedding.py", *sys.argv[1:]]),
        "batch": args.batch,
        "height": args.height,
        "width": args.width,
        "rounds": args.rounds,
        "matmul_gflops_per_s": round(matmul_rate, 1),
        "matmul_rounds": [round(m, 1) for m in matmul],
        "entries": rows,
        "machine": benchutil.finish_info(info, started),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
