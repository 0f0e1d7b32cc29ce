"""Images for the web server: decoding uploads safely, rendering scenes and thumbnails.

Uploads are untrusted. The format is recognised from the file's first bytes (the client's
content type is ignored), only JPEG, PNG, WebP and BMP are opened, and only with that one Pillow
decoder; the pixel count is read from the header and checked BEFORE any pixel is decoded, so a
small file that expands to gigabytes (a decompression bomb) is refused without being expanded.

Gallery images are re-encoded as JPEG before they are sent: whatever is on disk, the server only
ever sends image pixels, without metadata.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted for uploads, by their leading bytes ("magic numbers").
UPLOAD_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)

THUMBNAIL_QUALITY = 82
SCENE_QUALITY = 90


class ImageRejected(Exception):
    """An image the server will not use; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of an accepted image type, from its leading bytes; else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded image as H x W x 3 uint8 RGB, oriented as a browser shows it.

    Raises ImageRejected: 415 for a type that is not accepted, 413 for more than `max_pixels`
    pixels, 400 for an empty, truncated or corrupt file.
    """
    if not data:
        raise ImageRejected(400, "the uploaded file is empty")
    kind = sniff_format(data)
    if kind is None:
        accepted = ", ".join(UPLOAD_FORMATS.values())
        raise ImageRejected(415, f"the upload is not an accepted image type ({accepted})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            check_pixels(image.size, max_pixels, "the uploaded image")
            image.load()
            # Browsers apply the EXIF orientation when they show the image the box is drawn on.
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(413, f"the uploaded image is too large to decode: {error}") from None
    except _DECODE_ERRORS as error:
        name = UPLOAD_FORMATS[kind]
        raise ImageRejected(400, f"cannot decode the uploaded {name} image: {error}") from None


def check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected(400, f"{what} has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise ImageRejected(
            413,
            f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels",
        )


def render_jpeg(path: Path, max_side: int | None, max_pixels: int, name: str) -> bytes:
    """A gallery image as JPEG bytes: whole (max_side None) or fitted into max_side x max_side.

    Raises ImageRejected(404) when the file can no longer be read: it was indexed, but is gone
    or damaged now. Messages name the file, not its folder.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixels(image.size, max_pixels, f"image {name}")
                if max_side is not None:
                    image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
                rgb = image.convert("RGB")
    except (FileNotFoundError, PermissionError):
        raise ImageRejected(404, f"image {name} is in the index but its file is gone") from None
    except (*_DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        reason = str(e).replace(str(path), name)  # Pillow's messages may hold the full path
        message = f"image {name} is in the index but cannot be read now: {reason}"
        raise ImageRejected(404, message) from None
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    quality = SCENE_QUALITY if max_side is None else THUMBNAIL_QUALITY
    rgb.save(buffer, format="JPEG", quality=quality, optimize=max_side is not None)
    return buffer.getvalue()


@dataclass(frozen=True)
class FileStamp:
    """What tells whether a file changed: part of every cache key and ETag."""

    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return cls(stat.st_mtime_ns, stat.st_size)


class BytesLRU:
    """A thread-safe least-recently-used cache of byte strings, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[object, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get_or_make(self, key: object, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: rendering is slow; a rare double render is harmless
        if len(value) > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._size += len(value)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)
        return value

    def __len__(self) -> int:
        return len(self._items)
