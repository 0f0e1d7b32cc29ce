"""The index folder's layout and its database schema: the one place that defines them.

    index.sqlite         metadata: meta(key, value), images, boxes, shards, videos (SCHEMA below)
    shards/*.npy         features, float32 rows; feature row r belongs to boxes.id = r
    faiss/<kind>-<rows>.faiss   cached FAISS index covering the first <rows> rows (derived data,
                         see `personsearch.search.faiss_backends`)
    write.lock           held (flock) by the one process allowed to add images
    in-progress.json     the image the writer is reading and detecting now (see `journal`)

A new column or table goes into SCHEMA here (with INDEX_VERSION raised and a step added to
MIGRATIONS); the statements that fill and read it live in `writer`, `gallery` and `queries`.

A video is one row of `images` (its path, size, the upright frame's width and height) plus one
row of `videos` (how it is sampled, how far indexing got, the tracker's and the frame sampler's
state there); each of its boxes records the frame number, the time in seconds and the track it
belongs to (NULL for a still image). Indexes of an older version (1: images only; 2: no sampler
state, so a killed video resumes by decoding from its start) are read as they are and upgraded
in place (columns and a table added, nothing rewritten) the first time they are opened for
writing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from personsearch.search.store.records import GalleryIndexError

INDEX_VERSION = "3"
#: Versions this code reads; older ones are upgraded when opened for writing.
READABLE_VERSIONS = ("1", "2", "3")

DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
CACHE_DIR = "faiss"
LOCK_NAME = "write.lock"
PROGRESS_NAME = "in-progress.json"

#: Values bound in one IN (...) list: SQLite allows 999 on old builds.
SQL_CHUNK = 500
#: SQLite's integers: an id or camera outside matches nothing.
SQLITE_INTEGERS = range(-(2**63), 2**63)

SCHEMA = """
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
    shard_id INTEGER NOT NULL REFERENCES shards(id),
    frame INTEGER,  -- videos: the frame number (NULL: a still image)
    time_s REAL,    -- videos: seconds from the start
    track INTEGER   -- videos: the track id within the video (-1: in no track)
);
CREATE INDEX IF NOT EXISTS boxes_image ON boxes(image_id);
CREATE TABLE IF NOT EXISTS videos (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    sampling TEXT NOT NULL,          -- "fps=2", "keyframes" or "every frame"
    fps REAL NOT NULL,               -- the stream's frame rate
    duration_s REAL,                 -- as the header says (NULL: unknown)
    frames_sampled INTEGER NOT NULL, -- sampled frames committed so far
    last_frame INTEGER NOT NULL,     -- the last committed frame's number (-1: none yet)
    last_time_s REAL,                -- and its time
    tracker TEXT NOT NULL,           -- the tracker's state after last_frame (JSON)
    next_sample_s REAL,              -- when the sampler takes its next frame (NULL: unknown)
    complete INTEGER NOT NULL DEFAULT 0,  -- 1: read to its end, or stopped for good (error)
    error TEXT                       -- why decoding stopped before the end (frames before stay)
);
"""

#: The columns (table, name, type) upgrading an index of the key's version to the next one
#: adds; tables new in a version come from SCHEMA (run before the upgrade, with every column).
MIGRATIONS = {
    "1": (
        ("boxes", "frame", "INTEGER"),
        ("boxes", "time_s", "REAL"),
        ("boxes", "track", "INTEGER"),
    ),
    "2": (("videos", "next_sample_s", "REAL"),),
}
#: Created after the migrations (they need the new columns).
TRACK_INDEX = "CREATE INDEX IF NOT EXISTS boxes_track ON boxes(image_id, track)"


def connect(db: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection to an index database, in autocommit mode (transactions are explicit)."""
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
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed if the block succeeds, rolled back otherwise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The `meta` table: version, fingerprint, dim, index_kind and the indexer's extra info."""
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def check_version(meta: dict[str, str], folder: Path) -> None:
    """Refuse an index of a format version this code does not read."""
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise GalleryIndexError(
            f"gallery index {folder} has format version {version!r}; this personsearch "
            f"reads versions {', '.join(READABLE_VERSIONS)}: rebuild the index (or use the "
            "personsearch that built it)"
        )


def upgrade(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    """Bring an index of an older readable version to INDEX_VERSION, in one transaction."""
    version = meta.get("version")
    if version == INDEX_VERSION:
        return
    with transaction(conn):
        while version != INDEX_VERSION:
            for table, column, kind in MIGRATIONS[str(version)]:
                if not has_column(conn, table, column):  # a table SCHEMA just made has it
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            version = str(int(version) + 1)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (INDEX_VERSION,))
    meta["version"] = INDEX_VERSION


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether `table` has `column` (an older index, read as it is, may lack it)."""
    return column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def has_video_columns(conn: sqlite3.Connection) -> bool:
    """Whether the boxes table has the frame, time and track columns (version 2 on)."""
    return has_column(conn, "boxes", "track")


def chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    """`values` in lists of at most SQL_CHUNK (SQLite bounds the variables of one statement)."""
    for start in range(0, len(values), SQL_CHUNK):
        yield list(values[start : start + SQL_CHUNK])


def placeholders(values: Sequence[Any]) -> str:
    """ "?,?,?" for binding `values` in an IN (...) list."""
    return ",".join("?" * len(values))
