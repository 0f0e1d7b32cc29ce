"""Reading images with errors that name the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from personsearch.errors import ImageError


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully and return it in RGB; raise ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode image {path}: {error}") from error


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image into an H x W x 3 uint8 array."""
    return np.asarray(open_rgb(path))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image header {path}: {error}") from error
