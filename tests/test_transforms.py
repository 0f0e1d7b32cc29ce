"""Low-resolution augmentation (data.lowres_prob, data.lowres_scale): on, off, seeded, validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from personsearch.config import DataConfig, load_config
from personsearch.data.transforms import CropTransform, build_crop_transform
from personsearch.errors import ConfigError


@pytest.fixture
def image() -> Image.Image:
    # detail at the pixel scale, which a shrink-and-enlarge removes
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 60, 3), np.uint8))


def test_prob_one_changes_the_crop_and_keeps_its_size(image) -> None:
    plain = CropTransform(64, 32)(image)
    lowres = CropTransform(64, 32, lowres_prob=1.0, lowres_scale=(0.2, 0.5))
    out = lowres(image, np.random.default_rng(1))
    assert out.shape == plain.shape == (3, 64, 32)
    assert not torch.equal(out, plain)
    # fewer high frequencies: neighbouring pixels differ less than in the sharp crop
    assert out.diff(dim=1).abs().mean() < 0.5 * plain.diff(dim=1).abs().mean()


def test_prob_zero_changes_nothing_not_even_the_random_stream(image) -> None:
    """Off, it draws no random number: the other augmentations see the same stream as before."""
    other = {"flip": True, "color_jitter": 0.3, "random_erasing": 0.5}
    with_option = CropTransform(64, 32, lowres_prob=0.0, lowres_scale=(0.2, 1.0), **other)
    without = CropTransform(64, 32, **other)
    for seed in range(6):
        a = with_option(image, np.random.default_rng(seed))
        b = without(image, np.random.default_rng(seed))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and evaluation (no generator) never applies it
    lowres = CropTransform(64, 32, lowres_prob=1.0)
    torch.testing.assert_close(lowres(image), CropTransform(64, 32)(image), rtol=0, atol=0)


def test_a_function_of_the_generator_seed(image) -> None:
    lowres = CropTransform(64, 32, flip=True, lowres_prob=0.5, lowres_scale=(0.2, 1.0))
    first = [lowres(image, np.random.default_rng((7, epoch, 3))) for epoch in range(8)]
    again = [lowres(image, np.random.default_rng((7, epoch, 3))) for epoch in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len({tuple(t.flatten()[:64].tolist()) for t in first}) > 2  # the draws do vary


def test_scale_range_is_what_is_drawn(image) -> None:
    """[1, 1] shrinks to the crop size itself, and the result is the plain crop resized twice."""
    same = CropTransform(64, 32, lowres_prob=1.0, lowres_scale=(1.0, 1.0))
    expected = CropTransform(64, 32)(image.resize((32, 64), Image.BILINEAR))
    torch.testing.assert_close(same(image, np.random.default_rng(0)), expected, rtol=0, atol=0)


def test_training_transform_follows_the_config() -> None:
    data = DataConfig(crop_height=64, crop_width=32, lowres_prob=0.3, lowres_scale=[0.2, 1.0])
    train = build_crop_transform(data, train=True)
    assert (train.lowres_prob, train.lowres_scale) == (0.3, (0.2, 1.0))
    assert build_crop_transform(data, train=False).lowres_prob == 0.0
    # the older key still works (earlier run folders' config.yaml)
    assert build_crop_transform(DataConfig(low_resolution=0.4), train=True).lowres_prob == 0.4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.lowres_prob=1.5", "data.lowres_prob is a probability"),
        ("data.lowres_prob=-0.1", "data.lowres_prob is a probability"),
        ("data.lowres_scale=[0.0,0.5]", "0 < min <= max <= 1"),
        ("data.lowres_scale=[0.8,0.5]", "0 < min <= max <= 1"),
        ("data.lowres_scale=[0.5,1.2]", "0 < min <= max <= 1"),
        ("data.lowres_scale=[0.5]", "0 < min <= max <= 1"),
        ("data.lowres_scale=0.5", "expected a list"),
    ],
)
def test_bad_settings_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("synthetic-reid", [override])


def test_both_names_at_once_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="older name"):
        load_config("synthetic-reid", ["data.lowres_prob=0.5", "data.low_resolution=0.3"])
    config = load_config("synthetic-reid", ["data.lowres_prob=0.5", "data.lowres_scale=[0.2,1]"])
    assert config.data.lowres_scale == [0.2, 1.0]


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ValueError, match="lowres_scale"):
        CropTransform(64, 32, lowres_prob=0.5, lowres_scale=(0.0, 1.0))
