"""CUHK03 reader (Li et al. 2014), new protocol of Zhong et al. (CVPR 2017): re-id on crops.

The layout most users have (the one torchreid expects):

    ROOT/
      images_labeled/    1_001_1_01.png ...   {pair}_{pid:03d}_{view}_{index:02d}.png
      images_detected/
      cuhk03_new_protocol_config_labeled.mat    (MATLAB v5) filelist, labels, camId,
      cuhk03_new_protocol_config_detected.mat    train_idx, query_idx, gallery_idx (1-based)
      cuhk03_release/cuhk-03.mat   optional: the original release (MATLAB v7.3, i.e. HDF5);
                                   `write_cuhk03_images` writes the two PNG folders from it

A variant ("labeled": hand-drawn boxes, "detected": DPM boxes) picks one protocol file and its
image folder. The new protocol has 767 training and 700 test identities; its queries are one
crop per test identity and camera view, and it is scored like Market-1501 (gallery crops of the
query's identity seen by the query's camera are dropped). A crop's camera is the protocol's
camId (the view, 1 or 2, of the person's camera pair); identities (`labels`) are unique across
pairs, so the same-camera rule needs nothing more. No image is opened here; every listed file
is checked to exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.mat import as_numbers, as_strings, load_mat, mat_variable, require_file
from personsearch.data.scenes import Crop, CropDataset
from personsearch.errors import ConfigError, DatasetError, PersonSearchError
from personsearch.io import atomic_path

VARIANTS = ("labeled", "detected")
DEFAULT_VARIANT = "labeled"
ROOT_HINT = (
    "the CUHK03 folder (holding images_labeled/, images_detected/ and "
    "cuhk03_new_protocol_config_labeled.mat / _detected.mat)"
)
RELEASE_MAT = "cuhk03_release/cuhk-03.mat"
PROTOCOL_KEYS = ("filelist", "labels", "camId", "train_idx", "query_idx", "gallery_idx")
SPLIT_KEYS = {"train": "train_idx", "query": "query_idx", "gallery": "gallery_idx"}
#: The release's new-protocol split (Zhong et al.): identities and images per split.
NEW_PROTOCOL_IDENTITIES = {"train": 767, "test": 700}
NEW_PROTOCOL_IMAGES = {
    "labeled": {"train": 7368, "query": 1400, "gallery": 5328},
    "detected": {"train": 7365, "query": 1400, "gallery": 5332},
}
#: Columns of one identity's row in cuhk-03.mat: 1-5 are camera view 1, 6-10 view 2.
IMAGES_PER_IDENTITY = 10
_NAME = re.compile(r"(\d+)_(\d+)_([12])_(\d+)\.png")


def protocol_file(variant: str) -> str:
    return f"cuhk03_new_protocol_config_{check_variant(variant)}.mat"


def image_folder(variant: str) -> str:
    return f"images_{check_variant(variant)}"


def check_variant(variant: str | None) -> str:
    """The variant, "labeled" when None or empty; ConfigError for anything else."""
    if not variant:
        return DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ConfigError(f"CUHK03 variant {variant!r}: choose labeled or detected")
    return variant


@dataclass(frozen=True)
class Cuhk03Protocol:
    """One new-protocol file: the file list with identity and camera per file, and the splits
    as 0-based indices into it."""

    path: Path
    filelist: tuple[str, ...]
    labels: np.ndarray  #: identity per file (int64)
    cameras: np.ndarray  #: camId per file (int64)
    splits: dict[str, np.ndarray]  #: "train" / "query" / "gallery" -> 0-based indices


def read_protocol(path: str | os.PathLike[str]) -> Cuhk03Protocol:
    """Read and check a cuhk03_new_protocol_config_*.mat file (DatasetError naming the problem)."""
    path = Path(path)
    mat = load_mat(path)
    values = {key: mat_variable(path, key, mat)[1] for key in PROTOCOL_KEYS}
    filelist = tuple(as_strings(values["filelist"], f"{path}: filelist"))
    size = len(filelist)
    if not size:
        raise DatasetError(f"{path}: filelist is empty")
    for i, name in enumerate(filelist):
        if not name or Path(name).name != name:
            raise DatasetError(
                f"{path}: filelist[{i + 1}] = {name!r} is not a plain file name "
                "(expected names such as 1_001_1_01.png)"
            )
    labels = _integers(path, "labels", values["labels"])
    cameras = _integers(path, "camId", values["camId"])
    for key, array in (("labels", labels), ("camId", cameras)):
        if len(array) != size:
            raise DatasetError(
                f"{path}: {key} has {len(array)} entries but filelist has {size} (one per file)"
            )
    bad = np.flatnonzero(labels < 1)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{path}: labels[{i + 1}] = {labels[i]} for {filelist[i]}: identities must be >= 1"
        )
    splits = {}
    for split, key in SPLIT_KEYS.items():
        indices = _integers(path, key, values[key])
        outside = np.flatnonzero((indices < 1) | (indices > size))
        if outside.size:
            i = int(outside[0])
            raise DatasetError(
                f"{path}: {key}[{i + 1}] = {indices[i]} is out of range: indices are 1-based "
                f"into filelist, 1..{size} ({outside.size} such indices)"
            )
        if not indices.size:
            raise DatasetError(f"{path}: {key} is empty")
        splits[split] = indices - 1
    return Cuhk03Protocol(path, filelist, labels, cameras, splits)


def _integers(path: Path, key: str, value: Any) -> np.ndarray:
    numbers = as_numbers(value, f"{path}: {key}")
    bad = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: {key}[{i + 1}] = {numbers[i]:g} is not an integer")
    return numbers.astype(np.int64)


def load_cuhk03(root: str | os.PathLike[str], variant: str | None = None) -> CropDataset:
    """Training crops, queries and gallery of the new protocol (protocol order)."""
    root = Path(root)
    variant = check_variant(variant)
    protocol = read_protocol(require_file(root, protocol_file(variant), ROOT_HINT))
    folder = root / image_folder(variant)
    if not folder.is_dir():
        message = f"{folder} not found: the {variant} crops go there as PNG files"
        if (root / RELEASE_MAT).is_file():
            message += (
                f"; write them once from {root / RELEASE_MAT} with "
                f"`personsearch prepare-cuhk03 --root {root}`"
            )
        else:
            message += f" (or put the release's {RELEASE_MAT} there and run prepare-cuhk03)"
        raise DatasetError(message)
    present = set(os.listdir(folder))
    used = np.unique(np.concatenate(list(protocol.splits.values())))
    missing = [protocol.filelist[i] for i in used if protocol.filelist[i] not in present]
    if missing:
        raise DatasetError(
            f"{folder / missing[0]} not found: {protocol.path.name} lists {len(missing)} files "
            f"that {folder} lacks"
        )
    crops = [
        Crop(path=folder / name, pid=int(pid), camera=int(camera))
        for name, pid, camera in zip(
            protocol.filelist, protocol.labels, protocol.cameras, strict=True
        )
    ]
    split = {name: tuple(crops[i] for i in indices) for name, indices in protocol.splits.items()}
    return CropDataset(f"cuhk03-{variant}", root, split["train"], split["query"], split["gallery"])


# --------------------------------------------------------------------------------------------
# what check-data reports beside the counts


def camera_pair(crop: Crop) -> int | None:
    """The camera pair (1-5) a crop's file name gives, None for other names."""
    match = _NAME.fullmatch(crop.path.name)
    return int(match.group(1)) if match else None


def protocol_report(
    dataset: CropDataset, variant: str | None = None
) -> tuple[list[str], list[str]]:
    """(lines to print, problems to warn about) for a loaded CUHK03 split.

    Compares the split with the release's new protocol (767 / 700 identities and its image
    counts), and checks that the test identities are not trained on, that no image is both a
    query and a gallery crop, and that each file name's view agrees with camId. (Queries without
    a gallery crop from the other view are reported for every crop dataset by check-data.)
    """
    variant = check_variant(variant)
    train_ids = {c.pid for c in dataset.train}
    test_ids = {c.pid for c in dataset.query} | {c.pid for c in dataset.gallery}
    crops = list({c.path: c for c in (*dataset.train, *dataset.query, *dataset.gallery)}.values())
    pairs = sorted({p for p in map(camera_pair, crops) if p is not None})
    lines = [
        f"new protocol: {len(train_ids)} training / {len(test_ids)} test identities "
        f"(the release: {NEW_PROTOCOL_IDENTITIES['train']} / {NEW_PROTOCOL_IDENTITIES['test']}); "
        f"camera pairs in the file names: {pairs or 'none'}"
    ]
    problems = []
    expected = NEW_PROTOCOL_IMAGES[variant]
    counts = {split: len(getattr(dataset, split)) for split in expected}
    if counts != expected or len(train_ids) != NEW_PROTOCOL_IDENTITIES["train"]:
        problems.append(
            "not the release's new protocol: "
            + ", ".join(
                f"{split} {counts[split]} images (release {expected[split]})" for split in expected
            )
        )
    shared = train_ids & test_ids
    if shared:
        problems.append(
            f"{len(shared)} identities are both trained on and tested, e.g. {min(shared)}"
        )
    both = {c.path for c in dataset.query} & {c.path for c in dataset.gallery}
    if both:
        problems.append(
            f"{len(both)} images are both queries and gallery crops, e.g. {min(both).name}"
        )
    mismatched = [
        c for c in crops if (m := _NAME.fullmatch(c.path.name)) and int(m.group(3)) != c.camera
    ]
    if mismatched:
        problems.append(
            f"{len(mismatched)} files' names give another view than camId, e.g. "
            f"{mismatched[0].path.name} with camId {mismatched[0].camera}"
        )
    return lines, problems


# --------------------------------------------------------------------------------------------
# the one-time conversion from the release's cuhk-03.mat


def write_cuhk03_images(
    mat_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    variants: Sequence[str] = VARIANTS,
    progress: bool = False,
) -> dict[str, int]:
    """Write images_<variant>/ PNG folders under `root` from the release's cuhk-03.mat.

    The file is MATLAB v7.3 (HDF5, read with h5py): each variant is a cell of 5 camera pairs,
    each an (identities x 10) cell of images; columns 1-5 are view 1, 6-10 view 2, and a missing
    image is an empty entry. HDF5 holds each image transposed, (3, W, H); it is written back as
    H x W RGB, named {pair}_{pid:03d}_{view}_{index:02d}.png as in the new protocol's file list.
    Files already there are kept (a stopped conversion resumes). Returns images per variant.
    """
    mat_path, root = Path(mat_path), Path(root)
    variants = [check_variant(v) for v in variants]
    h5py = _import_h5py()
    if not mat_path.is_file():
        raise DatasetError(f"{mat_path} not found: expected the release's cuhk-03.mat")
    try:
        handle = h5py.File(mat_path, "r")
    except OSError as error:
        raise DatasetError(
            f"cannot read {mat_path}: not an HDF5 (MATLAB v7.3) file, or truncated ({error})"
        ) from error
    written = {}
    with handle:
        for variant in variants:
            if variant not in handle:
                found = ", ".join(sorted(k for k in handle if not k.startswith("#"))) or "none"
                raise DatasetError(f"{mat_path} holds no {variant!r} cell (variables: {found})")
            written[variant] = _write_variant(
                handle, mat_path, variant, root / image_folder(variant), progress
            )
    return written


def _write_variant(handle: Any, mat_path: Path, variant: str, folder: Path, progress: bool) -> int:
    from PIL import Image
    from tqdm import tqdm

    pairs = _read(handle[variant], f"{mat_path}: {variant}").reshape(-1)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for p, pair_ref in enumerate(pairs, start=1):
        where = f"{mat_path}: {variant}, camera pair {p}"
        # (10, identities) on disk: MATLAB's (identities x 10) cell, transposed by HDF5
        cells = _dereference(handle, pair_ref, where).T
        if cells.ndim != 2 or cells.shape[1] != IMAGES_PER_IDENTITY:
            raise DatasetError(
                f"{where}: expected an identities x {IMAGES_PER_IDENTITY} cell, "
                f"found shape {cells.shape}"
            )
        rows = tqdm(
            range(cells.shape[0]), desc=f"{variant} pair {p}", unit="id", disable=not progress
        )
        for person in rows:
            found = 0
            for column in range(IMAGES_PER_IDENTITY):
                spot = f"{where}, identity {person + 1}, image {column + 1}"
                pixels = _image(handle, cells[person, column], spot)
                if pixels is None:
                    continue
                view = 1 if column < IMAGES_PER_IDENTITY // 2 else 2
                target = folder / f"{p}_{person + 1:03d}_{view}_{column + 1:02d}.png"
                found += 1
                if target.is_file():
                    continue
                with atomic_path(target) as tmp:
                    Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
            if not found:
                raise DatasetError(f"{where}, identity {person + 1}: no image in any column")
            count += found
    return count


def _read(node: Any, where: str) -> np.ndarray:
    """An HDF5 dataset's whole array."""
    try:
        return np.asarray(node[()])
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise DatasetError(f"{where}: cannot read the cell ({error})") from error


def _dereference(handle: Any, ref: Any, where: str) -> np.ndarray:
    """The array an HDF5 object reference points to."""
    try:
        node = handle[ref]
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise DatasetError(f"{where}: not a reference to an array ({error})") from error
    return _read(node, where)


def _image(handle: Any, ref: Any, where: str) -> np.ndarray | None:
    """One image as H x W x 3 uint8, or None for an empty cell."""
    try:
        node = handle[ref]
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise DatasetError(f"{where}: not a reference to an image ({error})") from error
    # MATLAB's [] is stored as a 2-element shape vector marked MATLAB_empty
    if node.attrs.get("MATLAB_empty") or node.ndim <= 1 or node.size == 0:
        return None
    pixels = _read(node, where)
    if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.dtype != np.uint8:
        raise DatasetError(
            f"{where}: expected a 3 x W x H uint8 image, found "
            f"{pixels.dtype} of shape {pixels.shape}"
        )
    return np.ascontiguousarray(pixels.T)


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as error:
        raise PersonSearchError(
            "reading cuhk-03.mat (MATLAB v7.3, an HDF5 file) needs h5py: "
            "pip install 'personsearch[cuhk03]' (or pip install h5py)"
        ) from error
    return h5py
