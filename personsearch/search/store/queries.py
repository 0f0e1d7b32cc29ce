"""Read-only lookups on an index database, for the web server (`personsearch.serve.catalog`).

They take a connection from `connect_shared_reader` and never write: the server reads an index
that an indexer may be adding to at the same time.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from personsearch.search.store.records import GalleryIndexError
from personsearch.search.store.schema import DB_NAME, chunks, placeholders, read_meta

__all__ = [
    "ImageSummary",
    "box_count",
    "boxes_of_frame",
    "boxes_of_image",
    "cameras",
    "connect_shared_reader",
    "has_images",
    "image_by_id",
    "image_counts",
    "images_by_path",
    "list_images",
    "read_meta",
    "video_count",
]


class ImageSummary(NamedTuple):
    """An indexed image or video as the server lists it: its row in `images`, its box count,
    and for a video its duration (None for an image)."""

    id: int
    path: str
    width: int
    height: int
    camera: int
    persons: int
    video: bool = False
    duration_s: float | None = None


_BASE_COLUMNS = (
    "i.id, i.path, i.width, i.height, i.camera, "
    "(SELECT COUNT(*) FROM boxes b WHERE b.image_id = i.id)"
)


def _image_columns(conn: sqlite3.Connection) -> str:
    """The ImageSummary columns; an index of format version 1 (read-only, not upgraded) has no
    videos table: everything in it is an image."""
    has_videos = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'videos'"
    ).fetchone()
    if not has_videos:
        return f"{_BASE_COLUMNS}, 0, NULL"
    return (
        f"{_BASE_COLUMNS}, EXISTS (SELECT 1 FROM videos v WHERE v.image_id = i.id), "
        "(SELECT COALESCE(v.last_time_s, v.duration_s) FROM videos v WHERE v.image_id = i.id)"
    )


def _summary(row: tuple) -> ImageSummary:
    *head, video, duration = row
    return ImageSummary(*head, bool(video), duration)


def connect_shared_reader(db: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A read-only (`mode=ro`) connection that threads may share (callers serialise its use).

    `busy_timeout_s`: how long a query waits for an indexer's write transaction to finish.
    """
    try:
        return sqlite3.connect(
            f"{db.as_uri()}?mode=ro",
            uri=True,
            timeout=busy_timeout_s,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise GalleryIndexError(f"cannot open gallery index database {db}: {error}") from error


def has_images(folder: Path) -> bool:
    """Whether the index database in `folder` records any image, ok or failed (False without a
    database, or without an images table: nothing was ever committed)."""
    db = folder / DB_NAME
    if not db.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        with contextlib.closing(conn):
            return bool(conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
    except sqlite3.DatabaseError:
        return False


def image_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(images indexed successfully, images that failed)."""
    ((ok, failed),) = conn.execute(
        "SELECT COALESCE(SUM(status = 'ok'), 0), COALESCE(SUM(status = 'failed'), 0) FROM images"
    ).fetchall()
    return int(ok), int(failed)


def video_count(conn: sqlite3.Connection) -> int:
    """Of the images indexed successfully, the videos (0 in a version-1 index)."""
    has_videos = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'videos'"
    ).fetchone()
    return int(conn.execute("SELECT COUNT(*) FROM videos").fetchone()[0]) if has_videos else 0


def box_count(conn: sqlite3.Connection) -> int:
    """Person boxes recorded."""
    return int(conn.execute("SELECT COUNT(*) FROM boxes").fetchone()[0])


def cameras(conn: sqlite3.Connection) -> list[int]:
    """The known cameras (>= 0) of the successfully indexed images, ascending."""
    query = "SELECT DISTINCT camera FROM images WHERE status = 'ok' AND camera >= 0 ORDER BY camera"
    return [c for (c,) in conn.execute(query).fetchall()]


def list_images(
    conn: sqlite3.Connection, offset: int, limit: int, camera: int | None = None
) -> tuple[int, list[ImageSummary]]:
    """(total, one page) of the successfully indexed images (of `camera` if given), in id order."""
    where, args = "i.status = 'ok'", []
    if camera is not None:
        where += " AND i.camera = ?"
        args.append(camera)
    (total,) = conn.execute(f"SELECT COUNT(*) FROM images i WHERE {where}", args).fetchone()
    rows = conn.execute(
        f"SELECT {_image_columns(conn)} FROM images i WHERE {where} ORDER BY i.id LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return int(total), [_summary(row) for row in rows]


def image_by_id(conn: sqlite3.Connection, image_id: int) -> ImageSummary | None:
    """The image with this `images.id`, if it was indexed successfully."""
    row = conn.execute(
        f"SELECT {_image_columns(conn)} FROM images i WHERE i.id = ? AND i.status = 'ok'",
        [image_id],
    ).fetchone()
    return None if row is None else _summary(row)


def boxes_of_image(
    conn: sqlite3.Connection, image_id: int
) -> list[tuple[int, tuple[float, float, float, float], float]]:
    """(row, box, detection score) of the image's person boxes, in row order."""
    rows = conn.execute(
        "SELECT id, x1, y1, x2, y2, det_score FROM boxes WHERE image_id = ? ORDER BY id",
        [image_id],
    ).fetchall()
    return [(r, (x1, y1, x2, y2), s) for r, x1, y1, x2, y2, s in rows]


def boxes_of_frame(
    conn: sqlite3.Connection, image_id: int, time_s: float
) -> tuple[float | None, list[tuple[int, tuple[float, float, float, float], float]]]:
    """(the sampled time nearest `time_s`, the video's boxes at that time) of a video."""
    row = conn.execute(
        "SELECT time_s FROM boxes WHERE image_id = ? AND time_s IS NOT NULL "
        "ORDER BY ABS(time_s - ?) LIMIT 1",
        [image_id, float(time_s)],
    ).fetchone()
    if row is None:
        return None, []
    rows = conn.execute(
        "SELECT id, x1, y1, x2, y2, det_score FROM boxes WHERE image_id = ? AND time_s = ? "
        "ORDER BY id",
        [image_id, row[0]],
    ).fetchall()
    return float(row[0]), [(r, (x1, y1, x2, y2), s) for r, x1, y1, x2, y2, s in rows]


def images_by_path(conn: sqlite3.Connection, paths: Iterable[str]) -> list[ImageSummary]:
    """The images (any status) stored under these paths; any number, looked up in chunks."""
    found: list[ImageSummary] = []
    columns = _image_columns(conn)
    for chunk in chunks(sorted(set(paths))):
        rows = conn.execute(
            f"SELECT {columns} FROM images i WHERE i.path IN ({placeholders(chunk)})",
            chunk,
        ).fetchall()
        found += [_summary(row) for row in rows]
    return found
