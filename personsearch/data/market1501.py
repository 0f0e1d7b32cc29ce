"""Market-1501 reader: person crops named `PPPP_cCsS_FFFFFF_BB.jpg` in three folders.

pid -1 marks junk crops (dropped at load); pid 0 marks distractors, kept in the gallery as
negatives (they are no identity, so they are left out of training and queries). Files other than
.jpg (the release carries Thumbs.db files) are ignored; a .jpg with another name is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from personsearch.data.mat import require_file
from personsearch.data.scenes import Crop, CropDataset
from personsearch.errors import DatasetError

ROOT_HINT = (
    "the unpacked Market-1501 folder (holding bounding_box_train/, bounding_box_test/, query/)"
)
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JUNK = -1
DISTRACTOR = 0
_NAME = re.compile(r"(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg")


def load_market1501(root: str | os.PathLike[str]) -> CropDataset:
    """Read the training crops, queries and gallery (sorted by file name); no image is opened."""
    root = Path(root)
    splits = {
        split: read_folder(require_file(root, folder, ROOT_HINT))
        for split, folder in FOLDERS.items()
    }
    return CropDataset(
        "market1501",
        root,
        train=tuple(c for c in splits["train"] if c.pid > DISTRACTOR),
        query=tuple(c for c in splits["query"] if c.pid > DISTRACTOR),
        gallery=tuple(c for c in splits["gallery"] if c.pid != JUNK),
    )


def parse_crop_name(path: Path) -> Crop:
    """A crop's identity and camera from its file name."""
    match = _NAME.fullmatch(path.name)
    if not match:
        raise DatasetError(f"{path}: file name is not of the form PPPP_cCsS_FFFFFF_BB.jpg")
    return Crop(path=path, pid=int(match.group(1)), camera=int(match.group(2)))


def read_folder(folder: Path) -> list[Crop]:
    """Every .jpg crop of a folder, junk included, sorted by name."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    crops = [
        parse_crop_name(path) for path in sorted(folder.iterdir()) if path.suffix.lower() == ".jpg"
    ]
    if not crops:
        raise DatasetError(f"{folder} holds no .jpg crops")
    return crops
