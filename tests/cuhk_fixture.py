"""Build a tiny fake CUHK-SYSU folder with the release's own .mat struct layout, for tests.

The layout copies the real files: Images.mat `Img` 1 x N struct (imname, nAppear, box: struct
array of (idlocate, ishard)), pool.mat `pool` N x 1 cell of names, Person.mat `Person` 1 x N struct
(idname 'pNNNNN', nAppear, scene: struct array of (imname, idlocate, ishard)),
test/train_test/Train.mat `Train` N x 1 cell of 1 x 1 structs of the same fields, and
TestG<N>.mat `TestG<N>` 1 x Q struct (Query: 1 x 1 struct (imname, idlocate as uint8/uint16,
ishard, idname); Gallery: 1 x L struct (imname, idlocate, ishard), empty 1 x 0 idlocate where the
image does not hold the person, holders first) as in shared/data/cuhk-sysu-protocol/TestG100.mat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from real_data import REAL_DATA

#: image name -> persons in it as (pid or None for a background person, (x, y, w, h))
Persons = dict[str, list[tuple[int | None, tuple[int, int, int, int]]]]

DEFAULT_IMAGES: Persons = {
    "s1.jpg": [(1, (10, 10, 30, 80)), (None, (60, 20, 25, 70)), (None, (100, 10, 0, 50))],
    "s2.jpg": [(1, (20, 15, 32, 85)), (2, (70, 20, 30, 80))],
    "s3.jpg": [(2, (15, 10, 28, 75)), (None, (90, 30, 20, 60))],
    "s4.jpg": [(None, (40, 20, 30, 90))],
    "s5.jpg": [(10, (10, 10, 30, 90)), (None, (80, 10, 20, 60))],
    "s6.jpg": [(10, (50, 12, 31, 88)), (11, (100, 20, 25, 70))],
    "s7.jpg": [(10, (20, 15, 29, 91))],
    "s8.jpg": [(11, (30, 25, 26, 72)), (None, (90, 20, 30, 80))],
}
DEFAULT_POOL = ("s5.jpg", "s6.jpg", "s7.jpg", "s8.jpg")
#: The released TestG100.mat among the shared samples (absent on machines without them).
REAL_TESTG100 = REAL_DATA / "cuhk-sysu-protocol" / "TestG100.mat"
IMAGE_SIZE = (160, 120)  # width, height


@dataclass
class FakeCuhk:
    """What was written, for tests to compare the reader's output with."""

    root: Path
    images: Persons
    pool: tuple[str, ...]
    queries: dict[int, str] = field(default_factory=dict)  # test pid -> its query image

    @property
    def train_images(self) -> list[str]:
        return [name for name in self.images if name not in self.pool]

    def pids_in(self, names: list[str] | tuple[str, ...]) -> set[int]:
        return {pid for n in names for pid, _ in self.images[n] if pid is not None}


def write_cuhk_sysu(
    root: Path,
    images: Persons | None = None,
    pool: tuple[str, ...] = DEFAULT_POOL,
    gallery_sizes: tuple[int, ...] = (50, 100),
    column_structs: bool = False,
    write_images: bool = True,
) -> FakeCuhk:
    """Write the fake dataset under `root`; `column_structs` writes N x 1 struct arrays instead."""
    images = DEFAULT_IMAGES if images is None else images
    annotation = root / "annotation"
    protocol_dir = annotation / "test" / "train_test"
    protocol_dir.mkdir(parents=True, exist_ok=True)
    shape = (lambda n: (n, 1)) if column_structs else (lambda n: (1, n))

    img = _structs(
        shape(len(images)),
        ("imname", "nAppear", "box"),
        [
            (
                name,
                float(len(persons)),
                _structs(
                    shape(len(persons)),
                    ("idlocate", "ishard"),
                    [(np.array([box], dtype=np.float64), np.array([[0.0]])) for _, box in persons],
                ),
            )
            for name, persons in images.items()
        ],
    )
    scipy.io.savemat(annotation / "Images.mat", {"Img": img})
    scipy.io.savemat(annotation / "pool.mat", {"pool": _cell(list(pool))})

    appearances: dict[int, list[tuple[str, tuple[int, int, int, int]]]] = {}
    for name, persons in images.items():
        for pid, box in persons:
            if pid is not None:
                appearances.setdefault(pid, []).append((name, box))
    person_fields = ("idname", "nAppear", "scene")

    def person(pid: int) -> tuple:
        scene = _structs(
            shape(len(appearances[pid])),
            ("imname", "idlocate", "ishard"),
            [
                (name, np.array([box], dtype=np.float64), np.array([[0.0]]))
                for name, box in appearances[pid]
            ],
        )
        return (f"p{pid:05d}", float(len(appearances[pid])), scene)

    pids = sorted(appearances)
    scipy.io.savemat(
        annotation / "Person.mat",
        {"Person": _structs(shape(len(pids)), person_fields, [person(p) for p in pids])},
    )

    train_pids = [p for p in pids if any(n not in pool for n, _ in appearances[p])]
    train = np.empty((len(train_pids), 1), dtype=object)
    for i, pid in enumerate(train_pids):
        train[i, 0] = _structs((1, 1), person_fields, [person(pid)])
    scipy.io.savemat(protocol_dir / "Train.mat", {"Train": train})

    fake = FakeCuhk(root, images, tuple(pool))
    test_pids = [p for p in pids if p not in train_pids]
    for size in gallery_sizes:
        key = f"TestG{size}"
        records = [_test_record(pid, appearances[pid], pool, size, fake) for pid in test_pids]
        scipy.io.savemat(
            protocol_dir / f"{key}.mat",
            {key: _structs((1, len(records)), ("Query", "Gallery"), records)},
        )

    if write_images:
        folder = root / "Image" / "SSM"
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(images):
            Image.new("RGB", IMAGE_SIZE, (40 * i % 255, 90, 160)).save(folder / name, quality=80)
    return fake


def _test_record(
    pid: int, appearances: list, pool: tuple[str, ...], size: int, fake: FakeCuhk
) -> tuple:
    """One TestG record: the first appearance is the query, the rest are listed first."""
    (query_image, query_box), *holders = appearances
    fake.queries[pid] = query_image
    held = {name for name, _ in appearances}
    others = [name for name in pool if name not in held]
    entries = [(name, _uint(box), np.array([[0]], dtype=np.uint8)) for name, box in holders]
    entries += [(name, np.zeros((1, 0)), np.zeros((1, 0))) for name in others]
    entries = entries[:size]
    query = _structs(
        (1, 1),
        ("imname", "idlocate", "ishard", "idname"),
        [(query_image, _uint(query_box), np.array([[0]], dtype=np.uint8), f"p{pid:05d}")],
    )
    return (query, _structs((1, len(entries)), ("imname", "idlocate", "ishard"), entries))


def _uint(box: tuple[int, ...]) -> np.ndarray:
    """MATLAB saves integer boxes in the smallest unsigned type that holds them."""
    dtype = np.uint8 if max(box) < 256 else np.uint16
    return np.array([box], dtype=dtype)


def _structs(shape: tuple[int, int], fields: tuple[str, ...], rows: list[tuple]) -> np.ndarray:
    array = np.empty(shape, dtype=[(f, object) for f in fields])
    flat = array.reshape(-1)
    for i, row in enumerate(rows):
        for name, value in zip(fields, row, strict=True):
            flat[name][i] = value
    return array


def _cell(values: list[str]) -> np.ndarray:
    cell = np.empty((len(values), 1), dtype=object)
    for i, value in enumerate(values):
        cell[i, 0] = value
    return cell


def write_real_testg100_root(root: Path) -> Path:
    """A CUHK-SYSU folder holding the released TestG100.mat (linked) and a pool.mat of the images
    it names, in first-seen order (the real pool.mat is not among the shared samples)."""
    folder = root / "annotation" / "test" / "train_test"
    folder.mkdir(parents=True)
    (folder / "TestG100.mat").symlink_to(REAL_TESTG100)
    raw = scipy.io.loadmat(REAL_TESTG100)["TestG100"].reshape(-1)
    names: dict[str, None] = {}
    for record in raw:
        names[str(record["Query"][0, 0]["imname"][0])] = None
        names.update((str(g["imname"][0]), None) for g in record["Gallery"].reshape(-1))
    pool = np.empty((len(names), 1), dtype=object)
    pool[:, 0] = list(names)
    scipy.io.savemat(root / "annotation" / "pool.mat", {"pool": pool})
    return root
