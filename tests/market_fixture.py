"""Build a tiny Market-1501 folder with the release's file naming, for tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

CROP_SIZE = (64, 128)  # width, height, as in the release
DEFAULT_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000301_01.jpg",
        "0007_c3s3_015240_04.jpg",
        "-1_c1s1_000401_02.jpg",
    ],
    "query": ["0002_c3s1_000551_01.jpg", "0007_c1s1_001234_01.jpg"],
    "bounding_box_test": [
        "0002_c2s1_000801_02.jpg",
        "0000_c1s1_000151_01.jpg",
        "-1_c3s1_000026_01.jpg",
        "0007_c6s2_123456_03.jpg",
        "0007_c1s1_001300_02.jpg",
    ],
}


def write_market1501(root: Path, files: dict[str, list[str]] | None = None) -> Path:
    """Write small JPEG crops named as given (plus a Thumbs.db, as the release has)."""
    files = DEFAULT_FILES if files is None else files
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "Thumbs.db").write_bytes(b"\x00" * 16)
        for i, name in enumerate(names):
            Image.new("RGB", CROP_SIZE, (30 * i % 255, 120, 60)).save(root / folder / name)
    return root
