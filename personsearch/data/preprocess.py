"""Network input from pixels: resize a person crop, scale, normalise per channel, channels first.

The one place for the ImageNet statistics and the crop rule every re-id model sees, in training
(data/transforms.py), evaluation, search (the torch and ONNX embedders) and export, so a crop
becomes the same numbers everywhere:

    batch = preprocess_crops(crops, height, width)   # N x 3 x height x width float32

NumPy and Pillow only (no torch), so the ONNX embedder works without PyTorch installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

#: Per-channel (RGB) statistics of ImageNet, in 0..1 pixel units: every backbone is pretrained
#: with them, so every input is normalised with them unless a model says otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_crop(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """An H x W x 3 uint8 RGB crop resized to height x width (Pillow bilinear, as in training).

    Raises ValueError unless the crop is a non-empty H x W x 3 array.
    """
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"a crop must be a non-empty H x W x 3 array, got shape {crop.shape}")
    image = Image.fromarray(crop.astype(np.uint8, copy=False), "RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def normalise(
    pixels: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pixel_scale: float = 255.0,
    channel_order: str = "rgb",
) -> np.ndarray:
    """... x H x W x 3 RGB pixels -> ... x 3 x H x W float32: (pixel / pixel_scale - mean) / std.

    `channel_order="bgr"` reverses the channels first (mean and std are then in BGR order).
    Every step is a float32 operation, in this order, so the result is the same bit for bit
    wherever it is computed.
    """
    array = np.asarray(pixels, dtype=np.float32)
    if channel_order == "bgr":
        array = array[..., ::-1]
    array = array / np.float32(pixel_scale)  # a new array: the caller's pixels stay as they are
    array -= np.asarray(mean, dtype=np.float32)
    array /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def preprocess_crops(
    crops: Sequence[np.ndarray],
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pixel_scale: float = 255.0,
    channel_order: str = "rgb",
) -> np.ndarray:
    """H x W x 3 uint8 RGB crops of any sizes -> N x 3 x height x width float32 network input.

    Each crop is resized (`resize_crop`) and normalised (`normalise`).
    """
    batch = np.empty((len(crops), height, width, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        batch[i] = resize_crop(crop, height, width)
    return normalise(batch, mean, std, pixel_scale, channel_order)
