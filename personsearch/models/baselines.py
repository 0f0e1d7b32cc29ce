"""The multi-scale baselines of the paper's Table 4, on the same backbones as CLSA.

- `PlainHead`: the ResNet-50 row: the pooled last stage (2048-d for ResNet-50) and a classifier.
- The in-network pyramid row is `clsa.PyramidHead` trained without the alignment loss.
- `FPNHead`: the FPN row: a top-down pathway with lateral connections builds a new pyramid whose
  levels then go through the same per-level embedding and classifier as CLSA.
- `resize_crops`: the image pyramid (MST) row runs the plain network on resized copies of the
  crop; the loop over scales lives in ReidModel because it runs the backbone once per scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.models.clsa import PyramidHead


class PlainHead(nn.Module):
    """Global average pooling of one stage -> feature; a bias-free classifier on it."""

    def __init__(self, level: str, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.level_names = (level,)
        self.feature_dims = (in_channels,)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)

    def forward(self, stages: Mapping[str, Tensor]) -> list[Tensor]:
        return [self.pool(stages[self.level_names[0]]).flatten(1)]

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [self.classifier(feature) for feature in features]


class FPNHead(nn.Module):
    """Feature Pyramid Network (Lin et al. 2017) top-down pathway, then a `PyramidHead`.

    P_top = lateral(C_top); P_l = lateral(C_l) + nearest-upsample(P_{l+1}); every P_l is then
    smoothed by a 3x3 conv, as in FPN. Laterals and smoothing are `channels` wide (256 in FPN).
    """

    def __init__(
        self,
        levels: Sequence[str],
        in_channels: Mapping[str, int],
        channels: int,
        feature_dim: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleDict(
            {name: nn.Conv2d(in_channels[name], channels, kernel_size=1) for name in levels}
        )
        self.smooth = nn.ModuleDict(
            {name: nn.Conv2d(channels, channels, kernel_size=3, padding=1) for name in levels}
        )
        self.pyramid = PyramidHead(
            levels, dict.fromkeys(levels, channels), feature_dim, num_classes
        )
        self.level_names = self.pyramid.level_names
        self.feature_dims = self.pyramid.feature_dims

    def top_down(self, stages: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The FPN maps P_l by level name."""
        merged: dict[str, Tensor] = {}
        above: Tensor | None = None
        for name in reversed(self.level_names):
            lateral = self.lateral[name](stages[name])
            if above is not None:
                lateral = lateral + F.interpolate(above, size=lateral.shape[-2:], mode="nearest")
            merged[name] = above = lateral
        return {name: self.smooth[name](merged[name]) for name in self.level_names}

    def forward(self, stages: Mapping[str, Tensor]) -> list[Tensor]:
        return self.pyramid(self.top_down(stages))

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        return self.pyramid.classify(features)


def resize_crops(images: Tensor, scale: float) -> Tensor:
    """The crops resized by `scale` (bilinear, antialiased when shrinking); scale 1 is a no-op."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
    )
