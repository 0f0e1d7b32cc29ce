"""Images for the web server: decoding uploads safely, rendering scenes and thumbnails.

Uploads are untrusted. The format is recognised from the file's first bytes (the client's
content type is ignored), only JPEG, PNG, WebP and BMP are opened, and only with that one Pillow
decoder; the pixel count is read from the header and checked BEFORE any pixel is decoded, so a
small file that expands to gigabytes (a decompression bomb) is refused without being expanded.

Decoding itself is `personsearch.data.images.decode`, the code every image file is read with:
the same pixel-mode conversions (16-bit, palette, transparency), the same EXIF orientation (so
the index's boxes fit the scenes sent), and the same shape policy (docs/bad-input.md).

Gallery images are re-encoded as JPEG before they are sent: whatever is on disk, the server only
ever sends image pixels, without metadata.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from personsearch.data.images import DECODERS, ImageRefused, decode, open_stream
from personsearch.errors import ImageError

#: Formats accepted for uploads, by their leading bytes ("magic numbers").
UPLOAD_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
#: The HTTP status of an image the reading policy refuses, by ImageRefused.reason.
REFUSED_STATUS = {"pixels": 413, "aspect": 422, "empty": 400}

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


def upload_kind(data: bytes) -> tuple[str, str]:
    """(format, how messages name it) of an upload, from its bytes; ImageRejected 400 / 415."""
    if not data:
        raise ImageRejected(400, "the uploaded file is empty")
    kind = sniff_format(data)
    if kind is None:
        accepted = ", ".join(UPLOAD_FORMATS.values())
        raise ImageRejected(415, f"the upload is not an accepted image type ({accepted})")
    return kind, f"the uploaded {UPLOAD_FORMATS[kind]} image"


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded image as H x W x 3 uint8 RGB, oriented as a browser shows it.

    Decoded by the same code as every image file (`personsearch.data.images.decode`: 16-bit and
    paletted images, transparency and orientation handled alike). Raises ImageRejected: 415 for
    a type that is not accepted, 413 for more than `max_pixels` pixels, 422 for a shape more
    elongated than the reading policy allows, 400 for an empty, truncated or corrupt file.
    """
    kind, what = upload_kind(data)
    try:
        with open_stream(io.BytesIO(data), what, (kind,), max_pixels) as image:
            check_pixels(image.size, max_pixels, "the uploaded image")
            return np.asarray(decode(image, what, max_pixels=max_pixels).image)
    except ImageRefused as error:
        raise ImageRejected(REFUSED_STATUS[error.reason], str(error)) from None
    except ImageError as error:
        raise ImageRejected(400, str(error)) from None


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

    Decoded as the indexer decodes it (`personsearch.data.images`), EXIF orientation included,
    so the boxes of the index fit the picture sent. Raises ImageRejected(404) when the file can
    no longer be read: it was indexed, but is gone or damaged now. Messages name the file, not
    its folder.
    """
    what = f"image {name}"
    try:
        with open(path, "rb") as handle, open_stream(handle, what, DECODERS, max_pixels) as image:
            check_pixels(image.size, max_pixels, what)
            # A thumbnail needs no more than max_side pixels: reduce while decoding, by a
            # factor that keeps at least max_side (JPEG: 1/2, 1/4 or 1/8, the decoder's own).
            factor = 1 if max_side is None else max(1, max(image.size) // max_side)
            if image.format in ("JPEG", "MPO"):
                factor = next(scale for scale in (8, 4, 2, 1) if scale <= factor)
            rgb = decode(image, what, factor=factor, max_pixels=max_pixels).image
    except (FileNotFoundError, PermissionError):
        raise ImageRejected(404, f"image {name} is in the index but its file is gone") from None
    except ImageRefused as error:  # e.g. replaced by a decompression bomb: as over the limit
        raise ImageRejected(REFUSED_STATUS[error.reason], str(error)) from None
    except (OSError, ImageError) as error:
        reason = str(error).replace(str(path), name)  # Pillow's messages may hold the full path
        message = f"image {name} is in the index but cannot be read now: {reason}"
        raise ImageRejected(404, message) from None
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    quality = SCENE_QUALITY if max_side is None else THUMBNAIL_QUALITY
    rgb.save(buffer, format="JPEG", quality=quality, optimize=max_side is not None)
    return buffer.getvalue()


def render_video_frame(
    path: Path, time_s: float, max_side: int | None, max_pixels: int, name: str
) -> bytes:
    """The frame of a gallery video shown at `time_s` as JPEG bytes, whole or fitted into
    max_side x max_side; decoded as the indexer decodes it (`personsearch.data.video`, upright),
    so the index's boxes fit it. ImageRejected(404) when the video can no longer be read."""
    from personsearch.data.video import VideoError, read_frame_at

    try:
        frame = read_frame_at(path, time_s, max_pixels=max_pixels)
    except (FileNotFoundError, PermissionError):
        raise ImageRejected(404, f"video {name} is in the index but its file is gone") from None
    except (OSError, VideoError) as error:
        reason = str(error).replace(str(path), name)
        raise ImageRejected(404, f"video {name} cannot be read now: {reason}") from None
    image = Image.fromarray(frame.image)
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    quality = SCENE_QUALITY if max_side is None else THUMBNAIL_QUALITY
    image.save(buffer, format="JPEG", quality=quality)
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
