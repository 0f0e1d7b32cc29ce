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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from personsearch.search.index import DB_NAME, GalleryIndexError

BUSY_TIMEOUT_S = 5.0  # wait this long for an indexer's write transaction to finish
SQLITE_INTEGERS = range(-(2**63), 2**63)  # an id or camera outside matches nothing


@dataclass(frozen=True)
class CatalogImage:
    """An indexed image as the server shows it (no path: that stays on the server)."""

    id: int
    name: str  #: the file name, without its folder
    width: int
    height: int
    camera: int  #: -1 where unknown
    persons: int  #: person boxes indexed in it


@dataclass(frozen=True)
class CatalogBox:
    row: int  #: the feature row / boxes.id
    box: tuple[float, float, float, float]
    det_score: float


@dataclass(frozen=True)
class CatalogStats:
    images: int
    failed_images: int
    persons: int
    cameras: list[int]
    meta: dict[str, str]


_IMAGE_COLUMNS = (
    "i.id, i.path, i.width, i.height, i.camera, "
    "(SELECT COUNT(*) FROM boxes b WHERE b.image_id = i.id)"
)


class IndexCatalog:
    """Image metadata of a gallery index, looked up by id; thread-safe, read-only."""

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        db = Path(index_dir).resolve() / DB_NAME
        if not db.is_file():
            raise GalleryIndexError(f"no gallery index at {index_dir} ({DB_NAME} not found)")
        try:
            self._conn = sqlite3.connect(
                f"{db.as_uri()}?mode=ro",
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                check_same_thread=False,  # shared by the server's threads, under self._lock
            )
        except sqlite3.Error as error:
            raise GalleryIndexError(f"cannot open gallery index database {db}: {error}") from error
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def stats(self) -> CatalogStats:
        ((images, failed),) = self._query(
            "SELECT COALESCE(SUM(status = 'ok'), 0), COALESCE(SUM(status = 'failed'), 0) "
            "FROM images"
        )
        (persons,) = self._query("SELECT COUNT(*) FROM boxes")[0]
        cameras = [
            c
            for (c,) in self._query(
                "SELECT DISTINCT camera FROM images WHERE status = 'ok' AND camera >= 0 "
                "ORDER BY camera"
            )
        ]
        meta = dict(self._query("SELECT key, value FROM meta"))
        return CatalogStats(int(images), int(failed), int(persons), cameras, meta)

    def list_images(
        self, offset: int, limit: int, camera: int | None = None
    ) -> tuple[int, list[CatalogImage]]:
        """(total, one page) of the successfully indexed images, in id order."""
        if camera is not None and camera not in SQLITE_INTEGERS:
            return 0, []
        offset = min(max(0, offset), SQLITE_INTEGERS.stop - 1)
        where, args = "i.status = 'ok'", []
        if camera is not None:
            where += " AND i.camera = ?"
            args.append(camera)
        (total,) = self._query(f"SELECT COUNT(*) FROM images i WHERE {where}", args)[0]
        rows = self._query(
            f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE {where} ORDER BY i.id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return int(total), [_image(row) for row in rows]

    def image(self, image_id: int) -> CatalogImage | None:
        """The image with this id, if it was indexed successfully."""
        found = self.image_and_path(image_id)
        return None if found is None else found[0]

    def image_and_path(self, image_id: int) -> tuple[CatalogImage, Path] | None:
        if image_id not in SQLITE_INTEGERS:
            return None
        rows = self._query(
            f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE i.id = ? AND i.status = 'ok'",
            [image_id],
        )
        return (_image(rows[0]), Path(rows[0][1])) if rows else None

    def boxes(self, image_id: int) -> list[CatalogBox]:
        if image_id not in SQLITE_INTEGERS:
            return []
        rows = self._query(
            "SELECT id, x1, y1, x2, y2, det_score FROM boxes WHERE image_id = ? ORDER BY id",
            [image_id],
        )
        return [CatalogBox(int(r), (x1, y1, x2, y2), float(s)) for r, x1, y1, x2, y2, s in rows]

    def images_by_path(self, paths: Iterable[str]) -> dict[str, CatalogImage]:
        """{stored path: image} for search hits, which name their image by its stored path."""
        unique = sorted(set(paths))
        found: dict[str, CatalogImage] = {}
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-variable limit
            chunk = unique[start : start + 500]
            rows = self._query(
                f"SELECT {_IMAGE_COLUMNS} FROM images i "
                f"WHERE i.path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({row[1]: _image(row) for row in rows})
        return found


def _image(row: tuple) -> CatalogImage:
    image_id, path, width, height, camera, persons = row
    return CatalogImage(
        int(image_id), Path(path).name, int(width), int(height), int(camera), int(persons)
    )
