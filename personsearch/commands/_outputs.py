"""Output paths of the commands: checked before any work starts, write errors as one line.

A command that writes a file or a folder (`search --out`, `index --out`, `synth --out`,
`train --out`, `evaluate --per-query`, ...) checks the path first, so that an unwritable place
fails in a second rather than after the work, and turns an OSError while writing into a
PersonSearchError (one line, exit status 1) instead of a traceback.

What is checked: the path is not a folder (for a file) or not a file (for a folder), nothing on
the way to it is a file, and the nearest folder that exists can be written into (os.access,
which also says no on a read-only file system, for root too). Nothing is created by the check.
"""

from __future__ import annotations

import os
from pathlib import Path

from personsearch.errors import PersonSearchError


def check_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """`path` can be written as a file (its folders created); PersonSearchError if not."""
    path = Path(path)
    if path.is_dir():
        raise PersonSearchError(f"{option} {path} is a folder: give a file name")
    _check_creatable(path.parent, option, path)
    return path


def check_output_folder(path: str | os.PathLike[str], option: str) -> Path:
    """`path` is, or can be created as, a folder that can be written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PersonSearchError(f"{option} {path} is a file, not a folder")
    _check_creatable(path, option, path)
    return path


def write_error(option: str, path: str | os.PathLike[str], error: OSError) -> PersonSearchError:
    """The one-line error for an OSError while writing `path` (given as `option`)."""
    reason = error.strerror or str(error)
    return PersonSearchError(f"cannot write {option} {path}: {reason}")


def _check_creatable(folder: Path, option: str, target: Path) -> None:
    existing = folder
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PersonSearchError(
            f"{option} {target}: {existing} is not a folder, so nothing can be created below it"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PersonSearchError(
            f"{option} {target}: cannot write in {existing} (no permission, or a read-only "
            "file system)"
        )
