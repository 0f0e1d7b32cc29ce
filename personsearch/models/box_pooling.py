"""Region feature pooling for the detector's box head (CLSA section 3.1, change 1).

Every pooler here has torchvision's `box_roi_pool` interface, so `RoIHeads` takes it unchanged:
`pooler(features: dict[str, Tensor], proposals: list[Tensor], image_shapes) -> K x C x 7 x 7`,
with proposals in the (resized) input image's pixels.

- "crop_resize_maxpool" (the paper's choice, after Chen et al. 2017): crop each region from the
  feature map and resize it bilinearly to 14 x 14, then max-pool 2 x 2 to 7 x 7. The crop-and-
  resize is `roi_align(output_size=14, sampling_ratio=1, aligned=True)`: one bilinear sample per
  output cell, taken at the cell's centre, with pixel centres at +0.5 (aligned=True). This is TF's
  `crop_and_resize` up to where the 14 samples sit: TF spreads them from edge to edge of the box
  (endpoints included), roi_align at the centres of 14 equal cells; both are one bilinear point
  per cell over the same box, and the centred grid is the one that does not shift the features.
- "roi_align": RoIAlign straight to 7 x 7, 2 x 2 bilinear samples averaged per cell (Mask R-CNN's
  pooling; torchvision's own Faster R-CNN uses it too).
- "roi_pool": the original Faster R-CNN RoI max pooling to 7 x 7 (the paper's "without
  resize & max-pool" column of Table 5).
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

PoolingMode = Literal["crop_resize_maxpool", "roi_align", "roi_pool"]
POOLING_MODES: tuple[str, ...] = ("crop_resize_maxpool", "roi_align", "roi_pool")


def infer_spatial_scale(feature: Tensor, image_shapes: list[tuple[int, int]]) -> float:
    """Feature-map pixels per input pixel, rounded to a power of two (stride 16 -> 1/16).

    The batch is padded up to a multiple of the stride, so the largest image's height over the
    feature height is the stride up to that padding; rounding in log2 removes the padding.
    """
    if not image_shapes:
        raise ValueError("image_shapes is empty: cannot infer the feature stride")
    largest_height = max(height for height, _ in image_shapes)
    approx = feature.shape[-2] / float(largest_height)
    return 2.0 ** round(math.log2(approx))


class RegionPooler(nn.Module):
    """Pool every proposal's region of one named feature map to `output_size` x `output_size`."""

    def __init__(
        self,
        mode: PoolingMode = "crop_resize_maxpool",
        featmap_name: str = "res4",
        output_size: int = 7,
    ) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling {mode!r}: choose one of {', '.join(POOLING_MODES)}")
        self.mode = mode
        self.featmap_name = featmap_name
        self.output_size = output_size

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        feature = features[self.featmap_name]
        scale = infer_spatial_scale(feature, image_shapes)
        return self.pool(feature, proposals, scale)

    def pool(self, feature: Tensor, boxes: list[Tensor], spatial_scale: float) -> Tensor:
        """Pool `boxes` (one x1y1x2y2 tensor per image) given the feature map's scale."""
        size = self.output_size
        if self.mode == "crop_resize_maxpool":
            crops = roi_align(
                feature,
                boxes,
                output_size=2 * size,
                spatial_scale=spatial_scale,
                sampling_ratio=1,
                aligned=True,
            )
            return F.max_pool2d(crops, kernel_size=2, stride=2)
        if self.mode == "roi_align":
            return roi_align(
                feature,
                boxes,
                output_size=size,
                spatial_scale=spatial_scale,
                sampling_ratio=2,
                aligned=True,
            )
        # roi_pool has no half-precision kernel on every device; pool in float32 under AMP
        pooled = roi_pool(
            feature.float(),
            [b.float() for b in boxes],
            output_size=size,
            spatial_scale=spatial_scale,
        )
        return pooled.to(feature.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, featmap={self.featmap_name}, output_size={self.output_size}"


def build_box_pooler(mode: PoolingMode, featmap_name: str = "res4") -> RegionPooler:
    """The box head's region pooler for a pooling switch value (see the module docstring)."""
    return RegionPooler(mode, featmap_name)
