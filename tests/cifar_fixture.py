"""Tiny CIFAR-100 binary releases for tests: records in the release's exact byte layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RECORD_BYTES = 3074


def cifar_records(count: int, seed: int = 0, classes: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(N x 32 x 32 x 3 uint8 images, fine labels): each class a colour, plus noise, so a small
    network can learn them."""
    rng = np.random.default_rng(seed)
    fine = np.arange(count) % classes
    colours = np.random.default_rng(1234).integers(0, 256, size=(100, 3))
    noise = rng.normal(scale=20, size=(count, 32, 32, 3))
    images = np.clip(colours[fine][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, fine


def encode_records(images: np.ndarray, fine: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """The binary release's records: coarse byte, fine byte, then the R, G, B planes row-major."""
    coarse = fine // 5 if coarse is None else coarse
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([coarse[:, None], fine[:, None], planes], axis=1).astype(np.uint8)
    return records.tobytes()


def write_cifar100(
    root: Path, train: int = 40, test: int = 20, classes: int = 100, names: bool = True
) -> Path:
    """cifar-100-binary/ with train.bin, test.bin (and the label-name files)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train.bin", train, 0), ("test.bin", test, 1)):
        images, fine = cifar_records(count, seed, classes)
        (root / name).write_bytes(encode_records(images, fine))
    if names:
        (root / "fine_label_names.txt").write_text("".join(f"class{i}\n" for i in range(100)))
        (root / "coarse_label_names.txt").write_text("".join(f"super{i}\n" for i in range(20)))
    return root
