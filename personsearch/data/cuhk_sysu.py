"""CUHK-SYSU reader: scenes from the release's annotation/*.mat files, and its search protocols.

Layout (see docs/datasets.md): `Image/SSM/<name>.jpg` and `annotation/` holding Images.mat
(every box of every image), pool.mat (the test images), Person.mat (every labelled person and
where they appear) and test/train_test/ (Train.mat, TestG<N>.mat).

Identity labels are the number in a person's `idname` ('p10581' -> 10581), the same in every
file, so training labels, test labels and protocol queries agree. A box of Images.mat gets a
person's label when it is that person's box in Person.mat; every other box is a background person
(UNLABELED). Loading reads annotations only; no image is opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personsearch.boxes import box_iou
from personsearch.data.mat import (
    as_numbers,
    as_record,
    as_records,
    as_string,
    as_strings,
    get_field,
    mat_variable,
    require_file,
)
from personsearch.data.protocol_cache import cache_dir, cached_protocol, is_cached
from personsearch.data.scenes import (
    UNLABELED,
    QueryTask,
    Scene,
    SceneDataset,
    SearchProtocol,
    xywh_to_xyxy,
)
from personsearch.errors import ConfigError, DatasetError

ROOT_HINT = "the unpacked CUHK-SYSU folder (holding Image/SSM/ and annotation/)"
IMAGE_DIR = "Image/SSM"
IMAGES_MAT = "annotation/Images.mat"
POOL_MAT = "annotation/pool.mat"
PERSON_MAT = "annotation/Person.mat"
PROTOCOL_DIR = "annotation/test/train_test"
TRAIN_MAT = f"{PROTOCOL_DIR}/Train.mat"
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)

#: A labelled box that matches no Images.mat box exactly is matched to the unlabelled box it
#: overlaps most, if at least this much (tolerates rounding differences between files).
_MATCH_IOU = 0.7

GallerySize = int | Literal["full"]
#: One labelled appearance: (image name, x y w h box).
Appearance = tuple[str, np.ndarray]


def load_cuhk_sysu(root: str | os.PathLike[str]) -> SceneDataset:
    """Read the training scenes (images not in pool.mat) and test scenes (pool.mat, in order)."""
    root = Path(root)
    images = read_images(root)
    pool = read_pool(root)
    images_path = root / IMAGES_MAT
    missing = [name for name in pool if name not in images]
    if missing:
        raise DatasetError(
            f"{root / POOL_MAT} lists {len(missing)} images that {images_path} does not hold, "
            f"e.g. {missing[0]}"
        )
    pids = assign_identities(images, read_persons(root), root / PERSON_MAT)

    def scene(name: str) -> Scene:
        return Scene(name, root / IMAGE_DIR / name, xywh_to_xyxy(images[name]), pids[name])

    test_names = set(pool)
    train = tuple(scene(name) for name in images if name not in test_names)
    test = tuple(scene(name) for name in pool)
    return SceneDataset("cuhk-sysu", root, train, test)


def load_cuhk_sysu_protocol(
    root: str | os.PathLike[str], gallery_size: GallerySize | str = 100
) -> SearchProtocol:
    """Read the search protocol of one gallery size (50 ... 4000, or "full").

    Parsed once per file version (personsearch.data.protocol_cache). Images are pool.mat's test
    images in order. "full" takes TestG50's queries and listed
    galleries, and every other pool image contributes negatives (unlisted="all").
    """
    size = parse_gallery_size(gallery_size)
    root = Path(root)
    name, key, path = _protocol_source(root, size)

    def parse() -> SearchProtocol:
        pool = read_pool(root)
        queries = read_test_protocol(path, key, {image: i for i, image in enumerate(pool)})
        return SearchProtocol(
            name, tuple(pool), tuple(queries), unlisted="all" if size == "full" else "none"
        )

    # parsing TestG4000.mat takes scipy about 90 s: the parsed protocol is cached on disk
    return cached_protocol(name, [root / POOL_MAT, path], parse)


def cache_protocols(
    root: str | os.PathLike[str], gallery_sizes: Sequence[GallerySize | str]
) -> None:
    """Parse the gallery sizes' protocols not cached yet, in parallel processes, largest file
    first (scipy's parse is single-threaded and TestG4000.mat alone takes it about 90 s), so
    that loading them one by one afterwards is fast. Does nothing with the cache off, or with
    fewer than two to parse."""
    root = Path(root)
    todo = []
    for size in dict.fromkeys(parse_gallery_size(size) for size in gallery_sizes):
        name, _, path = _protocol_source(root, size)
        if not is_cached(name, [root / POOL_MAT, path]):
            todo.append((path.stat().st_size, size))
    workers = min(len(todo), os.cpu_count() or 1)
    if workers < 2 or cache_dir() is None:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    todo.sort(key=lambda item: -item[0])
    # spawn: a forked child would inherit whatever threads the caller runs
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_parse_into_cache, [str(root)] * len(todo), [size for _, size in todo]))


def _parse_into_cache(root: str, size: GallerySize) -> None:
    load_cuhk_sysu_protocol(root, size)  # returns nothing: the parent reads the cache entry


def _protocol_source(root: Path, size: GallerySize) -> tuple[str, str, Path]:
    """(protocol name, .mat variable name, .mat path) of a gallery size."""
    key = f"TestG{50 if size == 'full' else size}"
    path = require_file(root, f"{PROTOCOL_DIR}/{key}.mat", ROOT_HINT)
    return ("cuhk-sysu/full" if size == "full" else f"cuhk-sysu/{key}"), key, path


def parse_gallery_size(value: GallerySize | str) -> GallerySize:
    """Accept 50 ... 4000 (int or digits) or "full"; ConfigError otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "full":
            return "full"
        value = int(text) if text.isdigit() else -1
    if isinstance(value, int) and not isinstance(value, bool) and value in GALLERY_SIZES:
        return value
    choices = ", ".join(str(s) for s in GALLERY_SIZES)
    raise ConfigError(f"CUHK-SYSU gallery size must be one of {choices} or full, not {value!r}")


def available_gallery_sizes(root: str | os.PathLike[str]) -> list[GallerySize]:
    """The gallery sizes whose TestG<N>.mat exists under `root` ("full" when TestG50 does)."""
    folder = Path(root) / PROTOCOL_DIR
    sizes: list[GallerySize] = [s for s in GALLERY_SIZES if (folder / f"TestG{s}.mat").is_file()]
    if 50 in sizes:
        sizes.append("full")
    return sizes


def parse_pid(idname: str, where: str) -> int:
    """'p10581' -> 10581."""
    match = re.fullmatch(r"p(\d+)", idname.strip())
    if not match:
        raise DatasetError(f"{where}: identity name {idname!r} is not of the form pNNNNN")
    return int(match.group(1))


def read_images(root: Path) -> dict[str, np.ndarray]:
    """Images.mat as {image name: N x 4 float64 x y w h}, in file order, degenerate boxes dropped."""
    path = require_file(root, IMAGES_MAT, ROOT_HINT)
    _, value = mat_variable(path, "Img")
    images: dict[str, np.ndarray] = {}
    for i, record in enumerate(as_records(value, f"{path}: Img")):
        where = f"{path}: Img({i + 1})"
        name = as_string(get_field(record, "imname", where), f"{where}.imname")
        if name in images:
            raise DatasetError(f"{where}: image {name} is listed twice")
        boxes = _box_list(get_field(record, "box", where), f"{where}.box ({name})")
        # the release holds some zero-size boxes; they are not persons
        images[name] = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
    return images


def read_pool(root: Path) -> list[str]:
    """pool.mat: the test image names, in file order (a repeated name counts once)."""
    path = require_file(root, POOL_MAT, ROOT_HINT)
    _, value = mat_variable(path, "pool")
    names = as_strings(value, f"{path}: pool")
    if not names:
        raise DatasetError(f"{path}: pool lists no images")
    return list(dict.fromkeys(names))


def read_persons(root: Path) -> list[tuple[int, list[Appearance]]]:
    """Person.mat: every labelled person as (identity, [(image name, x y w h), ...])."""
    path = require_file(root, PERSON_MAT, ROOT_HINT)
    _, value = mat_variable(path, "Person")
    return _identity_list(as_records(value, f"{path}: Person"), f"{path}: Person")


def read_train_identities(root: Path) -> list[tuple[int, list[Appearance]]]:
    """Train.mat: the training identities as (identity, [(image name, x y w h), ...])."""
    path = require_file(root, TRAIN_MAT, ROOT_HINT)
    _, value = mat_variable(path, "Train")
    return _identity_list(as_records(value, f"{path}: Train"), f"{path}: Train")


def assign_identities(
    images: dict[str, np.ndarray], persons: Sequence[tuple[int, list[Appearance]]], source: Path
) -> dict[str, np.ndarray]:
    """Label each image's boxes with the identity whose box it is; UNLABELED elsewhere."""
    pids = {name: np.full(len(boxes), UNLABELED, dtype=np.int64) for name, boxes in images.items()}
    for pid, appearances in persons:
        for image, box in appearances:
            if image not in images:
                raise DatasetError(
                    f"{source}: person p{pid:05d} appears in {image}, "
                    "which Images.mat does not hold"
                )
            if box[2] <= 0 or box[3] <= 0:
                continue  # a zero-size box, dropped from Images.mat by the same rule
            index = _match_box(images[image], pids[image], box, pid)
            if index is None:
                raise DatasetError(
                    f"{source}: box {box.astype(int).tolist()} of person p{pid:05d} in {image} "
                    "matches no box of Images.mat in that image"
                )
            if pids[image][index] not in (UNLABELED, pid):
                raise DatasetError(
                    f"{source}: box {box.astype(int).tolist()} in {image} is labelled both "
                    f"p{pids[image][index]:05d} and p{pid:05d}"
                )
            pids[image][index] = pid
    return pids


def read_test_protocol(path: Path, key: str, image_index: dict[str, int]) -> list[QueryTask]:
    """One TestG<N>.mat: a query task per record, gallery entries kept exactly as listed."""
    _, value = mat_variable(path, key)
    tasks = []
    for i, record in enumerate(as_records(value, f"{path}: {key}")):
        where = f"{path}: {key}({i + 1})"
        query = as_record(get_field(record, "Query", where), f"{where}.Query")
        image = as_string(get_field(query, "imname", where), f"{where}.Query.imname")
        box = _xywh(get_field(query, "idlocate", where), f"{where}.Query.idlocate")
        pid = parse_pid(
            as_string(get_field(query, "idname", where), f"{where}.Query.idname"),
            f"{where}.Query.idname",
        )
        names, gt = _gallery_entries(get_field(record, "Gallery", where), f"{where}.Gallery")
        unknown = [name for name in names if name not in image_index]
        if unknown:
            raise DatasetError(f"{where}.Gallery lists {unknown[0]}, which pool.mat does not hold")
        tasks.append(
            QueryTask(
                image=image,
                box=xywh_to_xyxy(box)[0],
                pid=pid,
                camera=-1,
                gallery=np.array([image_index[name] for name in names], dtype=np.int64),
                gt_boxes=gt,
            )
        )
    return tasks


def _identity_list(records: list[np.void], where: str) -> list[tuple[int, list[Appearance]]]:
    identities = []
    seen: set[int] = set()
    for i, record in enumerate(records):
        at = f"{where}({i + 1})"
        pid = parse_pid(as_string(get_field(record, "idname", at, position=0), f"{at}.idname"), at)
        if pid in seen:
            raise DatasetError(f"{at}: identity p{pid:05d} is listed twice")
        seen.add(pid)
        # Train.mat's structs hold the scene list as their third field, whatever its name
        scenes = as_records(get_field(record, "scene", at, position=2), f"{at}.scene")
        appearances = []
        for j, scene in enumerate(scenes):
            sat = f"{at}.scene({j + 1})"
            name = as_string(get_field(scene, "imname", sat, position=0), f"{sat}.imname")
            appearances.append(
                (name, _xywh(get_field(scene, "idlocate", sat, 1), f"{sat}.idlocate"))
            )
        identities.append((pid, appearances))
    return identities


def _box_list(value: Any, where: str) -> np.ndarray:
    """Images.mat's `box` field: a struct array of idlocate (or, tolerated, an N x 4 matrix)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        if value.size % 4:
            raise DatasetError(f"{where}: expected N x 4 boxes, found shape {value.shape}")
        boxes = value.astype(np.float64).reshape(-1, 4)
        bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
        if bad.size:
            _require_finite(boxes[bad[0]], f"{where}({int(bad[0]) + 1})")
        return boxes
    records = as_records(value, where)
    boxes = np.zeros((len(records), 4), dtype=np.float64)
    for j, record in enumerate(records):
        boxes[j] = _xywh(get_field(record, "idlocate", where, position=0), f"{where}({j + 1})")
    return boxes


def _xywh(value: Any, where: str) -> np.ndarray:
    numbers = as_numbers(value, where)
    if numbers.size != 4:
        raise DatasetError(f"{where}: expected a box [x y w h], found {numbers.size} numbers")
    return _require_finite(numbers, where)


def _require_finite(box: np.ndarray, where: str) -> np.ndarray:
    """A box with a NaN or infinite number is damage, not a zero-size box to drop silently."""
    if not np.isfinite(box).all():
        shown = " ".join(f"{v:g}" for v in box)
        raise DatasetError(f"{where}: box [x y w h = {shown}] is not finite (NaN or infinite)")
    return box


def _columns(value: Any, fields: tuple[str, ...], where: str) -> dict[str, np.ndarray]:
    """Fields of a struct array as flat object arrays (fast path for big protocol files)."""
    if isinstance(value, np.ndarray) and value.dtype.names:
        missing = [f for f in fields if f not in value.dtype.names]
        if missing:
            raise DatasetError(f"{where}: struct has no field {missing[0]!r}")
        return {f: value[f].reshape(-1, order="F") for f in fields}
    records = as_records(value, where)  # a cell array of structs: slower, same result
    columns = {f: np.empty(len(records), dtype=object) for f in fields}
    for j, record in enumerate(records):
        for f in fields:
            columns[f][j] = get_field(record, f, f"{where}({j + 1})")
    return columns


def _gallery_entries(value: Any, where: str) -> tuple[list[str], np.ndarray]:
    """Listed gallery images and the query person's x1 y1 x2 y2 box in each (NaN: absent)."""
    columns = _columns(value, ("imname", "idlocate"), where)
    names = [
        str(v[0]).strip()
        if isinstance(v, np.ndarray) and v.dtype.kind == "U" and v.shape == (1,)
        else as_string(v, f"{where}({j + 1}).imname")
        for j, v in enumerate(columns["imname"])
    ]
    locations = columns["idlocate"]
    sizes = np.fromiter((np.size(v) for v in locations), dtype=np.int64, count=len(locations))
    bad = np.flatnonzero((sizes != 0) & (sizes != 4))
    if bad.size:
        j = int(bad[0])
        raise DatasetError(
            f"{where}({j + 1}).idlocate: expected [x y w h] or empty, found {sizes[j]} numbers"
        )
    gt = np.full((len(names), 4), np.nan, dtype=np.float32)
    holders = np.flatnonzero(sizes == 4)
    if holders.size:
        xywh = np.stack([as_numbers(locations[j], where) for j in holders])
        bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1))
        if bad.size:  # a NaN box would read as "this image does not hold the person"
            j = int(holders[bad[0]])
            _require_finite(xywh[bad[0]], f"{where}({j + 1}).idlocate")
        gt[holders] = xywh_to_xyxy(xywh)
    return names, gt


def _match_box(boxes: np.ndarray, pids: np.ndarray, box: np.ndarray, pid: int) -> int | None:
    """Index of the image box that is `box`: exact first, else the best-overlapping free one."""
    exact = np.flatnonzero(np.all(np.abs(boxes - box) < 0.5, axis=1))
    for index in exact:
        if pids[index] == pid:
            return int(index)  # the same person listed twice at the same place
    for index in exact:
        if pids[index] == UNLABELED:
            return int(index)
    if exact.size:
        return int(exact[0])  # taken by another identity: the caller reports the conflict
    free = np.flatnonzero(pids == UNLABELED)
    if not free.size:
        return None
    overlaps = box_iou(boxes[free], box, fmt="xywh", clip_areas=False)[:, 0]
    best = int(np.argmax(overlaps))
    return int(free[best]) if overlaps[best] >= _MATCH_IOU else None
