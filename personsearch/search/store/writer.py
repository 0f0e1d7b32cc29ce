"""Writing an index folder: creating it, taking its write lock, committing batches of detections.

Adding is incremental and crash-safe: a batch's features are written to a new shard file first
(atomically, fsynced), then ONE SQLite transaction records the shard, the batch's images and
their boxes. A crash before the commit leaves an unreferenced shard, deleted the next time the
index is opened for writing (`delete_unreferenced_shards`); a crash after it leaves a complete
batch. Either way nothing is lost or recorded twice, and re-running the indexing picks up where
it stopped.

A video is committed in chunks of sampled frames (`write_video_chunk`): each chunk's transaction
records its boxes AND the video's progress (last frame, tracker state), so a killed run resumes
after the last committed frame with the same tracks, and no frame is recorded twice.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.io import atomic_open
from personsearch.search.store.records import GalleryIndexError, ImageRecord, VideoChunk
from personsearch.search.store.schema import (
    CACHE_DIR,
    DB_NAME,
    INDEX_VERSION,
    LOCK_NAME,
    SCHEMA,
    SHARD_DIR,
    connect,
    transaction,
)


def open_database_for_writing(
    folder: Path,
    *,
    fingerprint: str,
    dim: int,
    index_kind: str | None,
    info: Mapping[str, str] | None,
) -> tuple[sqlite3.Connection, Any]:
    """(connection, held write lock) of the index database in `folder`, created if new.

    A new database gets the schema and its `meta`: `info`, the format version, the model's
    `fingerprint` and `dim`, and `index_kind` ("flat" when None). The caller checks an existing
    one against the model.
    """
    if int(dim) <= 0:
        raise GalleryIndexError(f"feature dimension must be positive, got {dim}")
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
        conn = connect(folder / DB_NAME)
        conn.executescript(SCHEMA)
        if fresh or not conn.execute("SELECT 1 FROM meta").fetchone():
            meta = {
                **{str(k): str(v) for k, v in (info or {}).items()},
                "version": INDEX_VERSION,
                "fingerprint": fingerprint,
                "dim": str(int(dim)),
                "index_kind": index_kind or "flat",  # the exact FAISS kind
            }
            with transaction(conn):
                conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        return conn, lock
    except BaseException:
        lock.close()
        raise


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Store one `meta` value (e.g. a new index kind)."""
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def write_batch(
    conn: sqlite3.Connection,
    folder: Path,
    records: Sequence[ImageRecord],
    features: np.ndarray,
    *,
    first_row: int,
    dim: int,
) -> None:
    """Commit a batch: its shard file (durable first), then one transaction for its rows.

    `features` has one row per box of `records`, in order; `first_row` is the next free row.
    """
    n_boxes = sum(len(r.boxes) for r in records)
    shard_file = _write_shard(folder, features, first_row, n_boxes, dim)
    try:
        with transaction(conn):
            shard_id = _insert_shard(conn, shard_file, first_row, n_boxes)
            row = first_row
            for record in records:
                image_id = _insert_image(conn, record)
                row = _insert_boxes(conn, image_id, record, shard_id, row)
    except BaseException:
        if shard_file is not None:
            (folder / SHARD_DIR / shard_file).unlink(missing_ok=True)
        raise


def write_video_chunk(
    conn: sqlite3.Connection,
    folder: Path,
    chunk: VideoChunk,
    features: np.ndarray,
    *,
    first_row: int,
    dim: int,
) -> None:
    """Commit a video chunk: its shard (durable first), then one transaction for its boxes and
    the video's progress. The video's `images` row is created by its first chunk (replacing a
    failed record of the same path: it is retried) and reused by the later ones."""
    n_boxes = len(chunk.video.boxes)
    shard_file = _write_shard(folder, features, first_row, n_boxes, dim)
    try:
        with transaction(conn):
            image_id = _video_image_id(conn, chunk)
            shard_id = _insert_shard(conn, shard_file, first_row, n_boxes)
            rows = range(first_row, first_row + n_boxes)
            values = zip(
                rows,
                chunk.video.boxes.tolist(),
                chunk.video.scores.tolist(),
                chunk.frames.tolist(),
                chunk.times.tolist(),
                chunk.tracks.tolist(),
                strict=True,
            )
            conn.executemany(
                "INSERT INTO boxes (id, image_id, x1, y1, x2, y2, det_score, shard_id, frame, "
                "time_s, track) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r, image_id, *box, s, shard_id, f, t, k) for r, box, s, f, t, k in values],
            )
            conn.execute(
                "UPDATE videos SET frames_sampled = frames_sampled + ?, last_frame = ?, "
                "last_time_s = ?, tracker = ?, next_sample_s = ?, complete = ?, error = ? "
                "WHERE image_id = ?",
                (
                    int(chunk.frames_sampled),
                    int(chunk.last_frame),
                    chunk.last_time_s,
                    chunk.tracker_state,
                    chunk.next_sample_s,
                    int(chunk.complete),
                    chunk.error,
                    image_id,
                ),
            )
    except BaseException:
        if shard_file is not None:
            (folder / SHARD_DIR / shard_file).unlink(missing_ok=True)
        raise


def _video_image_id(conn: sqlite3.Connection, chunk: VideoChunk) -> int:
    """The video's `images` id: its row if a video in progress, else a new one (with its
    `videos` row)."""
    row = conn.execute(
        "SELECT i.id, v.complete FROM images i JOIN videos v ON v.image_id = i.id "
        "WHERE i.path = ? AND i.status = 'ok'",
        (chunk.video.path,),
    ).fetchone()
    if row is not None:
        if row[1]:
            raise GalleryIndexError(f"video already indexed: {chunk.video.path}")
        return int(row[0])
    image_id = _insert_image(conn, chunk.video)
    conn.execute(
        "INSERT INTO videos (image_id, sampling, fps, duration_s, frames_sampled, last_frame, "
        "last_time_s, tracker) VALUES (?, ?, ?, ?, 0, -1, NULL, '{}')",
        (image_id, chunk.sampling, float(chunk.fps), chunk.duration_s),
    )
    return image_id


def delete_unreferenced_shards(conn: sqlite3.Connection, folder: Path) -> None:
    """Remove shards no transaction committed (a writer died before its commit)."""
    referenced = {r[0] for r in conn.execute("SELECT file FROM shards")}
    for path in (folder / SHARD_DIR).iterdir():
        if path.name not in referenced:
            path.unlink(missing_ok=True)


def _write_shard(
    folder: Path, features: np.ndarray, first_row: int, n_boxes: int, dim: int
) -> str | None:
    """Write a batch's features as a new shard file, durably; its name (None: no boxes)."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.shape != (n_boxes, dim):
        raise GalleryIndexError(
            f"expected {n_boxes} x {dim} features for this batch, got {features.shape}"
        )
    if not np.isfinite(features).all():
        raise GalleryIndexError("features contain NaN or infinite values")
    if not n_boxes:
        return None
    shard_file = f"{first_row:012d}-{n_boxes:06d}.npy"
    # Durable before any row references it; an unreferenced shard is garbage.
    with atomic_open(folder / SHARD_DIR / shard_file, "wb") as handle:
        np.save(handle, features)
    _fsync_dir(folder / SHARD_DIR)
    return shard_file


def _insert_shard(
    conn: sqlite3.Connection, shard_file: str | None, first_row: int, n_boxes: int
) -> int | None:
    if shard_file is None:
        return None
    return conn.execute(
        "INSERT INTO shards (file, first_row, n_rows) VALUES (?, ?, ?)",
        (shard_file, first_row, n_boxes),
    ).lastrowid


def _insert_boxes(
    conn: sqlite3.Connection, image_id: int, record: ImageRecord, shard_id: int | None, row: int
) -> int:
    """Insert a still image's boxes from feature row `row`; return the next free row."""
    values = [
        (row + i, image_id, *box, score, shard_id)
        for i, (box, score) in enumerate(
            zip(record.boxes.tolist(), record.scores.tolist(), strict=True)
        )
    ]
    conn.executemany(
        "INSERT INTO boxes (id, image_id, x1, y1, x2, y2, det_score, shard_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    return row + len(values)


def _insert_image(conn: sqlite3.Connection, record: ImageRecord) -> int:
    """Insert the image's row (replacing a failed one: it was retried); return its id."""
    previous = conn.execute(
        "SELECT id, status FROM images WHERE path = ?", (record.path,)
    ).fetchone()
    if previous is not None and previous[1] == "ok":
        raise GalleryIndexError(f"image already indexed: {record.path}")
    if previous is not None:  # a retried failure: replace its record
        conn.execute("DELETE FROM images WHERE id = ?", (previous[0],))
    return conn.execute(
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
