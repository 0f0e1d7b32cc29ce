"""Read-only lookups in a gallery index's database for the web server: images by integer id.

The server never takes a file path from a client. A client names an image by its `images.id`
(an integer SQLite assigned when the image was indexed); the path it maps to comes from the
index database only, so the files the server can read are exactly the indexed images.

The connection is opened read-only (`mode=ro`) and shared by the server's threads under a lock;
an indexer may keep adding images meanwhile, and they show up on the next query.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from personsearch.search.store import queries
from personsearch.search.store.queries import ImageSummary
from personsearch.search.store.records import GalleryIndexError
from personsearch.search.store.schema import DB_NAME, SQLITE_INTEGERS

BUSY_TIMEOUT_S = 5.0  # wait this long for an indexer's write transaction to finish

T = TypeVar("T")


@dataclass(frozen=True)
class CatalogImage:
    """An indexed image as the server shows it (no path: that stays on the server)."""

    id: int
    name: str  #: the file name, without its folder
    width: int
    height: int
    camera: int  #: -1 where unknown
    persons: int  #: person boxes indexed in it
    video: bool = False  #: a video file (its frames are served one at a time, and the file)
    duration_s: float | None = None  #: a video's indexed length in seconds


@dataclass(frozen=True)
class CatalogBox:
    row: int  #: the feature row / boxes.id
    box: tuple[float, float, float, float]
    det_score: float


@dataclass(frozen=True)
class CatalogStats:
    images: int  #: indexed successfully, the videos among them
    failed_images: int
    persons: int
    cameras: list[int]
    meta: dict[str, str]
    videos: int = 0  #: of `images`, the videos


class IndexCatalog:
    """Image metadata of a gallery index, looked up by id; thread-safe, read-only.

    The SQL is the store's (`personsearch.search.store.queries`); this class shares one read-only
    connection between threads and keeps client-supplied numbers within SQLite's range.
    """

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        db = Path(index_dir).resolve() / DB_NAME
        if not db.is_file():
            raise GalleryIndexError(f"no gallery index at {index_dir} ({DB_NAME} not found)")
        self._conn = queries.connect_shared_reader(db, busy_timeout_s=BUSY_TIMEOUT_S)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, lookup: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:  # one connection, shared by the server's threads
            return lookup(self._conn)

    def stats(self) -> CatalogStats:
        images, failed = self._query(queries.image_counts)
        persons = self._query(queries.box_count)
        cameras = self._query(queries.cameras)
        meta = self._query(queries.read_meta)
        videos = self._query(queries.video_count)
        return CatalogStats(images, failed, persons, cameras, meta, videos)

    def list_images(
        self, offset: int, limit: int, camera: int | None = None
    ) -> tuple[int, list[CatalogImage]]:
        """(total, one page) of the successfully indexed images, in id order."""
        if camera is not None and camera not in SQLITE_INTEGERS:
            return 0, []
        offset = min(max(0, offset), SQLITE_INTEGERS.stop - 1)
        total, rows = self._query(lambda conn: queries.list_images(conn, offset, limit, camera))
        return total, [_image(row) for row in rows]

    def image(self, image_id: int) -> CatalogImage | None:
        """The image with this id, if it was indexed successfully."""
        found = self.image_and_path(image_id)
        return None if found is None else found[0]

    def image_and_path(self, image_id: int) -> tuple[CatalogImage, Path] | None:
        if image_id not in SQLITE_INTEGERS:
            return None
        row = self._query(lambda conn: queries.image_by_id(conn, image_id))
        return None if row is None else (_image(row), Path(row.path))

    def boxes(self, image_id: int) -> list[CatalogBox]:
        if image_id not in SQLITE_INTEGERS:
            return []
        rows = self._query(lambda conn: queries.boxes_of_image(conn, image_id))
        return [CatalogBox(int(r), box, float(s)) for r, box, s in rows]

    def frame_boxes(self, image_id: int, time_s: float) -> tuple[float | None, list[CatalogBox]]:
        """A video's boxes at the sampled time nearest `time_s` (and that time)."""
        if image_id not in SQLITE_INTEGERS:
            return None, []
        found, rows = self._query(lambda conn: queries.boxes_of_frame(conn, image_id, time_s))
        return found, [CatalogBox(int(r), box, float(s)) for r, box, s in rows]

    def images_by_path(self, paths: Iterable[str]) -> dict[str, CatalogImage]:
        """{stored path: image} for search hits, which name their image by its stored path.

        Any number of paths: the store looks them up in chunks under SQLite's variable limit."""
        rows = self._query(lambda conn: queries.images_by_path(conn, paths))
        return {row.path: _image(row) for row in rows}


def _image(row: ImageSummary) -> CatalogImage:
    return CatalogImage(
        int(row.id),
        Path(row.path).name,
        int(row.width),
        int(row.height),
        int(row.camera),
        int(row.persons),
        bool(row.video),
        None if row.duration_s is None else float(row.duration_s),
    )
