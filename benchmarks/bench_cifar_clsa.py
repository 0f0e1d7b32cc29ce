"""Plain vs CLSA on a small CIFAR ResNet and a CIFAR-like synthetic set, on the CPU, through the
real pipeline: records written in the CIFAR-100 binary format, `train_classify` with the shipped
cifar100-classify config and overrides (a shallower ResNet, a short schedule).

The set: 20 classes of oriented stripes (4 orientations x 5 frequencies) with random phase,
random colours (not class-informative), a random shift and pixel noise, 32 x 32. It is a check
that the code path learns and that the two heads can be compared, not a stand-in for CIFAR-100:
the paper's Table 8 figures need the real data, ResNet-110 and 64k iterations on a GPU.

    python benchmarks/bench_cifar_clsa.py --out /tmp/cifar_clsa.json
    python benchmarks/bench_cifar_clsa.py --backbone cifar_resnet20 --iterations 150 --seeds 0 1
    python benchmarks/bench_cifar_clsa.py --heads plain clsa clsa:kl_weight=0 pyramid

A head may carry model settings after a colon (`clsa:kl_weight=0,temperature=1`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 20
ORIENTATIONS = 4
FREQUENCIES = (1.5, 2.5, 3.5, 4.5, 5.5)  # stripe periods across the 32-pixel image


def stripes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N x 32 x 32 x 3 uint8 images and their classes (0..19)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=count)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        angle = np.pi * (label % ORIENTATIONS) / ORIENTATIONS + rng.normal(scale=0.08)
        frequency = FREQUENCIES[label // ORIENTATIONS] * rng.uniform(0.9, 1.1)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        low, high = rng.uniform(0, 255, size=(2, 3))
        picture = low + (high - low) * (wave[..., None] + 1) / 2
        picture = np.roll(picture, rng.integers(-4, 5, size=2), axis=(0, 1))
        picture += rng.normal(scale=25, size=picture.shape)
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images, labels


def write_bin(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([labels[:, None] // 5, labels[:, None], planes], axis=1)
    path.write_bytes(records.astype(np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="cifar_resnet20")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--heads",
        nargs="+",
        default=["plain", "clsa"],
        help="heads, each optionally with model settings: clsa:kl_weight=0",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from personsearch.config import load_config
    from personsearch.engine.classify_task import train_classify

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar-like-binary"
        root.mkdir()
        write_bin(root / "train.bin", *stripes(args.train, seed=1))
        write_bin(root / "test.bin", *stripes(args.test, seed=2))
        iterations = args.iterations
        for seed in args.seeds:
            for index, spec in enumerate(args.heads):
                head, _, settings = spec.partition(":")
                extra = [f"model.{item}" for item in settings.split(",") if item]
                started = time.perf_counter()
                config = load_config(
                    "cifar100-classify",
                    [
                        f"data.root={root}",
                        f"run.out={Path(tmp) / f'{index}-{head}-{seed}'}",
                        f"model.backbone={args.backbone}",
                        f"model.head={head}",
                        "model.levels=null",
                        *extra,
                        f"optim.batch_size={args.batch_size}",
                        f"optim.iterations={iterations}",
                        f"optim.milestones=[{int(iterations * 0.5)},{int(iterations * 0.75)}]",
                        f"optim.warmup_iterations={max(1, iterations // 20)}",
                        "optim.amp=false",
                        f"run.seed={seed}",
                        "run.workers=0",
                        "run.progress=false",
                        f"run.checkpoint_period={iterations}",
                        "run.log_period=50",
                        "run.device=cpu",
                    ],
                )
                summary = train_classify(config)
                final = summary["final"]
                row = {
                    "head": spec,
                    "seed": seed,
                    "seconds": time.perf_counter() - started,
                    **{k: v for k, v in final.items() if k.startswith("top1")},
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "backbone": args.backbone,
        "train": args.train,
        "test": args.test,
        "iterations": iterations,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
