"""The re-id head interface (`ReidHead`) and the in-network feature pyramid head (`PyramidHead`,
CLSA's, paper Sec. 3.2, Fig. 3).

Each pyramid level (the last feature map of a backbone stage) is average-pooled, projected by a
FC layer, batch-normalised and passed through a ReLU to give the level's feature x^k; a classifier
per level maps x^k to logits over the training identities. The same head serves the in-network
pyramid baseline: what makes it CLSA is the cross-level alignment loss (losses.clsa_alignment_kl),
chosen by the loss weights in ReidConfig, not anything in the layers.

Every head in this package is a `ReidHead`: `features(backbone, images)` returns the per-level
features (lowest level first, top level last) and `classify(features)` the per-level logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn


class ReidHead(nn.Module):
    """The interface of every re-id head; `level_names` and `feature_dims` list its levels,
    lowest first, top last.

    Most heads read their levels off one backbone pass: they define `forward(stages)` (the
    backbone's stage maps by name -> per-level features) and keep this `features`; a head that
    runs the backbone itself (the image pyramid, baselines.MSTHead) overrides `features`.
    """

    level_names: tuple[str, ...]
    feature_dims: tuple[int, ...]

    def features(self, backbone: nn.Module, images: Tensor) -> list[Tensor]:
        """x^1..x^K for a batch of crops, top level last."""
        return self(backbone(images))

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Identity logits per level."""
        raise NotImplementedError


class LevelEmbedding(nn.Module):
    """Average pooling -> FC -> BN -> ReLU: one pyramid level's feature vector x^k."""

    def __init__(self, in_channels: int, feature_dim: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # No FC bias: the BatchNorm that follows subtracts the mean, which would cancel it.
        self.fc = nn.Linear(in_channels, feature_dim, bias=False)
        self.bn = nn.BatchNorm1d(feature_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.relu(self.bn(self.fc(self.pool(feature_map).flatten(1))))


class PyramidHead(ReidHead):
    """One `LevelEmbedding` and one identity classifier per named level."""

    def __init__(
        self,
        levels: Sequence[str],
        in_channels: Mapping[str, int],
        feature_dim: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.level_names = tuple(levels)
        self.feature_dims = tuple(feature_dim for _ in self.level_names)
        self.embeddings = nn.ModuleDict(
            {name: LevelEmbedding(in_channels[name], feature_dim) for name in self.level_names}
        )
        # Eq. (1) scores W_y^T x: a classifier without bias.
        self.classifiers = nn.ModuleDict(
            {name: nn.Linear(feature_dim, num_classes, bias=False) for name in self.level_names}
        )

    def forward(self, stages: Mapping[str, Tensor]) -> list[Tensor]:
        return [self.embeddings[name](stages[name]) for name in self.level_names]

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [
            self.classifiers[name](feature)
            for name, feature in zip(self.level_names, features, strict=True)
        ]
