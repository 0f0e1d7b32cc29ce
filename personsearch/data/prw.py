"""PRW reader: video frames with per-frame annotation files, and the search protocol.

Layout (see docs/datasets.md): `frames/<frame>.jpg`, `annotations/<frame>.jpg.mat` (an N x 5
matrix of rows `id x y w h` under the key box_new, else anno_file, else anno_previous; id -2 is an
unlabelled person), frame_train.mat / frame_test.mat (frame names without extension),
ID_train.mat / ID_test.mat (identity lists) and query_info.txt (`pid x y w h frame` per line).
The camera of a frame is the number after 'c' in its name (c3s1_000551 -> 3).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from personsearch.data.mat import as_matrix, as_numbers, as_strings, mat_variable, require_file
from personsearch.data.scenes import (
    UNLABELED,
    QueryTask,
    Scene,
    SceneDataset,
    SearchProtocol,
    xywh_to_xyxy,
)
from personsearch.errors import DatasetError

ROOT_HINT = "the unpacked PRW folder (holding frames/, annotations/, frame_train.mat, ...)"
FRAME_DIR = "frames"
ANNOTATION_DIR = "annotations"
ANNOTATION_KEYS = ("box_new", "anno_file", "anno_previous")
FRAME_LISTS = {
    "train": ("frame_train.mat", "img_index_train"),
    "test": ("frame_test.mat", "img_index_test"),
}
ID_LISTS = {"train": ("ID_train.mat", "ID_train"), "test": ("ID_test.mat", "ID_test")}
QUERY_FILE = "query_info.txt"
PRW_UNLABELED = -2


def load_prw(root: str | os.PathLike[str]) -> SceneDataset:
    """Read the training and test frames (in the order the frame lists give) with their boxes."""
    root = Path(root)
    train_names = read_frame_list(root, "train")
    test_names = read_frame_list(root, "test")
    both = set(train_names) & set(test_names)
    if both:
        raise DatasetError(
            f"{root}: frame {sorted(both)[0]} is in both frame_train.mat and "
            f"frame_test.mat ({len(both)} such frames)"
        )
    return SceneDataset("prw", root, read_scenes(root, train_names), read_scenes(root, test_names))


def load_prw_protocol(root: str | os.PathLike[str], cross_camera: bool = False) -> SearchProtocol:
    """The PRW search protocol over the test frames.

    A query's listed gallery is every test frame holding its person except its own frame (frames
    of other cameras only, when `cross_camera`); all other frames (of other cameras) are negatives.
    """
    root = Path(root)
    return protocol_from_scenes(
        root, read_scenes(root, read_frame_list(root, "test")), cross_camera
    )


def protocol_from_scenes(
    root: Path, scenes: tuple[Scene, ...], cross_camera: bool = False
) -> SearchProtocol:
    """The search protocol over already loaded test scenes (saves re-reading their annotations)."""
    root = Path(root)
    image_index = {scene.name: i for i, scene in enumerate(scenes)}
    cameras = np.array([scene.camera for scene in scenes], dtype=np.int64)
    where_pid = _appearances(scenes)
    tasks = []
    for line_no, (pid, xywh, frame) in read_queries(root):
        image = _image_name(frame)
        if image not in image_index:
            raise DatasetError(
                f"{root / QUERY_FILE}, line {line_no}: query frame {frame} is not "
                "a test frame (frame_test.mat)"
            )
        own = image_index[image]
        listed = [
            (i, box)
            for i, box in where_pid.get(pid, [])
            if i != own and not (cross_camera and cameras[i] == cameras[own])
        ]
        tasks.append(
            QueryTask(
                image=image,
                box=xywh_to_xyxy(_clip_negative(xywh))[0],
                pid=pid,
                camera=int(cameras[own]),
                gallery=np.array([i for i, _ in listed], dtype=np.int64),
                gt_boxes=np.array([box for _, box in listed], dtype=np.float32).reshape(-1, 4),
            )
        )
    return SearchProtocol(
        "prw/cross-camera" if cross_camera else "prw",
        tuple(scene.name for scene in scenes),
        tuple(tasks),
        unlisted="other-cameras" if cross_camera else "all",
        image_cameras=cameras,
    )


def camera_of(name: str) -> int:
    """'c3s1_000551.jpg' -> 3."""
    match = re.match(r"c(\d+)", name)
    if not match:
        raise DatasetError(f"PRW frame name {name!r} does not start with c<camera>")
    return int(match.group(1))


def read_frame_list(root: Path, split: str) -> list[str]:
    """Frame names (without extension) of a split, from frame_<split>.mat."""
    filename, key = FRAME_LISTS[split]
    path = require_file(root, filename, ROOT_HINT)
    _, value = mat_variable(path, key)
    names = [_strip_jpg(name) for name in as_strings(value, f"{path}: {key}")]
    if not names:
        raise DatasetError(f"{path}: {key} lists no frames")
    return names


def read_id_list(root: Path, split: str) -> np.ndarray:
    """The identity list of ID_<split>.mat as int64."""
    filename, key = ID_LISTS[split]
    path = require_file(root, filename, ROOT_HINT)
    _, value = mat_variable(path, key)
    ids = as_numbers(value, f"{path}: {key}")
    if not np.all(ids == np.round(ids)):
        raise DatasetError(f"{path}: {key} holds non-integer identities")
    return ids.astype(np.int64)


def read_scenes(root: Path, frames: list[str]) -> tuple[Scene, ...]:
    """One Scene per frame, from annotations/<frame>.jpg.mat."""
    annotations = require_file(root, ANNOTATION_DIR, ROOT_HINT)
    scenes = []
    for frame in frames:
        image = _image_name(frame)
        boxes, pids = read_annotation(annotations / f"{image}.mat")
        scenes.append(Scene(image, root / FRAME_DIR / image, boxes, pids, camera=camera_of(image)))
    return tuple(scenes)


def read_annotation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One frame's annotation file: (N x 4 float32 x1 y1 x2 y2, N int64 identities)."""
    _, value = mat_variable(path, ANNOTATION_KEYS)
    rows = as_matrix(value, 5, str(path))
    ids = rows[:, 0]
    if not np.all(ids == np.round(ids)) or np.any((ids < 0) & (ids != PRW_UNLABELED)):
        bad = int(np.flatnonzero((ids != np.round(ids)) | ((ids < 0) & (ids != PRW_UNLABELED)))[0])
        raise DatasetError(
            f"{path}: row {bad + 1} has identity {ids[bad]:g} "
            f"(expected a non-negative integer or {PRW_UNLABELED})"
        )
    sizes_bad = np.flatnonzero((rows[:, 3] <= 0) | (rows[:, 4] <= 0))
    if sizes_bad.size:
        row = rows[sizes_bad[0]]
        raise DatasetError(
            f"{path}: row {sizes_bad[0] + 1} has a box of non-positive size "
            f"(w={row[3]:g}, h={row[4]:g})"
        )
    outside = np.flatnonzero((rows[:, 1] + rows[:, 3] <= 0) | (rows[:, 2] + rows[:, 4] <= 0))
    if outside.size:
        raise DatasetError(f"{path}: row {outside[0] + 1} lies entirely left of or above the image")
    boxes = xywh_to_xyxy(_clip_negative(rows[:, 1:]))
    pids = np.where(ids == PRW_UNLABELED, UNLABELED, ids).astype(np.int64)
    return boxes, pids


def read_queries(root: Path) -> list[tuple[int, tuple[int, np.ndarray, str]]]:
    """query_info.txt as [(line number, (pid, x y w h, frame name))]."""
    path = require_file(root, QUERY_FILE, ROOT_HINT)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    queries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.strip().split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DatasetError(
                f"{path}, line {line_no}: expected 'pid x y w h frame', "
                f"found {len(fields)} fields: {line.strip()!r}"
            )
        try:
            numbers = [float(field) for field in fields[:5]]
        except ValueError as error:
            raise DatasetError(f"{path}, line {line_no}: {error}") from error
        if numbers[0] != int(numbers[0]) or numbers[0] < 0:
            raise DatasetError(
                f"{path}, line {line_no}: identity {fields[0]} is not a non-negative integer"
            )
        if numbers[3] <= 0 or numbers[4] <= 0:
            raise DatasetError(f"{path}, line {line_no}: query box has non-positive size")
        queries.append((line_no, (int(numbers[0]), np.array(numbers[1:]), _strip_jpg(fields[5]))))
    if not queries:
        raise DatasetError(f"{path} lists no queries")
    return queries


def _appearances(scenes: tuple[Scene, ...]) -> dict[int, list[tuple[int, np.ndarray]]]:
    """{pid: [(scene index, box), ...]} in scene order; a frame counts once per identity."""
    where: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, scene in enumerate(scenes):
        for pid in np.unique(scene.pids[scene.labeled]):
            first = int(np.flatnonzero(scene.pids == pid)[0])
            where.setdefault(int(pid), []).append((i, scene.boxes[first]))
    return where


def _clip_negative(xywh: np.ndarray) -> np.ndarray:
    """Some PRW boxes start left of or above the image: clip x, y, w, h at 0 BEFORE converting.

    This moves the far edge of such a box left/up by the clipped amount; it is what the field's
    evaluation code (SeqNet, COAT) does, so gt boxes, IoU thresholds and mAP stay comparable.
    """
    return np.clip(np.asarray(xywh, dtype=np.float32).reshape(-1, 4), 0, None)


def _strip_jpg(name: str) -> str:
    return name[:-4] if name.lower().endswith(".jpg") else name


def _image_name(frame: str) -> str:
    return f"{_strip_jpg(frame)}.jpg"
