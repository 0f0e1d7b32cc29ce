"""The person detector of CLSA section 3.1: a C4 Faster R-CNN built from torchvision's parts.

Layout (C4, as in Chen et al. 2017, the paper's reference [4]):

    image -> GeneralizedRCNNTransform (resize, normalise, batch)
          -> trunk: stem, res2, res3, res4 of the backbone  (stride 16)
          -> RPN on res4 (torchvision RegionProposalNetwork, anchors sized for persons)
          -> region pooling of res4 (box_pooling.RegionPooler) -> K x C4 x 7 x 7
          -> box head: res5 (its stride-2 convolutions set to stride 1, as [4] does, so res5
             sees the 7 x 7 grid) -> global average pool -> FastRCNNPredictor (person, background)

The paper's three changes are switches of `DetectorConfig` so Table 5 can be re-run:
1. `pooling`: "crop_resize_maxpool" (paper) | "roi_pool" (original Faster R-CNN) | "roi_align".
2. `freeze_first_block`: stem and res2 take no gradient while fine-tuning (paper: True).
3. `keep_small_proposals`: the RPN drops no proposal for its size before NMS (paper: True); off,
   proposals narrower or shorter than `proposal_min_size` input pixels are dropped (16 in
   py-faster-rcnn). After NMS the top `rpn_post_nms_top_n_*` (256) proposals per image are kept.
At search time only detections scored at least `score_thresh` (0.5) are returned: `>=`, as the
evaluator, the search pipeline and the crop reader keep them (torchvision's own test is `>`).

Batch norm: with one or two images per GPU the batch statistics of a detector are noise, so
every batch norm of the backbone is replaced by torchvision's FrozenBatchNorm2d (ImageNet
statistics and affine parameters, fixed) when `frozen_batchnorm` is on, as is standard for
detection fine-tuning. The frozen first block is always frozen this way, so nothing in it moves.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d

from personsearch.config_base import ConfigBase
from personsearch.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from personsearch.errors import ConfigError
from personsearch.models.backbones import backbone_option_problems, build_backbone
from personsearch.models.box_pooling import POOLING_MODES, build_box_pooler

NUM_CLASSES = 2  # background, person
FEATURE_STAGE = "res4"  # the RPN and the region pooling read this stage
HEAD_STAGE = "res5"  # the box head runs this stage on the pooled regions
FIRST_BLOCK_LAST_STAGE = "res2"  # the first block is every module up to and including res2
#: torchvision COCO detectors training can start from (the Faster R-CNN family: RPN + box head)
COCO_START_MODELS = (
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
COCO_PERSON_CLASS = 1  # COCO's category id of "person" in torchvision's 91-way heads


@dataclass(frozen=True)
class DetectorConfig(ConfigBase):
    """Everything that defines the detector; the defaults are the paper's settings. Checked at
    construction (personsearch.config_base)."""

    SECTION = "model"

    backbone: str = "resnet50"  #: "resnet50" | "resnet18" | "mobilenet_v2"
    #: ImageNet weights: True (torchvision's, else the local copy), False, or a weights file path
    pretrained: bool | str = True
    missing_weights: str = "warn"  #: when pretrained=True cannot be honoured: "warn" or "raise"
    pooling: str = "crop_resize_maxpool"  #: change (1); see box_pooling.py
    freeze_first_block: bool = True  #: change (2)
    keep_small_proposals: bool = True  #: change (3)
    proposal_min_size: float = 16.0  #: input pixels; used only when keep_small_proposals is off
    frozen_batchnorm: bool = True
    head_stride_one: bool = True  #: run res5 at stride 1 on the 7 x 7 pooled grid
    # input resizing (GeneralizedRCNNTransform): shorter side to min_size, longer at most max_size
    min_size: int = 600
    max_size: int = 1000
    # anchors on res4 (stride 16): sizes in input pixels, aspect ratios as height / width
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_aspect_ratios: tuple[float, ...] = (1.0, 2.0, 3.0)
    # region proposal network
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 12000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 256
    rpn_post_nms_top_n_test: int = 256
    rpn_nms_thresh: float = 0.7
    # box head
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 256  #: regions sampled per image (the paper's "batch size")
    box_positive_fraction: float = 0.25
    score_thresh: float = 0.5  #: detections kept at search time score at least this
    nms_thresh: float = 0.4
    detections_per_img: int = 100
    #: fine-tune a torchvision COCO Faster R-CNN instead of building the C4 detector above: its
    #: name (COCO_START_MODELS). Its person class becomes the one foreground class; backbone,
    #: pretrained, pooling, anchors and head_stride_one then do not apply (its own FPN layout is
    #: kept), the thresholds, input sizes, frozen batch norm and first block do.
    coco_start: str | None = None
    #: coco_start's COCO weights: a local file (default: torch hub's cache; "random": untrained)
    coco_weights: str | None = None

    def check(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        # the backbone name itself is checked by build_backbone, as before
        problems = backbone_option_problems(self.backbone, missing_weights=self.missing_weights)
        if problems:
            raise ConfigError(f"invalid detector config: {problems[0]}")
        if self.pooling not in POOLING_MODES:
            raise ConfigError(
                f"detector.pooling={self.pooling!r}: choose one of {', '.join(POOLING_MODES)}"
            )
        if not 0 < self.min_size <= self.max_size:
            raise ConfigError(
                f"detector.min_size={self.min_size} must be in (0, max_size={self.max_size}]"
            )
        if not self.anchor_sizes or min(self.anchor_sizes) <= 0:
            raise ConfigError(
                f"detector.anchor_sizes={self.anchor_sizes} must be positive and not empty"
            )
        if not self.anchor_aspect_ratios or min(self.anchor_aspect_ratios) <= 0:
            raise ConfigError(
                f"detector.anchor_aspect_ratios={self.anchor_aspect_ratios} must be positive"
            )
        for name in (
            "score_thresh",
            "nms_thresh",
            "rpn_nms_thresh",
            "rpn_positive_fraction",
            "box_positive_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"detector.{name}={value} must be in [0, 1]")
        for name in (
            "rpn_batch_size_per_image",
            "box_batch_size_per_image",
            "detections_per_img",
            "rpn_pre_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_train",
            "rpn_post_nms_top_n_test",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"detector.{name}={getattr(self, name)} must be positive")
        if self.proposal_min_size < 0:
            raise ConfigError(f"detector.proposal_min_size={self.proposal_min_size} must be >= 0")
        self._validate_coco_start()

    def _validate_coco_start(self) -> None:
        if self.coco_start is not None and self.coco_start not in COCO_START_MODELS:
            raise ConfigError(
                f"detector.coco_start={self.coco_start!r}: choose one of "
                f"{', '.join(COCO_START_MODELS)} (two-stage detectors: the "
                "person-search detector is a Faster R-CNN)"
            )
        if self.coco_weights is not None and self.coco_start is None:
            raise ConfigError(
                "detector.coco_weights is set but detector.coco_start is not: "
                "name the COCO detector the weights belong to"
            )


class PersonDetector(GeneralizedRCNN):
    """torchvision's GeneralizedRCNN with the person-search conventions.

    forward(images, targets): images are 3 x H x W float tensors in [0, 1], of any sizes.
    Training returns {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"};
    eval returns one {"boxes": N x 4 x1y1x2y2 in the input image's pixels, "scores": N} per image.
    """

    def __init__(
        self,
        config: DetectorConfig,
        trunk: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: GeneralizedRCNNTransform,
    ) -> None:
        super().__init__(trunk, rpn, roi_heads, transform)
        self.config = config
        self.weights_source = "random"  #: where the backbone's initial weights came from
        self.score_thresh = float(roi_heads.score_thresh)

    @property
    def score_thresh(self) -> float:
        """Detections scored below this are dropped, those scored at least this kept (0.5)."""
        return self._score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        # evaluation of the detector itself lowers it to trace the whole precision-recall curve
        self._score_thresh = float(value)
        # torchvision keeps scores > its threshold, compared in float32 (the scores' type): the
        # float32 just below the threshold makes that `score >= float32(value)`, the rule of the
        # evaluator and of every other detection filter here.
        value32 = torch.tensor(float(value), dtype=torch.float32)
        below = torch.nextafter(value32, torch.tensor(float("-inf"), dtype=torch.float32))
        self.roi_heads.score_thresh = float(below)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        output = super().forward(images, targets)
        if self.training:
            return output
        return [{"boxes": det["boxes"], "scores": det["scores"]} for det in output]


class _Trunk(nn.Module):
    """The backbone's stages up to res4, run in order; returns {"res4": features}."""

    def __init__(self, stages: OrderedDict[str, nn.Module], out_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        for stage in self.stages.values():
            x = stage(x)
        return OrderedDict([(FEATURE_STAGE, x)])


class _StageBoxHead(nn.Module):
    """A backbone stage applied to pooled regions, then global average pooling: K x C."""

    def __init__(self, stage: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.stage = stage
        self.out_channels = out_channels

    def forward(self, regions: Tensor) -> Tensor:
        return self.stage(regions).mean(dim=(2, 3))


def split_backbone_stages(backbone: nn.Module) -> OrderedDict[str, nn.Module]:
    """The backbone's top-level modules in forward order, keyed by name, ending with res5.

    Relies on the backbones.py contract: the stages are direct children (or children of a
    `stages` ModuleDict) registered in the order they run, named res2..res5, with whatever
    stem precedes res2.
    """
    container = getattr(backbone, "stages", None)
    children = (
        container.named_children()
        if isinstance(container, nn.ModuleDict)
        else backbone.named_children()
    )
    stages = OrderedDict((name, module) for name, module in children)
    names = list(stages)
    for required in (FIRST_BLOCK_LAST_STAGE, "res3", FEATURE_STAGE, HEAD_STAGE):
        if required not in stages:
            raise ConfigError(
                f"backbone {type(backbone).__name__} has no stage {required!r} "
                f"(children: {', '.join(names)})"
            )
    return OrderedDict((name, stages[name]) for name in names[: names.index(HEAD_STAGE) + 1])


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside `module` with a FrozenBatchNorm2d holding its values."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def set_stride_one(module: nn.Module) -> None:
    """Turn every stride-2 convolution of a stage into stride 1 (its weights stay valid)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (1, 1)


def first_block_parameters(detector: PersonDetector) -> list[nn.Parameter]:
    """Parameters of the stem and res2 (the block the paper freezes)."""
    names = list(detector.backbone.stages)
    first = names[: names.index(FIRST_BLOCK_LAST_STAGE) + 1]
    return [p for name in first for p in detector.backbone.stages[name].parameters()]


def build_detector(config: DetectorConfig | None = None) -> PersonDetector:
    """Build the detector of `config` (the paper's settings when None)."""
    config = config or DetectorConfig()
    if config.coco_start is not None:
        return _detector_from_coco(config)
    backbone = build_backbone(
        config.backbone, pretrained=config.pretrained, missing_weights=config.missing_weights
    )  # type: ignore[arg-type]
    channels = dict(backbone.stage_channels)
    stages = split_backbone_stages(backbone)
    head_stage = stages.pop(HEAD_STAGE)

    if config.frozen_batchnorm:
        stages = OrderedDict((name, freeze_batchnorm(m)) for name, m in stages.items())
        head_stage = freeze_batchnorm(head_stage)
    if config.freeze_first_block:
        names = list(stages)
        for name in names[: names.index(FIRST_BLOCK_LAST_STAGE) + 1]:
            stages[name] = freeze_batchnorm(stages[name])
            stages[name].requires_grad_(False)
    if config.head_stride_one:
        set_stride_one(head_stage)

    trunk = _Trunk(stages, channels[FEATURE_STAGE])
    anchors = AnchorGenerator(
        sizes=(config.anchor_sizes,), aspect_ratios=(config.anchor_aspect_ratios,)
    )
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(channels[FEATURE_STAGE], anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
    )
    # torchvision drops proposals with a side below rpn.min_size (1e-3) before NMS, using >=;
    # 0 keeps every proposal whatever its size (change 3)
    rpn.min_size = 0.0 if config.keep_small_proposals else float(config.proposal_min_size)

    roi_heads = RoIHeads(
        build_box_pooler(config.pooling, FEATURE_STAGE),  # type: ignore[arg-type]
        _StageBoxHead(head_stage, channels[HEAD_STAGE]),
        FastRCNNPredictor(channels[HEAD_STAGE], NUM_CLASSES),
        fg_iou_thresh=config.box_fg_iou_thresh,
        bg_iou_thresh=config.box_bg_iou_thresh,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=None,
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
    )
    transform = GeneralizedRCNNTransform(
        config.min_size, config.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD)
    )
    detector = PersonDetector(config, trunk, rpn, roi_heads, transform)
    detector.weights_source = backbone.weights_source
    return detector


def _person_predictor(predictor: FastRCNNPredictor) -> FastRCNNPredictor:
    """A 2-class (background, person) box predictor cut from a COCO one: its background and
    person rows, so fine-tuning starts from COCO's person classifier and box regressor."""
    keep = torch.tensor([0, COCO_PERSON_CLASS])
    box_rows = torch.cat([torch.arange(4 * c, 4 * c + 4) for c in keep.tolist()])
    person = FastRCNNPredictor(predictor.cls_score.in_features, NUM_CLASSES)
    with torch.no_grad():
        person.cls_score.weight.copy_(predictor.cls_score.weight[keep])
        person.cls_score.bias.copy_(predictor.cls_score.bias[keep])
        person.bbox_pred.weight.copy_(predictor.bbox_pred.weight[box_rows])
        person.bbox_pred.bias.copy_(predictor.bbox_pred.bias[box_rows])
    return person


def _freeze_coco_first_block(body: nn.Module) -> None:
    """The stem and first stage of a COCO detector's backbone body (everything to stride 4)."""
    names = [name for name, _ in body.named_children()]
    # ResNet bodies: conv1, bn1, relu, maxpool, layer1; MobileNetV3 bodies: features 0-3
    last = "layer1" if "layer1" in names else "3"
    for name, child in body.named_children():
        child.requires_grad_(False)
        if name == last:
            break


def _detector_from_coco(config: DetectorConfig) -> PersonDetector:
    """A torchvision COCO Faster R-CNN turned into a person detector (see `coco_start`)."""
    from personsearch.models.coco import build_coco_network

    network, source = build_coco_network(
        config.coco_start,
        config.coco_weights,  # type: ignore[arg-type]
        config.detections_per_img,
    )
    roi_heads = network.roi_heads
    roi_heads.box_predictor = _person_predictor(roi_heads.box_predictor)
    roi_heads.nms_thresh = config.nms_thresh
    roi_heads.detections_per_img = config.detections_per_img
    backbone = network.backbone
    if config.frozen_batchnorm:
        backbone = freeze_batchnorm(backbone)
    if config.freeze_first_block:
        _freeze_coco_first_block(backbone.body)
    transform = GeneralizedRCNNTransform(
        config.min_size, config.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD)
    )
    detector = PersonDetector(config, backbone, network.rpn, roi_heads, transform)
    detector.score_thresh = config.score_thresh
    detector.weights_source = source
    return detector
