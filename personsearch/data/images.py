"""Reading images: the one place image files are decoded, under one policy (docs/bad-input.md).

Every reader of scene images (indexing, probes, datasets, check-data, the web server) comes
here, so a hostile or unusual file gets the same answer everywhere:

- Only the formats the commands accept are decoded (JPEG, PNG, WebP, BMP, TIFF, and the few
  others in DECODERS), whatever the file's name says: never e.g. EPS, which Pillow hands to
  Ghostscript.
- Width x height is checked from the header, before any pixel is decoded: more than MAX_PIXELS
  pixels (a decompression bomb, or an image too big to hold) or a longer side more than
  MAX_ASPECT times the shorter one (no detector can resize it to a useful shape) is refused with
  ImageRefused, a one-line ImageError.
- The EXIF orientation is applied, as browsers and photo viewers do: sizes, pixels and boxes all
  refer to the image as it is shown. The orientation is read from the header only (a PNG eXIf
  chunk after the pixel data is ignored), so `image_size` and the decoded pixels always agree.
- Every pixel mode becomes 8-bit RGB exactly: 16-bit and 32-bit integer images are scaled from
  0..65535 (not clipped at 255), float images from 0..1 (or 0..255 when their maximum is above
  1), and transparent pixels are composited over white, as a browser on a white page shows them.
- `read_scaled` decodes big images at a reduced scale by an integer factor, so that the longer
  side is at most DETECT_MAX_SIDE: JPEGs with the decoder's own 1/2, 1/4, 1/8 scaling (the
  factor rounded up to one of those), never holding the full-size pixels; other formats are
  decoded whole, then Image.reduce'd. It says by how much, so boxes found in the reduced pixels
  are mapped back to full-resolution pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from personsearch.errors import ImageError

#: Largest image accepted, in pixels: 150 MP is above the largest camera sensors (108 MP, 12000 x
#: 9000), and its full decode still fits in about 0.5 GB of RGB.
MAX_PIXELS = 150_000_000
#: Largest ratio of the longer side to the shorter one: wide panoramas pass; at 20 a detector
#: that fits the longer side into 512 pixels still sees a 25-pixel shorter side.
MAX_ASPECT = 20.0
#: Indexing and probes decode images whose longer side is above this at a reduced scale (an
#: integer factor): 4x the trained detector's largest input side (1000), so person crops keep
#: the detail the re-id net can use, while a 144 MP image is held as 16 MP.
DETECT_MAX_SIDE = 4096
#: What transparent pixels are composited over.
ALPHA_BACKGROUND = (255, 255, 255)
#: Pillow decoders allowed for image files (JPEG includes MPO, camera JPEGs with a second picture).
DECODERS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")

#: What Pillow raises on damaged or hostile files, beyond OSError; MemoryError is a file whose
#: decoding needs more memory than there is.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    MemoryError,
    Image.DecompressionBombError,
)

#: ImageOps.exif_transpose's table: orientation tag -> the transposition that shows the image
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_ROWS_PER_CHUNK = 1024  # 16-bit and float conversion in strips: no full-size temporaries


class ImageRefused(ImageError):
    """A readable image that the policy refuses; `reason` is "pixels", "aspect" or "empty"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ScaledImage:
    """Decoded pixels, possibly reduced: full-resolution pixel = `factor` x these pixels."""

    pixels: np.ndarray  #: H x W x 3 uint8 RGB, oriented
    factor: int  #: the integer reduction applied (1: full resolution)
    size: tuple[int, int]  #: (width, height) of the full-resolution, oriented image

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (x1 y1 x2 y2) in these pixels -> in full-resolution pixels, inside the image."""
        width, height = self.size
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * self.factor
        return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)

    def from_original(self, box: np.ndarray) -> np.ndarray:
        """A box in full-resolution pixels -> in these pixels."""
        return np.asarray(box, dtype=np.float32) / self.factor


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file at full resolution as an oriented RGB image; ImageError if not."""
    with open_image(path) as image:
        return decode(image, f"image {path}").image


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image into an H x W x 3 uint8 array (full resolution, oriented)."""
    return np.asarray(open_rgb(path))


def read_scaled(path: str | os.PathLike[str], max_side: int | None = None) -> ScaledImage:
    """Decode an image with its longer side reduced to at most `max_side` (default
    DETECT_MAX_SIDE) by an integer factor; the result says which, and the full size."""
    max_side = DETECT_MAX_SIDE if max_side is None else max_side
    with open_image(path) as image:
        width, height = oriented_size(image)
        factor = reduction_factor((width, height), max_side)
        if image.format in ("JPEG", "MPO"):
            factor = jpeg_factor(factor)
        decoded = decode(image, f"image {path}", factor=factor)
        return ScaledImage(np.asarray(decoded.image), decoded.factor, (width, height))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied), from the header; policy checked."""
    with open_image(path, failure=f"cannot read image header {path}") as image:
        check_policy(image.size, f"image {path}")
        return oriented_size(image)


def reduction_factor(size: tuple[int, int], max_side: int) -> int:
    """The smallest integer factor that brings the longer side to at most `max_side`."""
    return max(1, math.ceil(max(size) / max(1, int(max_side))))


def jpeg_factor(factor: int) -> int:
    """`factor` rounded up to one the JPEG decoder does itself (2, 4, 8, then multiples of 8).

    Decoding at 1/2, 1/4 or 1/8 scale never holds the full-size pixels: a 12000 x 12000 JPEG is
    decoded as 3000 x 3000 instead of 12000 x 12000 then reduced 3 times, at most halving the
    side kept.
    """
    if factor <= 1:
        return 1
    if factor <= 8:
        return 1 << (factor - 1).bit_length()
    return math.ceil(factor / 8) * 8


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str], failure: str | None = None) -> Iterator[Image.Image]:
    """An image file opened (header only) with one of DECODERS; errors become ImageError.

    `failure` starts the message of a file that cannot be opened ("cannot decode image PATH").
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the image
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error}") from error
    with handle:
        image = open_stream(handle, f"image {path}", DECODERS, failure=failure)
        with image:
            yield image


def open_stream(
    stream: IO[bytes],
    what: str,
    formats: tuple[str, ...],
    max_pixels: int | None = None,
    failure: str | None = None,
) -> Image.Image:
    """Image.open with our errors: a bomb is refused as ImageRefused, the rest is ImageError.

    Pillow itself refuses more than twice its MAX_IMAGE_PIXELS (179 MP) here, from the header;
    `max_pixels` (default MAX_PIXELS) is only the limit the message names. `failure` starts the
    message of a stream that cannot be opened (default "cannot decode WHAT").
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check (below Pillow's error limit) replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream, formats=list(formats))
    except Image.DecompressionBombError as error:
        found = _BOMB_PIXELS.search(str(error))
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise ImageRefused(
            f"{what} has {pixels}, over the limit of {max_pixels:,} pixels (a decompression bomb,"
            " or too big to decode): refused",
            "pixels",
        ) from None
    except UnidentifiedImageError:  # its message is the stream's repr: say what it means
        kinds = ", ".join(formats)
        reason = f"not an image of an accepted type ({kinds}), or damaged"
        raise ImageError(f"{failure or f'cannot decode {what}'}: {reason}") from None
    except DECODE_ERRORS as error:
        raise ImageError(f"{failure or f'cannot decode {what}'}: {_reason(error)}") from None


def check_policy(size: tuple[int, int], what: str, max_pixels: int | None = None) -> None:
    """Refuse (ImageRefused) an image with no pixels, more than `max_pixels` (default
    MAX_PIXELS), or a shape more elongated than MAX_ASPECT."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRefused(f"{what} has no pixels ({width} x {height})", "empty")
    if width * height > max_pixels:
        raise ImageRefused(
            f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels: refused",
            "pixels",
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageRefused(
            f"{what} is {width} x {height} pixels, more than {MAX_ASPECT:g} times longer than "
            "wide (or wider than long): refused",
            "aspect",
        )


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) known from the header; 1 when absent or unreadable."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow would decode the whole PNG to look for an eXIf chunk after the pixels
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except DECODE_ERRORS:  # damaged EXIF: show the pixels as stored
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as shown: swapped for the 90-degree orientations."""
    width, height = image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  #: mode RGB, oriented
    factor: int  #: integer reduction applied


def decode(
    image: Image.Image, what: str, *, factor: int = 1, max_pixels: int | None = None
) -> Decoded:
    """Decode an opened image as oriented 8-bit RGB, reduced by the integer `factor`.

    The policy is checked first (`max_pixels` may be lower than MAX_PIXELS, e.g. a server's
    limit). Raises ImageRefused, or ImageError for a file that cannot be decoded.
    """
    check_policy(image.size, what, max_pixels)
    turn = ORIENTATION_TRANSPOSE.get(orientation(image))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            drafted = _draft(image, max(1, int(factor)))
            image.load()
            rgb = to_8bit(image)
            rest = max(1, round(factor / drafted))
            if rest > 1:
                rgb = rgb.reduce(rest)
            if turn is not None:
                rgb = rgb.transpose(turn)
            return Decoded(flatten_alpha(rgb), drafted * rest)
    except ImageError:
        raise
    except DECODE_ERRORS as error:
        raise ImageError(f"cannot decode {what}: {_reason(error)}") from None


def _draft(image: Image.Image, factor: int) -> int:
    """Let the JPEG decoder scale by the largest of 1/2, 1/4, 1/8 dividing `factor`; return the
    scale it took (1: none)."""
    if factor == 1 or image.format not in ("JPEG", "MPO"):
        return 1
    width, height = image.size
    scale = next(s for s in (8, 4, 2, 1) if factor % s == 0 and s <= min(width, height))
    if scale == 1:
        return 1
    # Pillow takes min(width // w, height // h) rounded down to 8, 4, 2 or 1: with floored sizes
    # that is exactly `scale`. Its result is ceil(size / scale), as Image.reduce's.
    image.draft(None, (width // scale, height // scale))
    for taken in (scale, 8, 4, 2):
        if image.size == (math.ceil(width / taken), math.ceil(height / taken)):
            return taken
    return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image (or a crop of one) in RGB by this module's rules: `to_8bit`, then
    `flatten_alpha`. Use it instead of image.convert("RGB"), which clips 16-bit images to white
    and drops transparency to whatever colour lies under it."""
    return flatten_alpha(to_8bit(image))


def to_8bit(image: Image.Image) -> Image.Image:
    """A decoded image in one of L, LA, RGB, RGBA (8 bits a channel), values scaled exactly."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert("LA" if mode == "L" else "RGBA")  # a tRNS colour key
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "La":
        return image.convert("LA")
    if mode == "I" or mode.startswith("I;16"):
        return Image.fromarray(_rescale(np.asarray(image), _sixteen_bit), "L")
    if mode == "F":
        pixels = np.asarray(image)
        top = float(np.nanmax(pixels)) if pixels.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0  # 0..1 floats, else taken as 0..255
        return Image.fromarray(_rescale(pixels, lambda part: _float(part, scale)), "L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV; ValueError for anything else


def flatten_alpha(image: Image.Image) -> Image.Image:
    """RGB: an image with alpha composited over ALPHA_BACKGROUND, the others converted."""
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _rescale(pixels: np.ndarray, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.empty(pixels.shape, dtype=np.uint8)
    for top in range(0, pixels.shape[0], _ROWS_PER_CHUNK):
        out[top : top + _ROWS_PER_CHUNK] = convert(pixels[top : top + _ROWS_PER_CHUNK])
    return out


def _sixteen_bit(part: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded (v / 257); 32-bit values outside 0..65535 are clipped."""
    values = np.clip(part.astype(np.int64), 0, 65535)
    return ((values + 128) // 257).astype(np.uint8)


def _float(part: np.ndarray, scale: float) -> np.ndarray:
    values = np.nan_to_num(part.astype(np.float64) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
