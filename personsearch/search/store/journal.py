"""The indexing journal: which image the writer is reading and detecting, to survive crashes.

A crash in native code (an image decoder, a detector) kills the process with no exception to
record, and every rerun would die on the same image. So the writer notes the image it is reading
and detecting in `in-progress.json` and removes the note when done; a rerun that finds the note
knows the previous process died on that image: it retries it once (the death may have been a
kill from outside), and records it as failed after CRASH_LIMIT deaths in a row. Such an image
is not retried until its file changes. `personsearch.search.searcher` applies these rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from personsearch.search.store.records import GalleryIndexError
from personsearch.search.store.schema import PROGRESS_NAME

#: Process deaths in a row while an image was being read and detected that make it failed.
CRASH_LIMIT = 2
#: How the error of an image failed that way starts (it is then not retried, see
#: `is_crash_error`).
CRASH_ERROR = "the indexing process died while reading or detecting persons in this image"


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
    """Whether an image's recorded error says the indexing process died on it."""
    return bool(error) and str(error).startswith(CRASH_ERROR)


class IndexingJournal:
    """The in-progress note of an index folder; only its writer may begin an image.

    `writable` is asked at each `begin_image` (the store's write lock may have been released).
    """

    def __init__(self, folder: Path, writable: Callable[[], bool]) -> None:
        self.folder = folder
        self._writable = writable

    @property
    def path(self) -> Path:
        return self.folder / PROGRESS_NAME

    def begin_image(self, path: str, deaths: int = 0) -> None:
        """Note that `path` is being read and detected; `deaths`: earlier deaths on it in a row.

        Written without fsync: the note has to outlive this process (a crash in native code),
        not the machine; losing it only means the image is tried again.
        """
        if not self._writable():
            raise GalleryIndexError(f"gallery index {self.folder} was opened read-only")
        note = json.dumps({"path": path, "deaths": int(deaths)})
        self.path.write_text(note, encoding="utf-8")

    def end_image(self) -> None:
        """The noted image is done (or failed with an exception): remove the note."""
        self.path.unlink(missing_ok=True)

    def interrupted_image(self) -> InterruptedImage | None:
        """The image a previous writer noted and never finished: its process died on it."""
        try:
            note = json.loads(self.path.read_text(encoding="utf-8"))
            return InterruptedImage(str(note["path"]), int(note["deaths"]) + 1)
        except (OSError, ValueError, TypeError, KeyError):  # none, or cut short by a kill
            return None
