"""The gallery store: an index folder's database, feature shards and write lock, as one handle.

`GalleryStore` opens a folder (layout and schema: `schema`), reads what it records (images,
boxes, feature rows) and, when opened for writing, commits batches (`writer`) and keeps the
indexing journal (`journal`). It imports neither torch nor faiss.

An index belongs to the embedder that built it (its `fingerprint` and `dim`): opening it with
another embedder is refused, since features of two models cannot be compared.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.search.store import writer
from personsearch.search.store.journal import IndexingJournal
from personsearch.search.store.records import (
    GalleryIndexError,
    ImageRecord,
    IndexedImage,
    VideoChunk,
    VideoProgress,
)
from personsearch.search.store.schema import (
    DB_NAME,
    SHARD_DIR,
    SQLITE_INTEGERS,
    TRACK_INDEX,
    check_version,
    chunks,
    connect,
    has_column,
    has_video_columns,
    placeholders,
    read_meta,
    upgrade,
)

#: What a box's video columns read as in a version-1 index (opened read-only, not upgraded).
_NO_VIDEO_COLUMNS = "NULL, NULL, NULL"


@dataclass(frozen=True)
class TrackSpan:
    """When a video track is in view: its first and last sampled frame's times, and how many
    sampled frames it has."""

    start_s: float
    end_s: float
    frames: int


class GalleryStore:
    """An index folder's database, shards and lock; see `personsearch.search.store.schema`.

    Open with `GalleryStore.open` (read-only) or `GalleryStore.open_for_writing` (create or add).
    `journal` is the folder's indexing journal (see `personsearch.search.store.journal`).
    """

    def __init__(self, folder: Path, conn: sqlite3.Connection, lock: Any | None = None) -> None:
        self.folder = folder
        self._conn = conn
        self._lock = lock
        self._meta = read_meta(conn)
        self._video_columns = (
            "b.frame, b.time_s, b.track" if has_video_columns(conn) else _NO_VIDEO_COLUMNS
        )
        self.journal = IndexingJournal(folder, lambda: self.writable)

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
        conn = connect(db, read_only=True)
        try:
            store = cls(folder, conn)
        except sqlite3.DatabaseError as error:  # a zero-byte or foreign index.sqlite
            conn.close()
            raise GalleryIndexError(
                f"gallery index {folder} is damaged: {DB_NAME} ({db.stat().st_size} bytes) "
                f"is not an index database ({error}); rebuild it with `personsearch index`"
            ) from error
        check_version(store._meta, folder)
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
        folder = Path(folder)
        conn, lock = writer.open_database_for_writing(
            folder, fingerprint=fingerprint, dim=dim, index_kind=index_kind, info=info
        )
        try:
            store = cls(folder, conn, lock)
            check_version(store._meta, folder)
            store.check_model(fingerprint, int(dim))
            upgrade(conn, store._meta)  # an older index gains the video columns, in place
            conn.execute(TRACK_INDEX)
            store._video_columns = "b.frame, b.time_s, b.track"
            if index_kind is not None and index_kind != store.index_kind:
                writer.set_meta(conn, "index_kind", index_kind)
                store._meta["index_kind"] = index_kind
            writer.delete_unreferenced_shards(conn, folder)
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

    def __enter__(self) -> GalleryStore:
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

    # ---- adding --------------------------------------------------------------------------

    def add_batch(self, records: Sequence[ImageRecord], features: np.ndarray) -> None:
        """Record a batch of images and their boxes; `features` has one row per box, in order.

        Images already indexed successfully are refused (the caller filters them); a previously
        failed image may be recorded again (it is retried). Crash-safe: see `writer`.
        """
        if not self.writable:
            raise GalleryIndexError(f"gallery index {self.folder} was opened read-only")
        writer.write_batch(
            self._conn, self.folder, records, features, first_row=self.num_boxes, dim=self.dim
        )

    def add_video_chunk(self, chunk: VideoChunk, features: np.ndarray) -> None:
        """Record a chunk of a video's frames and the video's progress (see `writer`)."""
        if not self.writable:
            raise GalleryIndexError(f"gallery index {self.folder} was opened read-only")
        writer.write_video_chunk(
            self._conn, self.folder, chunk, features, first_row=self.num_boxes, dim=self.dim
        )

    # ---- images and rows -----------------------------------------------------------------

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

    @property
    def num_videos(self) -> int:
        """Of `num_images`, the videos."""
        if not self._has_videos_table():
            return 0
        return int(self._conn.execute("SELECT COUNT(*) FROM videos").fetchone()[0])

    def known_images(self) -> dict[str, IndexedImage]:
        """Every image the index has seen, ok or failed, by stored path."""
        rows = self._conn.execute("SELECT path, size, mtime, status, error FROM images")
        return {row[0]: IndexedImage(*row) for row in rows}

    def failed_images(self) -> list[tuple[str, str]]:
        """(path, error) of every image that could not be indexed, and of every video whose
        decoding stopped before its end (its frames before the fault are indexed)."""
        rows = self._conn.execute(
            "SELECT path, COALESCE(error, '') FROM images WHERE status='failed' ORDER BY path"
        ).fetchall()
        if self._has_videos_table():
            rows += self._conn.execute(
                "SELECT i.path, v.error FROM videos v JOIN images i ON i.id = v.image_id "
                "WHERE v.error IS NOT NULL ORDER BY i.path"
            ).fetchall()
        return [(path, error) for path, error in rows]

    def video_progress(self, path: str | None = None) -> dict[str, VideoProgress]:
        """How far indexing got in each video the index holds (only `path`'s, if given), by
        stored path."""
        if not self._has_videos_table():
            return {}
        query = (
            "SELECT i.path, v.sampling, v.frames_sampled, v.last_frame, v.last_time_s, "
            f"v.tracker, v.complete, v.error, v.duration_s, {self._sampler_column()} FROM videos v "
            "JOIN images i ON i.id = v.image_id"
        )
        rows = (
            self._conn.execute(query)
            if path is None
            else self._conn.execute(query + " WHERE i.path = ?", (path,))
        )
        return {
            path: VideoProgress(sampling, n, last, t, state, bool(done), error, duration, next_s)
            for path, sampling, n, last, t, state, done, error, duration, next_s in rows
        }

    def track_spans(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TrackSpan]:
        """{(image_id, track): TrackSpan} of the given tracks of videos (track >= 0)."""
        found: dict[tuple[int, int], TrackSpan] = {}
        for image_id, track in sorted(set(keys)):
            row = self._conn.execute(
                "SELECT MIN(time_s), MAX(time_s), COUNT(*) FROM boxes "
                "WHERE image_id = ? AND track = ?",
                (image_id, track),
            ).fetchone()
            found[(image_id, track)] = TrackSpan(float(row[0]), float(row[1]), int(row[2]))
        return found

    def _has_videos_table(self) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'videos'"
        return self._conn.execute(query).fetchone() is not None

    def rows(self) -> list[tuple[str, tuple[float, float, float, float], float]]:
        """(image path, box, detection score) of every feature row, in row order."""
        query = (
            "SELECT i.path, b.x1, b.y1, b.x2, b.y2, b.det_score FROM boxes b "
            "JOIN images i ON i.id = b.image_id ORDER BY b.id"
        )
        return [(p, (x1, y1, x2, y2), s) for p, x1, y1, x2, y2, s in self._conn.execute(query)]

    def records(self) -> list[ImageRecord]:
        """Every still image (and failed file) as recorded, in the order it was added, with its
        boxes in row order; videos are `video_chunks()`.

        With their feature rows this is exactly what `add_batch` took: adding both to an empty
        index reproduces it row for row (how shards built elsewhere are merged).
        """
        videos = self._video_image_ids()
        boxes: dict[int, list[tuple[float, float, float, float, float]]] = {}
        query = "SELECT image_id, x1, y1, x2, y2, det_score FROM boxes ORDER BY id"
        for image_id, x1, y1, x2, y2, score in self._conn.execute(query):
            if image_id not in videos:
                boxes.setdefault(image_id, []).append((x1, y1, x2, y2, score))
        records = []
        query = (
            "SELECT id, path, sha1, size, mtime, width, height, camera, error FROM images "
            "ORDER BY id"
        )
        for image_id, *fields, error in self._conn.execute(query).fetchall():
            if image_id in videos:
                continue
            own = np.asarray(boxes.get(image_id, []), dtype=np.float32).reshape(-1, 5)
            records.append(ImageRecord(*fields, boxes=own[:, :4], scores=own[:, 4], error=error))
        return records

    def image_rows(self) -> np.ndarray:
        """The feature rows of the boxes of `records()` (still images), in order."""
        videos = sorted(self._video_image_ids())
        query = "SELECT id FROM boxes"
        if videos:
            query += f" WHERE image_id NOT IN ({','.join(map(str, videos))})"
        return np.asarray([r[0] for r in self._conn.execute(query + " ORDER BY id")], np.int64)

    def video_chunks(self) -> list[tuple[VideoChunk, np.ndarray]]:
        """Every video as one VideoChunk holding all its boxes and its progress, with the
        feature rows of those boxes, in the order the videos were added: what `add_video_chunk`
        needs to reproduce them in another index (a Ray shard merged into the index)."""
        if not self._has_videos_table():
            return []
        query = (
            "SELECT i.id, i.path, i.sha1, i.size, i.mtime, i.width, i.height, i.camera, "
            "v.sampling, v.fps, v.duration_s, v.frames_sampled, v.last_frame, v.last_time_s, "
            f"v.tracker, v.complete, v.error, {self._sampler_column()} FROM videos v "
            "JOIN images i ON i.id = v.image_id ORDER BY i.id"
        )
        found = []
        for (
            image_id,
            *file,
            sampling,
            fps,
            duration,
            n,
            last,
            t,
            state,
            done,
            error,
            next_s,
        ) in self._conn.execute(query).fetchall():
            rows = self._conn.execute(
                "SELECT id, x1, y1, x2, y2, det_score, frame, time_s, track FROM boxes "
                "WHERE image_id = ? ORDER BY id",
                (image_id,),
            ).fetchall()
            table = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
            video = ImageRecord(
                *file, boxes=table[:, 1:5].astype(np.float32), scores=table[:, 5].astype(np.float32)
            )
            chunk = VideoChunk(
                video,
                frames=table[:, 6],
                times=table[:, 7],
                tracks=table[:, 8],
                sampling=sampling,
                fps=fps,
                duration_s=duration,
                frames_sampled=n,
                last_frame=last,
                last_time_s=t,
                tracker_state=state,
                complete=bool(done),
                error=error,
                next_sample_s=next_s,
            )
            found.append((chunk, table[:, 0].astype(np.int64)))
        return found

    def _sampler_column(self) -> str:
        """The videos' sampler-state column, NULL in an index of format 2 (read as it is)."""
        return "v.next_sample_s" if has_column(self._conn, "videos", "next_sample_s") else "NULL"

    def _video_image_ids(self) -> set[int]:
        if not self._has_videos_table():
            return set()
        return {r[0] for r in self._conn.execute("SELECT image_id FROM videos")}

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
        for chunk in chunks(values):
            query = (
                "SELECT b.id FROM boxes b JOIN images i ON i.id = b.image_id "
                f"WHERE {column} IN ({placeholders(chunk)})"
            )
            rows += [r[0] for r in self._conn.execute(query, chunk)]
        return np.unique(np.array(rows, dtype=np.int64))

    def box_metadata(self, rows: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{row: image_path, box, det_score, camera, image_id, frame, time_s, track} of the
        given feature rows (frame, time_s and track are None for a still image)."""
        found: dict[int, dict[str, Any]] = {}
        for chunk in chunks(sorted(set(rows))):
            query = (
                "SELECT b.id, i.path, b.x1, b.y1, b.x2, b.y2, b.det_score, i.camera, i.id, "
                f"{self._video_columns} FROM boxes b "
                f"JOIN images i ON i.id = b.image_id WHERE b.id IN ({placeholders(chunk)})"
            )
            for (
                row,
                path,
                x1,
                y1,
                x2,
                y2,
                score,
                camera,
                image_id,
                frame,
                time_s,
                track,
            ) in self._conn.execute(query, chunk):
                found[row] = {
                    "image_path": path,
                    "box": (x1, y1, x2, y2),
                    "det_score": score,
                    "camera": camera,
                    "image_id": image_id,
                    "frame": frame,
                    "time_s": time_s,
                    "track": track,
                }
        return found

    def track_keys(self) -> np.ndarray:
        """Per feature row, the key of its track: rows of one video track share a key, every
        other row (a still image's box, a detection in no track) has its own. For collapsing a
        ranking to one hit per track (`personsearch.search.tracking.one_hit_per_track`)."""
        keys = np.arange(self.num_boxes, dtype=np.int64)
        if self._video_columns == _NO_VIDEO_COLUMNS:
            return keys
        query = "SELECT id, image_id, track FROM boxes WHERE track >= 0 ORDER BY id"
        rows = np.asarray(self._conn.execute(query).fetchall(), dtype=np.int64).reshape(-1, 3)
        if len(rows):
            # (image, track) -> the first row of that track: distinct from every other key
            _, first = np.unique(rows[:, 1:], axis=0, return_inverse=True)
            first_row = np.full(first.max() + 1, np.iinfo(np.int64).max)
            np.minimum.at(first_row, first.reshape(-1), rows[:, 0])
            keys[rows[:, 0]] = first_row[first.reshape(-1)]
        return keys

    # ---- features ------------------------------------------------------------------------

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


def _non_finite_rows(array: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Indices of the rows holding NaN or inf, checked a chunk of rows at a time (bounded memory)."""
    bad = [
        start + np.flatnonzero(~np.isfinite(np.asarray(array[start : start + chunk])).all(axis=1))
        for start in range(0, len(array), chunk)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
