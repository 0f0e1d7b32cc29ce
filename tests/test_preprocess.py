"""personsearch.data.preprocess: one crop rule, bit for bit the copies it replaced.

The reference functions are the implementations that lived in search/onnx_embedder.py
(preprocess_crops), search/adapters.py (TorchReidEmbedder._to_tensor), data/transforms.py
(to_normalised_tensor) and search/onnx_detector.py (network_input's normalisation), verbatim.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from personsearch.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalise,
    preprocess_crops,
    resize_crop,
)

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def onnx_preprocess(crops, height, width, mean, std, pixel_scale=255.0, channel_order="rgb"):
    batch = np.empty((len(crops), height, width, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        image = Image.fromarray(np.asarray(crop).astype(np.uint8, copy=False), "RGB")
        batch[i] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    if channel_order == "bgr":
        batch = batch[..., ::-1]
    batch /= np.float32(pixel_scale)
    batch -= np.asarray(mean, dtype=np.float32)
    batch /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def torch_embedder_to_tensor(crop, height, width):
    image = Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8))
    image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def transforms_normalised(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def onnx_detector_input(pixels, mean, std, pixel_scale, channel_order):
    if channel_order == "bgr":
        pixels = pixels[..., ::-1]
    pixels = (pixels / np.float32(pixel_scale) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def random_crops(seed: int, count: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(
            0, 256, (int(rng.integers(1, 120)), int(rng.integers(1, 70)), 3), dtype=np.uint8
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", range(4))
def test_crops_are_the_numbers_every_old_copy_gave(seed):
    crops = random_crops(seed)
    crops.append(crops[0][::2, ::-1])  # a non-contiguous view
    ours = preprocess_crops(crops, 64, 32)
    assert ours.dtype == np.float32 and ours.shape == (len(crops), 3, 64, 32)
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, onnx_preprocess(crops, 64, 32, IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_array_equal(
        ours, np.stack([torch_embedder_to_tensor(c, 64, 32) for c in crops])
    )
    for crop, row in zip(crops, ours, strict=True):
        image = Image.fromarray(crop).resize((32, 64), Image.BILINEAR)
        np.testing.assert_array_equal(normalise(np.asarray(image)), transforms_normalised(image))
        np.testing.assert_array_equal(row, transforms_normalised(image))  # training = search
    # an exported model's own settings (the ONNX embedder)
    settings = ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0), 1.0, "bgr")
    np.testing.assert_array_equal(
        preprocess_crops(crops, 40, 20, *settings), onnx_preprocess(crops, 40, 20, *settings)
    )


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_whole_images_as_the_onnx_detector_fed_them(channel_order):
    rng = np.random.default_rng(3)
    settings = ((0.1, 0.2, 0.3), (0.9, 0.8, 0.7), 255.0, channel_order)
    for pixels in (
        rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
        rng.uniform(0, 255, (48, 40, 3)).astype(np.float32),
    ):
        ours = normalise(pixels, *settings)
        np.testing.assert_array_equal(ours, onnx_detector_input(pixels, *settings))
    before = pixels.copy()
    normalise(pixels)
    np.testing.assert_array_equal(pixels, before)  # the caller's pixels are left alone


def test_training_transform_is_the_shared_normalisation():
    from personsearch.data.transforms import CropTransform, to_normalised_tensor

    image = Image.fromarray(random_crops(7, 1)[0]).resize((24, 48))
    tensor = to_normalised_tensor(image)
    np.testing.assert_array_equal(tensor.numpy(), transforms_normalised(image))
    np.testing.assert_array_equal(CropTransform(48, 24)(image).numpy(), tensor.numpy())


def test_a_bad_crop_is_named():
    with pytest.raises(ValueError, match="non-empty H x W x 3"):
        resize_crop(np.zeros((0, 5, 3), np.uint8), 8, 4)
    with pytest.raises(ValueError, match="non-empty H x W x 3"):
        preprocess_crops([np.zeros((5, 5), np.uint8)], 8, 4)


def test_no_torch_import():
    code = "import sys, personsearch.data.preprocess; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
