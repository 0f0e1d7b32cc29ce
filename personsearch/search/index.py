"""The gallery index: person boxes of scene images and their features, on disk, crash-safe.

An index is a folder:

    index.sqlite         metadata: meta(key, value), images, boxes, shards (schema below)
    shards/*.npy         features, float32 rows; feature row r belongs to boxes.id = r
    faiss/<kind>-<rows>.faiss   cached FAISS index covering the first <rows> rows (derived data)
    write.lock           held (flock) by the one process allowed to add images
    in-progress.json     the image the writer is reading and detecting now (see `begin_image`)

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

The FAISS index is derived from the shards: built on first search, cached to disk atomically
under a name that says how many rows it covers, and extended (not rebuilt) when rows were added.
Kinds: "flat" (exact inner product, the default), "hnsw", "ivf" and "ivfpq" (approximate, for
large galleries; "ivfpq" scans compressed codes and re-ranks its candidates exactly, the fast one
at a million boxes). Features are L2-normalised, so inner product is cosine similarity.

An index belongs to the embedder that built it (its `fingerprint` and `dim`): opening it with
another embedder is refused, since features of two models cannot be compared.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personsearch.errors import PersonSearchError
from personsearch.io import atomic_open, atomic_path

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
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

HNSW_NEIGHBORS = 32  # graph degree M: recall vs memory
HNSW_EF_CONSTRUCTION = 80

# "ivfpq": 4-bit PQ codes (one byte per IVFPQ_SUBVECTOR_DIMS * 2 dims, scanned in SIMD
# registers) find candidates; the best top_k * IVFPQ_K_FACTOR are re-ranked with the exact
# vectors. Defaults measured with benchmarks/bench_index.py (docs/benchmarks.md).
IVFPQ_SUBVECTOR_DIMS = 8
IVFPQ_K_FACTOR = 16
IVFPQ_PROBE_FRACTION = 0.5  # default nprobe = this share of the lists

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

_CACHE_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<rows>\d+)\.faiss$")
_SQL_CHUNK = 500  # values bound in one IN (...) list: SQLite allows 999 on old builds
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # SQLite's integers


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


def crash_error(deaths: int) -> str:
    """The error recorded for an image the indexing process died on `deaths` times."""
    return (
        f"{CRASH_ERROR} ({deaths} times in a row: a crash in native code, e.g. the image decoder "
        "or the detector, or the process was killed); skipped, retried once the file changes"
    )


def is_crash_error(error: str | None) -> bool:
    return bool(error) and str(error).startswith(CRASH_ERROR)


@dataclass(frozen=True)
class SearchHit:
    """One ranked result: a person box in a gallery image."""

    image_path: str
    box: tuple[float, float, float, float]  #: x1 y1 x2 y2 in pixels
    det_score: float
    similarity: float  #: inner product of L2-normalised features (cosine)
    camera: int  #: -1 where unknown
    row: int  #: the feature row / boxes.id in the index


class GalleryIndex:
    """A gallery of person boxes with features; see the module docstring for the layout.

    Open with `GalleryIndex.open` (search only) or `GalleryIndex.open_for_writing` (create or add).
    """

    def __init__(self, folder: Path, conn: sqlite3.Connection, lock: Any | None = None) -> None:
        self.folder = folder
        self._conn = conn
        self._lock = lock
        self._meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._faiss: Any | None = None
        self._faiss_rows = -1
        self._faiss_kind = ""

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, folder: str | os.PathLike[str], *, fingerprint: str | None = None
    ) -> GalleryIndex:
        """Open an existing index for searching; refuse it if `fingerprint` differs from its model."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            raise GalleryIndexError(
                f"no gallery index at {folder} ({DB_NAME} not found): build one with "
                "`personsearch index --gallery DIR --out INDEX`"
            )
        # Read-only: searching needs no write access to the folder (a read-only mount, another
        # user's index) and never changes it; the FAISS index is then built in memory if its
        # cache is missing or stale (the writer caches it: `index` ends with prepare()).
        conn = _connect(db, read_only=True)
        try:
            index = cls(folder, conn)
        except sqlite3.DatabaseError as error:  # a zero-byte or foreign index.sqlite
            conn.close()
            raise GalleryIndexError(
                f"gallery index {folder} is damaged: {DB_NAME} ({db.stat().st_size} bytes) "
                f"is not an index database ({error}); rebuild it with `personsearch index`"
            ) from error
        index._check_version()
        if fingerprint is not None:
            index.check_model(fingerprint, None)
        return index

    @classmethod
    def open_for_writing(
        cls,
        folder: str | os.PathLike[str],
        *,
        fingerprint: str,
        dim: int,
        index_kind: str | None = None,
        info: Mapping[str, str] | None = None,
    ) -> GalleryIndex:
        """Create the index, or open an existing one to add images (one writer at a time).

        `info` is extra metadata stored at creation (e.g. the detector, the run folder). On an
        existing index, `index_kind` (if given) replaces the stored kind: the FAISS index is
        derived data and is rebuilt.
        """
        if index_kind is not None and index_kind not in INDEX_KINDS:
            raise GalleryIndexError(f"unknown index kind {index_kind!r}: use one of {INDEX_KINDS}")
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
                    "index_kind": index_kind or "flat",
                }
                with _transaction(conn):
                    conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            index = cls(folder, conn, lock)
            index._check_version()
            index.check_model(fingerprint, int(dim))
            if index_kind is not None and index_kind != index.index_kind:
                index._set_meta("index_kind", index_kind)
            index._delete_unreferenced_files()
            return index
        except BaseException:
            lock.close()
            raise

    def close(self) -> None:
        """Close the database and release the write lock."""
        self._conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def __len__(self) -> int:
        return self.num_boxes

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

    # ---- searching -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Build (or load) the FAISS index now and cache it, so the first search is fast."""
        self._faiss_index()

    def adopt_faiss_index(self, index: Any) -> None:
        """Make a FAISS index built elsewhere (e.g. merged from shards) this index's cached one.

        It must be of this index's kind and hold exactly its rows, in row order (FAISS id = row);
        searches then use it as if it had been built here.
        """
        import faiss

        kind, rows = self.index_kind, self.num_boxes
        expected = {
            "flat": faiss.IndexFlat,
            "hnsw": faiss.IndexHNSW,
            "ivf": faiss.IndexIVF,
            "ivfpq": faiss.IndexRefine,
        }[kind]
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise GalleryIndexError(
                f"gallery index {self.folder} is a {kind!r} inner-product index; cannot adopt a "
                f"{type(index).__name__} (metric {index.metric_type})"
            )
        if index.ntotal != rows or index.d != self.dim:
            raise GalleryIndexError(
                f"gallery index {self.folder} has {rows} rows of {self.dim}-d features; cannot "
                f"adopt a FAISS index of {index.ntotal} {index.d}-d vectors"
            )
        self._write_cache(index, kind, rows)
        self._faiss, self._faiss_rows, self._faiss_kind = index, rows, kind

    def search(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        *,
        cameras: Iterable[int] | None = None,
        exclude_paths: Iterable[str] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[SearchHit]]:
        """Rank gallery boxes for each query (Q x dim, L2-normalised): best first, top_k each.

        `cameras` keeps only boxes from those cameras; `exclude_paths` drops boxes of those
        images (e.g. the probe's own image). `ef_search` (HNSW) and `nprobe` (IVF) trade speed
        for recall.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise GalleryIndexError(
                f"queries must be Q x {self.dim} features for this index, got {queries.shape}"
            )
        if not np.isfinite(queries).all():
            raise GalleryIndexError("query features contain NaN or infinite values")
        allowed = self._allowed_rows(cameras, exclude_paths)
        candidates = self.num_boxes if allowed is None else len(allowed)
        k = min(int(top_k), candidates)
        if k <= 0:
            return [[] for _ in range(len(queries))]
        index = self._faiss_index()
        params = self._search_params(index, allowed, k, ef_search, nprobe)
        similarities, rows = index.search(queries, k, params=params)
        self._check_search_output(similarities, rows, exact=self.index_kind == "flat")
        metadata = self._box_metadata(rows[rows >= 0].tolist())
        return [
            [
                SearchHit(**metadata[int(r)], similarity=float(s), row=int(r))
                for s, r in zip(sims, ids, strict=True)
                if r >= 0
            ]
            for sims, ids in zip(similarities, rows, strict=True)
        ]

    def search_one(self, query: np.ndarray, top_k: int = 10, **filters: Any) -> list[SearchHit]:
        """`search` for a single feature vector."""
        return self.search(np.asarray(query, dtype=np.float32).reshape(1, -1), top_k, **filters)[0]

    def _check_search_output(self, similarities: np.ndarray, rows: np.ndarray, exact: bool) -> None:
        """Refuse results that only non-finite features can explain, naming the damage.

        FAISS ranks a row holding inf above everything and silently leaves out a row holding
        NaN: an exact search returning fewer than k rows, or any non-finite similarity, means
        the FAISS index holds such rows. The shards are checked first (a damaged shard is named);
        if they are intact, the cached FAISS index itself is damaged.
        """
        returned = rows >= 0
        short = exact and not returned.all()
        if not short and np.isfinite(similarities[returned]).all():
            return
        self.vectors()  # raises GalleryIndexError naming a shard with non-finite rows
        raise GalleryIndexError(
            f"gallery index {self.folder} is damaged: its cached FAISS index ({CACHE_DIR}/"
            f"{self.index_kind}-{self.num_boxes}.faiss) holds NaN or infinite features that its "
            f"shards do not; delete {CACHE_DIR}/ to rebuild it"
        )

    def _allowed_rows(
        self, cameras: Iterable[int] | None, exclude_paths: Iterable[str] | None
    ) -> np.ndarray | None:
        """The rows a filtered search may return (None: all). Lists of any length are looked
        up in chunks (SQLite bounds the variables of one statement); cameras outside SQLite's
        64-bit integers match nothing."""
        if cameras is None and not exclude_paths:
            return None
        if cameras is not None:
            cams = sorted({c for c in map(int, cameras) if _INT64_MIN <= c <= _INT64_MAX})
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
        for start in range(0, len(values), _SQL_CHUNK):
            chunk = list(values[start : start + _SQL_CHUNK])
            query = (
                "SELECT b.id FROM boxes b JOIN images i ON i.id = b.image_id "
                f"WHERE {column} IN ({','.join('?' * len(chunk))})"
            )
            rows += [r[0] for r in self._conn.execute(query, chunk)]
        return np.unique(np.array(rows, dtype=np.int64))

    def _search_params(
        self, index: Any, allowed: np.ndarray | None, k: int, ef: int | None, nprobe: int | None
    ) -> Any:
        import faiss

        selector = None if allowed is None else faiss.IDSelectorBatch(allowed)
        filtered = None  # the parameters the selector goes to, when not `params` itself
        if isinstance(index, faiss.IndexRefine):  # "ivfpq"
            params, filtered = ivfpq_search_params(index, nprobe)
        elif isinstance(index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=ef or max(64, 2 * k))
        elif isinstance(index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(nprobe=nprobe or min(index.nlist, 16))
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            target = params if filtered is None else filtered
            target.sel = selector
            target._selector = selector  # keep the selector alive as long as the parameters
        return params

    def _box_metadata(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        unique = sorted(set(rows))
        for start in range(0, len(unique), _SQL_CHUNK):  # SQLite bounds a statement's variables
            chunk = unique[start : start + _SQL_CHUNK]
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

    # ---- the FAISS index (derived, cached) -----------------------------------------------

    def _faiss_index(self) -> Any:
        rows, kind = self.num_boxes, self.index_kind
        if self._faiss is not None and (self._faiss_rows, self._faiss_kind) == (rows, kind):
            return self._faiss
        cached_rows, index = self._load_cached(kind, rows)
        if index is None or cached_rows < rows:
            vectors = self.vectors()
            if index is not None and _can_extend(kind, cached_rows, rows):
                index.add(np.ascontiguousarray(vectors[cached_rows:]))
            else:
                index = build_faiss_index(vectors, kind)
            if self.writable:  # opened read-only: nothing is written, the index stays in memory
                self._write_cache(index, kind, rows)
        self._faiss, self._faiss_rows, self._faiss_kind = index, rows, kind
        return index

    def _write_cache(self, index: Any, kind: str, rows: int) -> None:
        import faiss

        cache_dir = self.folder / CACHE_DIR
        with atomic_path(cache_dir / f"{kind}-{rows}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        for old in cache_dir.glob(f"{kind}-*.faiss"):  # superseded caches
            if old.name != f"{kind}-{rows}.faiss":
                old.unlink(missing_ok=True)

    def _load_cached(self, kind: str, rows: int) -> tuple[int, Any | None]:
        """The cached index of this kind covering the most rows (<= rows), if readable."""
        import faiss

        candidates = []
        for path in (self.folder / CACHE_DIR).glob(f"{kind}-*.faiss"):
            match = _CACHE_NAME.match(path.name)
            if match and match["kind"] == kind and int(match["rows"]) <= rows:
                candidates.append((int(match["rows"]), path))
        for cached_rows, path in sorted(candidates, reverse=True):
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:  # damaged or being replaced: it is only a cache
                continue
            if index.ntotal == cached_rows and index.d == self.dim:
                return cached_rows, index
        return 0, None

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

    def _delete_unreferenced_files(self) -> None:
        """Remove shards no transaction committed and temporary files of killed writers."""
        referenced = {r[0] for r in self._conn.execute("SELECT file FROM shards")}
        for path in (self.folder / SHARD_DIR).iterdir():
            if path.name not in referenced:
                path.unlink(missing_ok=True)
        cache_dir = self.folder / CACHE_DIR
        if cache_dir.is_dir():
            for path in cache_dir.iterdir():
                if not _CACHE_NAME.match(path.name):
                    path.unlink(missing_ok=True)


def build_faiss_index(vectors: np.ndarray, kind: str) -> Any:
    """A FAISS inner-product index of `kind` ("flat", "hnsw", "ivf", "ivfpq") holding `vectors`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = empty_faiss_index(kind, dim, n)
    if kind == "ivf" and n:
        rows = ivf_training_rows(n, index.nlist)
        index.train(vectors if rows is None else vectors[rows])
    if kind == "ivfpq" and n:
        rows = ivf_training_rows(n, ivfpq_nlist(n))
        index.train(ivfpq_training_set(vectors if rows is None else vectors[rows]))
    if n:
        index.add(vectors)
    return index


def empty_faiss_index(kind: str, dim: int, n: int) -> Any:
    """The empty (untrained) FAISS inner-product index of `kind` for a gallery of `n` rows."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    if kind == "ivf":
        # ~4 sqrt(N) lists, and at least 39 training points per list (FAISS's own minimum).
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        spec = f"IVF{ivfpq_nlist(n)},PQ{_pq_subquantizers(dim)}x4fs,RFlat"
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        index.k_factor = IVFPQ_K_FACTOR
        ivf = faiss.downcast_index(index.base_index)
        # Small galleries train on fewer points than FAISS asks for (39 per centroid): fine
        # here, since the candidates are re-ranked exactly; keep its warnings off the console.
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1
        return index
    raise GalleryIndexError(f"unknown index kind {kind!r}: use one of {INDEX_KINDS}")


def ivfpq_nlist(n: int) -> int:
    """IVF lists of an "ivfpq" index over `n` rows: ~2 sqrt(N), at least 39 rows each.

    Fewer lists than "ivf" (4 sqrt(N)): scanning codes is cheap, so a query probes a large
    share of the lists, and fewer centroids make that share cheaper to pick.
    """
    return max(1, min(int(2 * np.sqrt(n)), n // 39))


def ivfpq_training_set(sample: np.ndarray) -> np.ndarray:
    """`sample`, repeated up to the 16 rows a 4-bit PQ codebook needs (tiny galleries)."""
    if len(sample) >= 16:
        return sample
    return np.resize(sample, (16, sample.shape[1]))


def ivfpq_search_params(
    index: Any, nprobe: int | None = None, k_factor: int = IVFPQ_K_FACTOR
) -> tuple[Any, Any]:
    """Search parameters of an "ivfpq" index, and the IVF part's (where a selector goes).

    `nprobe` defaults to IVFPQ_PROBE_FRACTION of the lists; the best k * `k_factor` candidates
    of the compressed scan are re-ranked with the exact vectors.
    """
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    base = faiss.SearchParametersIVF(nprobe=nprobe or max(1, round(IVFPQ_PROBE_FRACTION * nlist)))
    params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
    params._base = base  # the C++ parameters point at it: keep it alive with them
    return params, base


def _pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers of about IVFPQ_SUBVECTOR_DIMS dims each that split `dim` exactly."""
    for sub_dims in range(min(IVFPQ_SUBVECTOR_DIMS, dim), dim + 1):
        if dim % sub_dims == 0:
            return dim // sub_dims
    return 1


def ivf_training_rows(n: int, nlist: int) -> np.ndarray | None:
    """The rows an IVF index of `nlist` lists over `n` rows trains on (None: all of them).

    k-means on a seeded sample (~64 points per list) instead of every vector: the lists are as
    good and training at 1M boxes takes minutes instead of an hour.
    """
    if n <= 64 * nlist:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, 64 * nlist, replace=False))


def _can_extend(kind: str, cached_rows: int, rows: int) -> bool:
    # Flat and HNSW grow exactly; an IVF's lists were trained on a sample that must stay
    # representative, so it is retrained once the gallery has more than doubled.
    if cached_rows == 0:
        return False
    return kind not in ("ivf", "ivfpq") or 2 * cached_rows >= rows


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
