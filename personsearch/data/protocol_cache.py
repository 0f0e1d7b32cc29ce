"""A disk cache of parsed search protocols, so a big protocol file is parsed once.

scipy reads CUHK-SYSU's TestG4000.mat (11.6 M gallery entries, each a MATLAB struct) in about
90 s, and every gallery size together in about 3 minutes; the same protocol as flat arrays loads
in well under a second. Entries are keyed by the source files' contents (and this format's
version), so an edited or replaced file is parsed again and a copied dataset is not.

Where: $PERSONSEARCH_CACHE_DIR, else $XDG_CACHE_HOME/personsearch, else ~/.cache/personsearch
(under protocols/). PERSONSEARCH_CACHE_DIR=off turns the cache off. A cache that cannot be
written (read-only home) or an entry that cannot be read (truncated, another version) is
skipped: the protocol is parsed from its files as without a cache.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from personsearch.data.scenes import QueryTask, SearchProtocol
from personsearch.io import atomic_path

CACHE_ENV = "PERSONSEARCH_CACHE_DIR"
#: Bump when the stored arrays change meaning: older entries are then never read.
FORMAT_VERSION = 1


def cache_dir() -> Path | None:
    """The protocol cache folder, or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return (
            None
            if configured.strip().lower() in ("", "off", "0", "none")
            else Path(configured) / "protocols"
        )
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "personsearch" / "protocols"


def is_cached(name: str, sources: Sequence[Path]) -> bool:
    """Whether `cached_protocol(name, sources, ...)` would be served from the cache."""
    entry = _entry(name, sources)
    return entry is not None and entry.is_file()


def cached_protocol(
    name: str, sources: Sequence[Path], parse: Callable[[], SearchProtocol]
) -> SearchProtocol:
    """`parse()`'s protocol, from the cache when it already holds one parsed from `sources` as
    they are now (their bytes, not their names or times)."""
    entry = _entry(name, sources)
    if entry is None:
        return parse()
    folder = entry.parent
    if entry.is_file():
        try:
            return protocol_from_arrays(entry)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable: parse again and replace it
    _announce_slow_parse(name, sources, folder)
    protocol = parse()
    try:
        with atomic_path(entry) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **protocol_arrays(protocol))
    except OSError as error:
        print(f"note: could not cache the parsed protocol in {folder} ({error})", file=sys.stderr)
    return protocol


#: scipy parses a protocol .mat file at about this rate (TestG4000.mat: 61 MB in 93 s).
_PARSE_BYTES_PER_S = 0.65e6


def _announce_slow_parse(name: str, sources: Sequence[Path], folder: Path) -> None:
    """Say so before a parse that takes more than a few seconds: it prints nothing itself."""
    size = sum(Path(source).stat().st_size for source in sources)
    seconds = size / _PARSE_BYTES_PER_S
    if seconds >= 5:
        print(
            f"reading {name} from {size / 2**20:.0f} MB of .mat files: about {seconds:.0f} s "
            f"this once, then cached in {folder}",
            file=sys.stderr,
        )


def protocol_arrays(protocol: SearchProtocol) -> dict[str, np.ndarray]:
    """A protocol as flat arrays (galleries concatenated; ground truth only where held)."""
    queries = protocol.queries
    gallery = [q.gallery for q in queries]
    gt = np.concatenate([q.gt_boxes for q in queries]) if queries else np.zeros((0, 4), np.float32)
    held = np.flatnonzero(~np.isnan(gt[:, 0]))
    return {
        "format_version": np.array(FORMAT_VERSION),
        "name": np.array(protocol.name),
        "unlisted": np.array(protocol.unlisted),
        "images": np.array(protocol.images, dtype=str),
        "image_cameras": protocol.image_cameras,
        "query_image": np.array([q.image for q in queries], dtype=str),
        "query_box": np.stack([q.box for q in queries])
        if queries
        else np.zeros((0, 4), np.float32),
        "query_pid": np.array([q.pid for q in queries], dtype=np.int64),
        "query_camera": np.array([q.camera for q in queries], dtype=np.int64),
        "gallery_length": np.array([len(g) for g in gallery], dtype=np.int64),
        "gallery": np.concatenate(gallery).astype(np.int32) if queries else np.zeros(0, np.int32),
        "held_entry": held,
        "held_box": gt[held],
    }


def protocol_from_arrays(path: Path) -> SearchProtocol:
    """The protocol `protocol_arrays` stored at `path`; ValueError when it is not one."""
    with np.load(path, allow_pickle=False) as data:
        if int(data["format_version"]) != FORMAT_VERSION:
            raise ValueError(
                f"{path}: cache format {int(data['format_version'])}, not {FORMAT_VERSION}"
            )
        arrays = {key: data[key] for key in data.files}
    lengths = arrays["gallery_length"]
    gallery = arrays["gallery"].astype(np.int64)
    gt = np.full((len(gallery), 4), np.nan, dtype=np.float32)
    gt[arrays["held_entry"]] = arrays["held_box"]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    queries = tuple(
        QueryTask(str(image), box, int(pid), int(camera), gallery[a:b], gt[a:b])
        for image, box, pid, camera, a, b in zip(
            arrays["query_image"],
            arrays["query_box"],
            arrays["query_pid"],
            arrays["query_camera"],
            starts,
            ends,
            strict=True,
        )
    )
    return SearchProtocol(
        str(arrays["name"]),
        tuple(str(n) for n in arrays["images"]),
        queries,
        unlisted=str(arrays["unlisted"]),
        image_cameras=arrays["image_cameras"],
    )


def _entry(name: str, sources: Sequence[Path]) -> Path | None:
    """The cache file for this protocol and these sources; None with the cache off or a source
    unreadable."""
    folder = cache_dir()
    key = None if folder is None else _key(name, sources)
    return None if key is None else folder / f"{key}.npz"


def _key(name: str, sources: Sequence[Path]) -> str | None:
    """Digest of the protocol name and every source file's bytes; None if one is unreadable.

    Hashing the contents (about 0.1 s for TestG4000.mat) rather than trusting modification
    times keeps an entry valid for a moved or copied dataset and never stale for a rewritten one.
    """
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\0{name}".encode())
    for source in sources:
        try:
            with open(source, "rb") as handle:
                digest.update(b"\0")
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return None  # the parser reports the missing file
    return digest.hexdigest()[:32]
