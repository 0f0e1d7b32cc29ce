"""Crop transforms: resize, optional augmentations, tensor, ImageNet normalisation.

Random choices come from an explicit `np.random.Generator`, never from a global RNG, so the
trainer can make every augmentation a function of (seed, epoch, sample) and resume exactly.
Without a generator the transform is deterministic (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageEnhance

from personsearch.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise

if TYPE_CHECKING:
    from personsearch.config import DataConfig


@dataclass(frozen=True)
class CropTransform:
    """Turn a person crop (PIL, RGB) into a normalised 3 x height x width float tensor."""

    height: int
    width: int
    flip: bool = False  #: random horizontal flip with probability 0.5
    random_erasing: float = 0.0  #: probability of erasing one random rectangle
    color_jitter: float = 0.0  #: brightness/contrast/saturation factors in [1 - s, 1 + s]
    #: probability of shrinking to a factor in `lowres_scale` of the crop size and back up
    lowres_prob: float = 0.0
    lowres_scale: tuple[float, float] = (0.25, 0.75)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        low, high = self.lowres_scale
        if not 0.0 <= self.lowres_prob <= 1.0 or not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"lowres_prob {self.lowres_prob} must lie in [0, 1] and lowres_scale "
                f"{self.lowres_scale} satisfy 0 < min <= max <= 1"
            )

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        size = (self.width, self.height)
        # Drawn only when enabled, so runs without it keep the random stream (and numbers) of
        # the other augmentations.
        if rng is not None and self.lowres_prob and rng.random() < self.lowres_prob:
            scale = rng.uniform(*self.lowres_scale)
            small = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
            # One resampling from the source straight to the small size (PIL's bilinear filter
            # widens with the reduction, so it averages like an area filter), then bilinear up:
            # the detail a camera would not have resolved for a person that small.
            image = image.resize(small, Image.BILINEAR)
        image = image.resize(size, Image.BILINEAR)
        if rng is not None and self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if rng is not None and self.color_jitter > 0:
            image = _jitter(image, self.color_jitter, rng)
        tensor = to_normalised_tensor(image, self.mean, self.std)
        if rng is not None and self.random_erasing and rng.random() < self.random_erasing:
            _erase(tensor, rng)
        return tensor


def to_normalised_tensor(
    image: Image.Image,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """RGB PIL image -> 3 x H x W float32, normalised per channel (as every crop is)."""
    return torch.from_numpy(normalise(np.asarray(image.convert("RGB")), mean, std))


def _jitter(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    low, high = max(0.0, 1 - strength), 1 + strength
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(low, high))
    return image


def _erase(tensor: torch.Tensor, rng: np.random.Generator, attempts: int = 10) -> None:
    """Zero (= the mean colour after normalising) one rectangle of 2-40 % of the area, in place."""
    _, height, width = tensor.shape
    area = height * width
    for _ in range(attempts):
        target = rng.uniform(0.02, 0.4) * area
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
        h = int(round(np.sqrt(target * aspect)))
        w = int(round(np.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            tensor[:, top : top + h, left : left + w] = 0.0
            return


def build_crop_transform(data: DataConfig, train: bool) -> CropTransform:
    """The training transform (augmentations from the config) or the evaluation one (none)."""
    if not train:
        return CropTransform(data.crop_height, data.crop_width)
    return CropTransform(
        data.crop_height,
        data.crop_width,
        flip=data.flip,
        random_erasing=data.random_erasing,
        color_jitter=data.color_jitter,
        lowres_prob=data.lowres_prob or data.low_resolution,
        lowres_scale=(float(data.lowres_scale[0]), float(data.lowres_scale[1])),
    )
