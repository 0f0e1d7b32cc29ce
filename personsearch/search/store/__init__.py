"""The gallery store: what a gallery index keeps on disk, one job per module.

- `schema`: the folder layout, the SQLite schema and format version, connections.
- `records`: the values stored and returned (`ImageRecord`, `IndexedImage`) and the error.
- `gallery`: `GalleryStore`, the handle on one index folder (open, read, add).
- `writer`: creating an index folder and committing batches of detections, crash-safe.
- `journal`: the indexing journal, the note that lets a rerun retry or skip the image a crashed
  writer died on.
- `queries`: the web server's read-only lookups on a shared connection.

The FAISS index searched over the store's features is `personsearch.search.index`'s.
"""

from personsearch.search.store.gallery import GalleryStore
from personsearch.search.store.journal import (
    CRASH_ERROR,
    CRASH_LIMIT,
    IndexingJournal,
    InterruptedImage,
    crash_error,
    is_crash_error,
)
from personsearch.search.store.queries import ImageSummary, has_images
from personsearch.search.store.records import GalleryIndexError, ImageRecord, IndexedImage
from personsearch.search.store.schema import (
    CACHE_DIR,
    DB_NAME,
    INDEX_VERSION,
    LOCK_NAME,
    PROGRESS_NAME,
    SHARD_DIR,
    SQLITE_INTEGERS,
)

__all__ = [
    "CACHE_DIR",
    "CRASH_ERROR",
    "CRASH_LIMIT",
    "DB_NAME",
    "INDEX_VERSION",
    "LOCK_NAME",
    "PROGRESS_NAME",
    "SHARD_DIR",
    "SQLITE_INTEGERS",
    "GalleryIndexError",
    "GalleryStore",
    "ImageRecord",
    "ImageSummary",
    "IndexedImage",
    "IndexingJournal",
    "InterruptedImage",
    "crash_error",
    "has_images",
    "is_crash_error",
]
