"""The multi-scale baselines of the paper's Table 4, on the same backbones as CLSA.

- `PlainHead`: the ResNet-50 row: the pooled last stage (2048-d for ResNet-50) and a classifier.
- The in-network pyramid row is `clsa.PyramidHead` trained without the alignment loss.
- `FPNHead`: the FPN row: a top-down pathway with lateral connections builds a new pyramid whose
  levels then go through the same per-level embedding and classifier as CLSA.
- `MSTHead`: the image pyramid (MST) row: the plain head on the backbone run over copies of
  the crop resized by `resize_crops`, one classifier shared by every scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.models.heads import PyramidHead, ReidHead


class PlainHead(ReidHead):
    """Global average pooling of one stage -> feature; a bias-free classifier on it."""

    def __init__(self, level: str, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stage = level
        self.level_names = (level,)
        self.feature_dims = (in_channels,)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)

    def forward(self, stages: Mapping[str, Tensor]) -> list[Tensor]:
        return [self.pool(stages[self.stage]).flatten(1)]

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [self.classifier(feature) for feature in features]


class MSTHead(PlainHead):
    """Multi-scale testing: the plain head's feature of the crop at every scale in `scales`.

    Its levels are the scales, ascending, so the full-size crop (scale 1) is the top level; all
    share the backbone, the pooling and the one classifier (the same parameters as PlainHead,
    so the state-dict keys are the plain head's). `forward(stages)` pools one scale's stages.
    """

    def __init__(
        self, level: str, in_channels: int, num_classes: int, scales: Sequence[float]
    ) -> None:
        super().__init__(level, in_channels, num_classes)
        self.scales = tuple(scales)
        self.level_names = tuple(f"scale{s:g}" for s in self.scales)
        self.feature_dims = (in_channels,) * len(self.scales)

    def features(self, backbone: nn.Module, images: Tensor) -> list[Tensor]:
        # one backbone pass per scale
        return [self(backbone(resize_crops(images, scale)))[0] for scale in self.scales]


class FPNHead(ReidHead):
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
