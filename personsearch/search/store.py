"""The gallery store: a gallery index's folder, its SQLite database, feature shards and write lock.

An index is a folder:

    index.sqlite         metadata: meta(key, value), images, boxes, shards (schema below)
    shards/*.npy         features, float32 rows; feature row r belongs to boxes.id = r
    faiss/<kind>-<rows>.faiss   cached FAISS index covering the first <rows> rows (derived data,
                         see `personsearch.search.faiss_backends`)
    write.lock           held (flock) by the one process allowed to add images
    in-progress.json     the image the writer is reading and detecting now (see `begin_image`)

This module is the only one that knows the schema: every SQL statement on an index database is
here, for the index (`GalleryStore`) and for the web server's read-only lookups (the functions
taking a connection, used by `personsearch.serve.catalog`). It imports neither torch nor faiss.

Adding is incremental and crash-safe: a batch's features are written to a new shard file first
(atomically, fsynced), then ONE SQLite transaction records the shard, the batch's images and
their boxes. A crash before the commit leaves an unreferenced shard, deleted the next time the
index is opened for writing; a crash after it leaves a complete batch. Either way nothing is lost
or recorded twice, and re-running the indexing picks up where it stopped.

A crash in native code (an image decoder, a detector) kills the process with no exception to
record, and every rerun would die on the same image. So the writer notes the image it is reading
and detecting in `in-progress.json` and removes the note when done; a rerun that finds the note
knows the previous process died on that image: it retries it once (the death may have been a
kill from outside), and records it as failed after CRASH_LIMIT deaths in a row. Such an image
is not retried until its file changes.

An index belongs to the embedder that built it (its `fingerprint` and `dim`): opening it with
another embedder is refused, since features of two models cannot be compared.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from personsearch.errors import PersonSearchError
from personsearch.io import atomic_open

INDEX_VERSION = "1"

DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
CACHE_DIR = "faiss"
LOCK_NAME = "write.lock"
PROGRESS_NAME = "in-progress.json"

#: Process deaths in a row while an image was being read and detected that make it failed.
CRASH_LIMIT = 2
#: How the error of an image failed that way starts (it is then not retried, see
#: `is_crash_error`).
CRASH_ERROR = "the indexing process died while reading or detecting persons in this image"

#: Values bound in one IN (...) list: SQLite allows 999 on old builds.
SQL_CHUNK = 500
#: SQLite's integers: an id or camera outside matches nothing.
SQLITE_INTEGERS = range(-(2**63), 2**63)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL UNIQUE,
    first_row INTEGER NOT NULL,
    n_rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha1 TEXT,
    size INTEGER,
    mtime REAL,
    width INTEGER,
    height INTEGER,
    camera INTEGER NOT NULL DEFAULT -1,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT
);
CREATE TABLE IF NOT EXISTS boxes (
    id INTEGER PRIMARY KEY,  -- the feature row
    image_id INTEGER NOT NULL REFERENCES images(id),
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    det_score REAL NOT NULL,
    shard_id INTEGER NOT NULL REFERENCES shards(id)
);
CREATE INDEX IF NOT EXISTS boxes_image ON boxes(image_id);
"""


class GalleryIndexError(PersonSearchError):
    """A gallery index is missing, damaged, busy, or belongs to another model."""


@dataclass(frozen=True)
class ImageRecord:
    """One gallery image as the indexer saw it: its boxes, or why it could not be read."""

    path: str
    sha1: str | None
    size: int
    mtime: float
    width: int = 0
    height: int = 0
    camera: int = -1
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    error: str | None = None  #: set when the image failed; it then has no boxes

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{self.path}: {len(boxes)} boxes but {len(scores)} scores")
        if self.error is not None and len(boxes):
            raise ValueError(f"{self.path}: a failed image cannot have boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "failed"


@dataclass(frozen=True)
class IndexedImage:
    """What the index remembers about an image file (to decide what is new)."""

    path: str
    size: int
    mtime: float
    status: str
    error: str | None


@dataclass(frozen=True)
class InterruptedImage:
    """The image a writer was reading and detecting when its process died."""

    path: str
    deaths: int  #: process deaths in a row on this image, the last one included


class ImageSummary(NamedTuple):
    """An indexed image as the server lists it: its row in `images` and its box count."""

    id: int
    path: str
    width: int
    height: int
    camera: int
    persons: int


def crash_error(deaths: int) -> str:
    """The error recorded for an image the indexing process died on `deaths` times."""
    return (
        f"{CRASH_ERROR} ({deaths} times in a row: a crash in native code, e.g. the image decoder "
        "or the detector, or the process was killed); skipped, retried once the file changes"
    )


def is_crash_error(error: str | None) -> bool:
    return bool(error) and str(error).startswith(CRASH_ERROR)


class GalleryStore:
    """An index folder's database, shards and lock; see the module docstring for the layout.

    Open with `GalleryStore.open` (read-only) or `GalleryStore.open_for_writing` (create or add).
    """

    def __init__(self, folder: Path, conn: sqlite3.Connection, lock: Any | None = None) -> None:
        self.folder = folder
        self._conn = conn
        self._lock = lock
        self._meta = read_meta(conn)

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, folder: str | os.PathLike[str], *, fingerprint: str | None = None
    ) -> GalleryStore:
        """Open an existing index read-only; refuse it if `fingerprint` differs from its model."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            raise GalleryIndexError(
                f"no gallery index at {folder} ({DB_NAME} not found): build one with "
                "`personsearch index --gallery DIR --out INDEX`"
            )
        # Read-only: searching needs no write access to the folder (a read-only mount, another
        # user's index) and never changes it.
        conn = _connect(db, read_only=True)
        try:
            store = cls(folder, conn)
        except sqlite3.DatabaseError as error:  # a zero-byte or foreign index.sqlite
            conn.close()
            raise GalleryIndexError(
                f"gallery index {folder} is damaged: {DB_NAME} ({db.stat().st_size} bytes) "
                f"is not an index database ({error}); rebuild it with `personsearch index`"
            ) from error
        store._check_version()
        if fingerprint is not None:
            store.check_model(fingerprint, None)
        return store

    @classmethod
    def open_for_writing(
        cls,
        folder: str | os.PathLike[str],
        *,
        fingerprint: str,
        dim: int,
        index_kind: str | None = None,
        info: Mapping[str, str] | None = None,
    ) -> GalleryStore:
        """Create the index, or open an existing one to add images (one writer at a time).

        `info` is extra metadata stored at creation. `index_kind` (checked by the caller) is
        stored at creation ("flat" when None) and replaces the stored kind of an existing index.
        """
        if int(dim) <= 0:
            raise GalleryIndexError(f"feature dimension must be positive, got {dim}")
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GalleryIndexError(f"index path {folder} exists and is not a folder")
        fresh = not (folder / DB_NAME).exists()
        own_names = {SHARD_DIR, CACHE_DIR, LOCK_NAME}  # left by a writer killed while creating
        if fresh and folder.is_dir() and any(p.name not in own_names for p in folder.iterdir()):
            raise GalleryIndexError(
                f"{folder} is a non-empty folder without {DB_NAME}: refusing to write an index "
                "into it; choose a new or empty folder"
            )
        (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        lock = _acquire_write_lock(folder / LOCK_NAME)
        try:
            conn = _connect(folder / DB_NAME)
            conn.executescript(_SCHEMA)
            if fresh or not conn.execute("SELECT 1 FROM meta").fetchone():
                meta = {
                    **{str(k): str(v) for k, v in (info or {}).items()},
                    "version": INDEX_VERSION,
                    "fingerprint": fingerprint,
                    "dim": str(int(dim)),
                    "index_kind": index_kind or "flat",  # the exact FAISS kind
                }
                with _transaction(conn):
                    conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            store = cls(folder, conn, lock)
            store._check_version()
            store.check_model(fingerprint, int(dim))
            if index_kind is not None and index_kind != store.index_kind:
                store._set_meta("index_kind", index_kind)
            store._delete_unreferenced_shards()
            return store
        except BaseException:
            lock.close()
            raise

    def close(self) -> None:
        """Close the database and release the write lock."""
        self._conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---- metadata ------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    @property
    def fingerprint(self) -> str:
        return self._meta["fingerprint"]

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def index_kind(self) -> str:
        return self._meta["index_kind"]

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def num_boxes(self) -> int:
        """Number of indexed boxes = feature rows."""
        return int(self._conn.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM boxes").fetchone()[0])

    @property
    def num_images(self) -> int:
        """Number of images indexed successfully (with or without persons)."""
        return int(
            self._conn.execute("SELECT COUNT(*) FROM images WHERE status='ok'").fetchone()[0]
        )

    def known_images(self) -> dict[str, IndexedImage]:
        """Every image the index has seen, ok or failed, by stored path."""
        rows = self._conn.execute("SELECT path, size, mtime, status, error FROM images")
        return {row[0]: IndexedImage(*row) for row in rows}

    def failed_images(self) -> list[tuple[str, str]]:
        """(path, error) of every image that could not be indexed."""
        rows = self._conn.execute(
            "SELECT path, COALESCE(error, '') FROM images WHERE status='failed' ORDER BY path"
        )
        return [(path, error) for path, error in rows]

    def rows(self) -> list[tuple[str, tuple[float, float, float, float], float]]:
        """(image path, box, detection score) of every feature row, in row order."""
        query = (
            "SELECT i.path, b.x1, b.y1, b.x2, b.y2, b.det_score FROM boxes b "
            "JOIN images i ON i.id = b.image_id ORDER BY b.id"
        )
        return [(p, (x1, y1, x2, y2), s) for p, x1, y1, x2, y2, s in self._conn.execute(query)]

    def vectors(self) -> np.ndarray:
        """All features, rows x dim float32, in row order (read from the shards)."""
        parts = []
        expected = 0
        query = "SELECT file, first_row, n_rows FROM shards ORDER BY first_row"
        for file, first_row, n_rows in self._conn.execute(query).fetchall():
            if first_row != expected:
                raise GalleryIndexError(
                    f"gallery index {self.folder} is damaged: shard {file} starts at row "
                    f"{first_row}, expected {expected}"
                )
            parts.append(self._load_shard(file, n_rows))
            expected += n_rows
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts)

    def records(self) -> list[ImageRecord]:
        """Every image as recorded, in the order it was added, with its boxes in row order.

        With `vectors()` this is exactly what `add_batch` took: adding both to an empty index
        reproduces this one row for row (how shards built elsewhere are merged).
        """
        boxes: dict[int, list[tuple[float, float, float, float, float]]] = {}
        query = "SELECT image_id, x1, y1, x2, y2, det_score FROM boxes ORDER BY id"
        for image_id, x1, y1, x2, y2, score in self._conn.execute(query):
            boxes.setdefault(image_id, []).append((x1, y1, x2, y2, score))
        records = []
        query = (
            "SELECT id, path, sha1, size, mtime, width, height, camera, error FROM images "
            "ORDER BY id"
        )
        for image_id, *fields, error in self._conn.execute(query).fetchall():
            own = np.asarray(boxes.get(image_id, []), dtype=np.float32).reshape(-1, 5)
            records.append(ImageRecord(*fields, boxes=own[:, :4], scores=own[:, 4], error=error))
        return records

    # ---- adding --------------------------------------------------------------------------

    def add_batch(self, records: Sequence[ImageRecord], features: np.ndarray) -> None:
        """Record a batch of images and their boxes; `features` has one row per box, in order.

        Images already indexed successfully are refused (the caller filters them); a previously
        failed image may be recorded again (it is retried).
        """
        if not self.writable:
            raise GalleryIndexError(f"gallery index {self.folder} was opened read-only")
        n_boxes = sum(len(r.boxes) for r in records)
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape != (n_boxes, self.dim):
            raise GalleryIndexError(
                f"expected {n_boxes} x {self.dim} features for this batch, got {features.shape}"
            )
        if not np.isfinite(features).all():
            raise GalleryIndexError("features contain NaN or infinite values")
        first_row = self.num_boxes
        shard_file = f"{first_row:012d}-{n_boxes:06d}.npy" if n_boxes else None
        if shard_file is not None:
            # Durable before any row references it; an unreferenced shard is garbage.
            with atomic_open(self.folder / SHARD_DIR / shard_file, "wb") as handle:
                np.save(handle, features)
            _fsync_dir(self.folder / SHARD_DIR)
        try:
            with _transaction(self._conn):
                self._insert_batch(records, shard_file, first_row, n_boxes)
        except BaseException:
            if shard_file is not None:
                (self.folder / SHARD_DIR / shard_file).unlink(missing_ok=True)
            raise

    def _insert_batch(
        self, records: Sequence[ImageRecord], shard_file: str | None, first_row: int, n_boxes: int
    ) -> None:
        conn = self._conn
        shard_id = None
        if shard_file is not None:
            shard_id = conn.execute(
                "INSERT INTO shards (file, first_row, n_rows) VALUES (?, ?, ?)",
                (shard_file, first_row, n_boxes),
            ).lastrowid
        row = first_row
        for record in records:
            previous = conn.execute(
                "SELECT id, status FROM images WHERE path = ?", (record.path,)
            ).fetchone()
            if previous is not None and previous[1] == "ok":
                raise GalleryIndexError(f"image already indexed: {record.path}")
            if previous is not None:  # a retried failure: replace its record
                conn.execute("DELETE FROM images WHERE id = ?", (previous[0],))
            image_id = conn.execute(
                "INSERT INTO images (path, sha1, size, mtime, width, height, camera, status, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.path,
                    record.sha1,
                    int(record.size),
                    float(record.mtime),
                    int(record.width),
                    int(record.height),
                    int(record.camera),
                    record.status,
                    record.error,
                ),
            ).lastrowid
            for box, score in zip(record.boxes.tolist(), record.scores.tolist(), strict=True):
                conn.execute(
                    "INSERT INTO boxes (id, image_id, x1, y1, x2, y2, det_score, shard_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row, image_id, *box, score, shard_id),
                )
                row += 1

    # ---- what the writer is working on (crash recovery) ----------------------------------

    def begin_image(self, path: str, deaths: int = 0) -> None:
        """Note that `path` is being read and detected; `deaths`: earlier deaths on it in a row.

        Written without fsync: the note has to outlive this process (a crash in native code),
        not the machine; losing it only means the image is tried again.
        """
        if not self.writable:
            raise GalleryIndexError(f"gallery index {self.folder} was opened read-only")
        note = json.dumps({"path": path, "deaths": int(deaths)})
        (self.folder / PROGRESS_NAME).write_text(note, encoding="utf-8")

    def end_image(self) -> None:
        """The noted image is done (or failed with an exception): remove the note."""
        (self.folder / PROGRESS_NAME).unlink(missing_ok=True)

    def interrupted_image(self) -> InterruptedImage | None:
        """The image a previous writer noted and never finished: its process died on it."""
        try:
            note = json.loads((self.folder / PROGRESS_NAME).read_text(encoding="utf-8"))
            return InterruptedImage(str(note["path"]), int(note["deaths"]) + 1)
        except (OSError, ValueError, TypeError, KeyError):  # none, or cut short by a kill
            return None

    def _set_meta(self, key: str, value: str) -> None:
        with _transaction(self._conn):
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self._meta[key] = value

    # ---- looking up rows -----------------------------------------------------------------

    def allowed_rows(
        self, cameras: Iterable[int] | None, exclude_paths: Iterable[str] | None
    ) -> np.ndarray | None:
        """The rows a filtered search may return (None: all). Lists of any length are looked
        up in chunks (SQLite bounds the variables of one statement); cameras outside SQLite's
        64-bit integers match nothing."""
        if cameras is None and not exclude_paths:
            return None
        if cameras is not None:
            cams = sorted({c for c in map(int, cameras) if c in SQLITE_INTEGERS})
            allowed = self._rows_where("i.camera", cams)
        else:
            allowed = np.array(
                [r[0] for r in self._conn.execute("SELECT id FROM boxes")], dtype=np.int64
            )
        excluded = sorted(set(exclude_paths or []))
        if excluded and len(allowed):
            allowed = np.setdiff1d(allowed, self._rows_where("i.path", excluded))
        return allowed

    def _rows_where(self, column: str, values: Sequence[object]) -> np.ndarray:
        """Rows (boxes.id) whose image's `column` is one of `values`, looked up in chunks."""
        rows: list[int] = []
        for chunk in _chunks(values):
            query = (
                "SELECT b.id FROM boxes b JOIN images i ON i.id = b.image_id "
                f"WHERE {column} IN ({','.join('?' * len(chunk))})"
            )
            rows += [r[0] for r in self._conn.execute(query, chunk)]
        return np.unique(np.array(rows, dtype=np.int64))

    def box_metadata(self, rows: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{row: image_path, box, det_score, camera} of the given feature rows."""
        found: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(rows))):
            query = (
                "SELECT b.id, i.path, b.x1, b.y1, b.x2, b.y2, b.det_score, i.camera FROM boxes b "
                f"JOIN images i ON i.id = b.image_id WHERE b.id IN ({','.join('?' * len(chunk))})"
            )
            for row, path, x1, y1, x2, y2, score, camera in self._conn.execute(query, chunk):
                found[row] = {
                    "image_path": path,
                    "box": (x1, y1, x2, y2),
                    "det_score": score,
                    "camera": camera,
                }
        return found

    # ---- housekeeping --------------------------------------------------------------------

    def _check_version(self) -> None:
        version = self._meta.get("version")
        if version != INDEX_VERSION:
            raise GalleryIndexError(
                f"gallery index {self.folder} has format version {version!r}; this personsearch "
                f"reads version {INDEX_VERSION!r}: rebuild the index"
            )

    def check_model(self, fingerprint: str, dim: int | None = None) -> None:
        """Refuse (GalleryIndexError) a model other than the one that built this index."""
        stored = self.fingerprint
        if stored != fingerprint:
            built_by = f" (from {self._meta['run']})" if self._meta.get("run") else ""
            raise GalleryIndexError(
                f"gallery index {self.folder} was built by model {stored!r}{built_by}, not by the "
                f"current model {fingerprint!r}: features of different models cannot be compared. "
                "Use the model that built the index, or build a new index with this one."
            )
        if dim is not None and dim != self.dim:
            raise GalleryIndexError(
                f"gallery index {self.folder} holds {self.dim}-d features but the model makes "
                f"{dim}-d features"
            )

    def _load_shard(self, file: str, n_rows: int) -> np.ndarray:
        path = self.folder / SHARD_DIR / file
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise GalleryIndexError(
                f"gallery index {self.folder} is damaged: cannot read feature shard {path}: {error}"
            ) from error
        if array.shape != (n_rows, self.dim) or array.dtype != np.float32:
            raise GalleryIndexError(
                f"gallery index {self.folder} is damaged: shard {path} holds {array.shape} "
                f"{array.dtype}, expected ({n_rows}, {self.dim}) float32"
            )
        bad = _non_finite_rows(array)
        if len(bad):  # never written so (add_batch refuses them): FAISS would drop NaN rows
            raise GalleryIndexError(
                f"gallery index {self.folder} is damaged: shard {path} holds NaN or infinite "
                f"features in {len(bad)} of its {n_rows} rows (first: row {int(bad[0])}); "
                "rebuild the index"
            )
        return np.asarray(array)

    def _delete_unreferenced_shards(self) -> None:
        """Remove shards no transaction committed (a writer died before its commit)."""
        referenced = {r[0] for r in self._conn.execute("SELECT file FROM shards")}
        for path in (self.folder / SHARD_DIR).iterdir():
            if path.name not in referenced:
                path.unlink(missing_ok=True)


# ---- the server's read-only lookups: on a connection from `connect_shared_reader` -----------

_IMAGE_COLUMNS = (
    "i.id, i.path, i.width, i.height, i.camera, "
    "(SELECT COUNT(*) FROM boxes b WHERE b.image_id = i.id)"
)


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


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The `meta` table: version, fingerprint, dim, index_kind and the indexer's extra info."""
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def image_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(images indexed successfully, images that failed)."""
    ((ok, failed),) = conn.execute(
        "SELECT COALESCE(SUM(status = 'ok'), 0), COALESCE(SUM(status = 'failed'), 0) "
        "FROM images"
    ).fetchall()
    return int(ok), int(failed)


def box_count(conn: sqlite3.Connection) -> int:
    """Person boxes recorded."""
    return int(conn.execute("SELECT COUNT(*) FROM boxes").fetchone()[0])


def cameras(conn: sqlite3.Connection) -> list[int]:
    """The known cameras (>= 0) of the successfully indexed images, ascending."""
    query = (
        "SELECT DISTINCT camera FROM images WHERE status = 'ok' AND camera >= 0 ORDER BY camera"
    )
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
        f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE {where} ORDER BY i.id LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return int(total), [ImageSummary(*row) for row in rows]


def image_by_id(conn: sqlite3.Connection, image_id: int) -> ImageSummary | None:
    """The image with this `images.id`, if it was indexed successfully."""
    row = conn.execute(
        f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE i.id = ? AND i.status = 'ok'", [image_id]
    ).fetchone()
    return None if row is None else ImageSummary(*row)


def boxes_of_image(
    conn: sqlite3.Connection, image_id: int
) -> list[tuple[int, tuple[float, float, float, float], float]]:
    """(row, box, detection score) of the image's person boxes, in row order."""
    rows = conn.execute(
        "SELECT id, x1, y1, x2, y2, det_score FROM boxes WHERE image_id = ? ORDER BY id",
        [image_id],
    ).fetchall()
    return [(r, (x1, y1, x2, y2), s) for r, x1, y1, x2, y2, s in rows]


def images_by_path(conn: sqlite3.Connection, paths: Iterable[str]) -> list[ImageSummary]:
    """The images (any status) stored under these paths; any number, looked up in chunks."""
    found: list[ImageSummary] = []
    for chunk in _chunks(sorted(set(paths))):
        rows = conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images i "
            f"WHERE i.path IN ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        found += [ImageSummary(*row) for row in rows]
    return found


# ---- helpers -----------------------------------------------------------------------------


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    """`values` in lists of at most SQL_CHUNK (SQLite bounds the variables of one statement)."""
    for start in range(0, len(values), SQL_CHUNK):
        yield list(values[start : start + SQL_CHUNK])


def _non_finite_rows(array: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Indices of the rows holding NaN or inf, checked a chunk of rows at a time (bounded memory)."""
    bad = [
        start + np.flatnonzero(~np.isfinite(np.asarray(array[start : start + chunk])).all(axis=1))
        for start in range(0, len(array), chunk)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def _connect(db: Path, read_only: bool = False) -> sqlite3.Connection:
    try:
        if read_only:  # never creates or changes a file (no journal: nothing is written)
            uri = f"{db.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(db, isolation_level=None)  # transactions are explicit
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        raise GalleryIndexError(f"cannot read gallery index database {db}: {error}") from error
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _acquire_write_lock(path: Path) -> Any:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the index's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise GalleryIndexError(
            f"gallery index {path.parent} is being written by another process "
            f"(lock {path} is held); wait for it to finish"
        ) from None
    return handle


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
