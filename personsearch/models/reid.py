"""The re-id network: one backbone, one head, the losses; built from a `ReidConfig`.

    model = ReidModel(ReidConfig(num_classes=5532))              # CLSA on ResNet-50
    losses = model.train()(crops, labels)                        # {"ce": ..., "kl": ...}
    sum(losses.values()).backward()                              # each value already weighted
    embeddings = model.eval()(crops)                             # N x D, rows of unit length

Heads ("clsa", "pyramid", "fpn", "plain", "mst"; HEAD_SPECS says what each name builds) differ
in layers and in their default loss weights; every weight lives in the config, so the training objective is always
    ce_weight * CE(top) + level_ce_weight * sum_s CE(level s) + kl_weight * T^2 sum_s KL(top || s)
(CLSA, paper Eq. 4: 1, 0, 1; the baselines: 1, 1, 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from personsearch.config_base import ConfigBase
from personsearch.errors import ConfigError
from personsearch.models.backbones import (
    BACKBONES,
    STAGES,
    backbone_option_problems,
    backbone_stages,
    build_backbone,
)
from personsearch.models.baselines import FPNHead, MSTHead, PlainHead
from personsearch.models.heads import PyramidHead, ReidHead
from personsearch.models.losses import (
    clsa_alignment_kl,
    cross_entropy,
    l2_normalize,
    softened_distribution_stats,
    top1_accuracy,
)


def _pyramid_head(config: ReidConfig, channels: Mapping[str, int]) -> ReidHead:
    return PyramidHead(config.levels, channels, config.feature_dim, config.num_classes)


def _fpn_head(config: ReidConfig, channels: Mapping[str, int]) -> ReidHead:
    return FPNHead(
        config.levels, channels, config.fpn_channels, config.feature_dim, config.num_classes
    )


def _plain_head(config: ReidConfig, channels: Mapping[str, int]) -> ReidHead:
    stage = config.levels[0]
    return PlainHead(stage, channels[stage], config.num_classes)


def _mst_head(config: ReidConfig, channels: Mapping[str, int]) -> ReidHead:
    stage = config.levels[0]
    return MSTHead(stage, channels[stage], config.num_classes, config.mst_scales)


@dataclass(frozen=True)
class HeadSpec:
    """What a head name stands for: its default levels and loss weights, and its builder
    (a resolved config and the backbone's stage channels -> the head)."""

    levels: tuple[str, ...]
    level_ce_weight: float
    kl_weight: float
    build: Callable[[ReidConfig, Mapping[str, int]], ReidHead]
    #: pools one stage: `levels` must name exactly one
    one_stage: bool = False
    #: its levels are the crop scales of `mst_scales` (which must then hold 1.0), not stages
    scale_levels: bool = False


HEAD_SPECS = {
    # The paper's final model: pyramid "5-4-3", CE on the top level, alignment on the others.
    "clsa": HeadSpec(
        ("res3", "res4", "res5"), level_ce_weight=0.0, kl_weight=1.0, build=_pyramid_head
    ),
    # Same layers as CLSA; each level learns from its own CE instead of being aligned.
    "pyramid": HeadSpec(
        ("res3", "res4", "res5"), level_ce_weight=1.0, kl_weight=0.0, build=_pyramid_head
    ),
    # FPN's P2..P5; it also reproduces the paper's FPN cost (4.519 GFLOPs, see docs/models.md).
    "fpn": HeadSpec(
        ("res2", "res3", "res4", "res5"), level_ce_weight=1.0, kl_weight=0.0, build=_fpn_head
    ),
    "plain": HeadSpec(
        ("res5",), level_ce_weight=0.0, kl_weight=0.0, build=_plain_head, one_stage=True
    ),
    # Each smaller scale is classified with the shared classifier and its own CE.
    "mst": HeadSpec(
        ("res5",),
        level_ce_weight=1.0,
        kl_weight=0.0,
        build=_mst_head,
        one_stage=True,
        scale_levels=True,
    ),
}
HEADS = tuple(HEAD_SPECS)


def parse_levels(levels: str | int | Sequence[str]) -> tuple[str, ...]:
    """Pyramid levels as stage names, lowest first: "5-4-3" -> ("res3", "res4", "res5").

    Accepts the paper's block notation ("5-4", "5-4-3", "5-4-3-2", or 5 for one level, as YAML
    reads `levels: 5`) or stage names in any order.
    """
    if isinstance(levels, int):
        levels = str(levels)
    if isinstance(levels, str):
        parts = [p.strip() for p in levels.replace(",", "-").split("-") if p.strip()]
        names = [f"res{p}" if p.isdigit() else p for p in parts]
    else:
        names = list(levels)
    unknown = [n for n in names if n not in STAGES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"pyramid levels {levels!r} are not distinct stages among {', '.join(STAGES)} "
            "(or the paper's block notation such as '5-4-3')"
        )
    return tuple(sorted(names, key=STAGES.index))


def default_levels(head: str, backbone: str) -> tuple[str, ...]:
    """A head's default levels on a backbone: as many of its top stages as the head takes on
    ResNet-50 (the CIFAR ResNets end at res4, so CLSA's default there is res2-res4)."""
    count = len(HEAD_SPECS[head].levels)
    return backbone_stages(backbone)[-count:]


@dataclass(frozen=True)
class ReidConfig(ConfigBase):
    """Everything that defines a re-id model, its initial weights and its loss weights.

    Checked at construction (types, then the values as `resolved()` fills them in). None fields
    take the head's default (HEAD_SPECS) in `resolved()`, which the model keeps, so a saved
    config always holds concrete numbers. As a training config's model section, num_classes is
    None: the task sets it from the training data.
    """

    SECTION = "model"

    num_classes: int | None = None
    head: str = "clsa"
    backbone: str = "resnet50"
    pretrained: bool | str = True
    missing_weights: str = "warn"  # when pretrained=True cannot be honoured: "warn" or "raise"
    frozen_stages: tuple[str, ...] = ()
    # MobileNetV2 only: res3/res4 from the linear bottlenecks (32/96 channels) or from the next
    # block's expansion after ReLU6 (192/576), closer to ResNet's wide post-ReLU stages.
    mobilenet_taps: str = "bottleneck"
    levels: tuple[str, ...] | str | None = None
    # Per-level feature size x^k. Not stated in the paper; 512 matches its +0.002 GFLOPs of CLSA
    # over ResNet-50 (3 FC layers of 512 outputs on ResNet-50 add 0.0018 G multiply-adds).
    feature_dim: int = 512
    fpn_channels: int = 256
    mst_scales: tuple[float, ...] = (1.0, 0.75, 0.5)
    temperature: float = 3.0
    detach_teacher: bool = True
    ce_weight: float = 1.0
    level_ce_weight: float | None = None
    kl_weight: float | None = None

    def resolved(self) -> ReidConfig:
        """This config with head defaults filled in (and checked, as every construction is)."""
        if self.num_classes is None:
            raise ConfigError("re-id config needs num_classes (training identities)")
        return dataclasses.replace(self, **self._resolved_fields())

    def check(self) -> None:
        resolved = self._resolved_fields()
        if any(getattr(self, name) != value for name, value in resolved.items()):
            # the values are checked in their resolved form, whose construction checks it
            dataclasses.replace(self, **resolved)
        else:
            self._check()

    def _resolved_fields(self) -> dict[str, Any]:
        """The fields `resolved()` changes: head defaults filled in, levels as stage names."""
        if self.head not in HEADS:
            raise ConfigError(f"unknown re-id head '{self.head}'; choose one of {', '.join(HEADS)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"unknown backbone '{self.backbone}'; choose one of {', '.join(BACKBONES)}"
            )
        defaults = HEAD_SPECS[self.head]
        levels = (
            parse_levels(self.levels)
            if self.levels is not None
            else default_levels(self.head, self.backbone)
        )
        return {
            "levels": levels,
            "mst_scales": tuple(sorted(set(self.mst_scales))),
            "level_ce_weight": _default(self.level_ce_weight, defaults.level_ce_weight),
            "kl_weight": _default(self.kl_weight, defaults.kl_weight),
        }

    def _check(self) -> None:
        problems = []
        if self.num_classes is not None and self.num_classes < 1:
            problems.append(f"num_classes must be >= 1, got {self.num_classes}")
        if self.feature_dim < 1 or self.fpn_channels < 1:
            problems.append("feature_dim and fpn_channels must be >= 1")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if min(self.ce_weight, self.level_ce_weight, self.kl_weight) < 0:
            problems.append("loss weights must be >= 0")
        problems += backbone_option_problems(
            self.backbone, self.mobilenet_taps, self.missing_weights
        )
        problems += self._level_problems()
        if problems:
            raise ConfigError("invalid re-id config: " + "; ".join(problems))

    def _level_problems(self) -> list[str]:
        """What is wrong with the levels (stages, scales) for this head and backbone."""
        problems = []
        spec = HEAD_SPECS[self.head]
        stages = backbone_stages(self.backbone)
        absent = [level for level in self.levels if level not in stages]
        if absent:
            problems.append(
                f"backbone {self.backbone} has no stage {', '.join(absent)} (its stages: "
                f"{', '.join(stages)}): set levels to some of them"
            )
        if spec.one_stage and len(self.levels) != 1:
            # A config written for the pyramid heads (synthetic-reid lists CLSA's "5-4-3") needs
            # the one stage named; picking one silently could pool the wrong map.
            problems.append(
                f"head '{self.head}' pools one stage, got levels {self.levels}: "
                "name one, e.g. model.levels=5"
            )
        if spec.scale_levels and (min(self.mst_scales) <= 0 or max(self.mst_scales) != 1.0):
            problems.append(
                f"mst_scales must be positive with 1.0 the largest, got {self.mst_scales}"
            )
        if self.kl_weight > 0 and self.num_levels < 2:
            problems.append("the alignment loss (kl_weight > 0) needs at least two levels")
        return problems

    @property
    def num_levels(self) -> int:
        """Feature vectors concatenated into the embedding (scales for "mst")."""
        spec = HEAD_SPECS[self.head]
        if spec.scale_levels:
            return len(self.mst_scales)
        if self.levels is None:
            return len(default_levels(self.head, self.backbone))
        return len(parse_levels(self.levels))


def _default(value: float | None, default: float) -> float:
    return float(default if value is None else value)


@dataclass
class ReidOutputs:
    """Per-level features and logits (lowest level first, top last), and the embedding."""

    level_names: tuple[str, ...]
    features: list[Tensor]
    logits: list[Tensor]
    embedding: Tensor


class ReidModel(nn.Module):
    """Backbone + head. Training mode: forward(images, labels) -> dict of weighted losses whose sum
    is the objective. Eval mode: forward(images) -> L2-normalised embeddings (N x embedding_dim),
    the concatenation of the level features."""

    def __init__(self, config: ReidConfig) -> None:
        super().__init__()
        self.config = config = config.resolved()
        self.backbone = build_backbone(
            config.backbone,
            config.pretrained,
            frozen_stages=config.frozen_stages,
            missing_weights=config.missing_weights,  # type: ignore[arg-type]
            mobilenet_taps=config.mobilenet_taps,
        )
        self.head = HEAD_SPECS[config.head].build(config, self.backbone.stage_channels)
        self.level_names = self.head.level_names
        self.feature_dims = self.head.feature_dims
        self._last_metrics: dict[str, Tensor] = {}

    @property
    def embedding_dim(self) -> int:
        return sum(self.feature_dims)

    def level_features(self, images: Tensor) -> list[Tensor]:
        """x^1..x^K: one feature batch per level (per scale for "mst"), top level last."""
        return self.head.features(self.backbone, images)

    def embed(self, images: Tensor) -> Tensor:
        """The matching representation: concatenated level features, L2-normalised."""
        return l2_normalize(torch.cat(self.level_features(images), dim=1))

    def outputs(self, images: Tensor) -> ReidOutputs:
        """Features, logits and embedding together, for analysis (works in either mode)."""
        features = self.level_features(images)
        return ReidOutputs(
            level_names=self.level_names,
            features=features,
            logits=self.classify(features),
            embedding=l2_normalize(torch.cat(features, dim=1)),
        )

    def classify(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Identity logits per level."""
        return self.head.classify(features)

    def losses(self, logits: Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The weighted loss terms (weights from the config; zero-weight terms are left out)."""
        config = self.config
        _check_labels(labels, config.num_classes)
        labels = labels.long()
        top, lower = logits[-1], list(logits[:-1])
        losses = {"ce": config.ce_weight * cross_entropy(top, labels)}
        if lower and config.level_ce_weight > 0:
            level_ce = torch.stack([cross_entropy(level, labels) for level in lower]).sum()
            losses["ce_levels"] = config.level_ce_weight * level_ce
        if lower and config.kl_weight > 0:
            kl = clsa_alignment_kl(top, lower, config.temperature, config.detach_teacher)
            losses["kl"] = config.kl_weight * kl
        return losses

    def diagnostics(self, logits: Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Training diagnostics from the logits of one batch (no gradient, no extra forward).

        "teacher/entropy", "teacher/max_entropy", "teacher/max_prob": the top level's softmax
        at the loss temperature T, i.e. the distribution CLSA aligns the lower levels to (every
        head reports it, so heads without alignment can be compared); "accuracy/<level>": each
        level's classifier top-1 on the batch.
        """
        with torch.no_grad():
            teacher = softened_distribution_stats(logits[-1], self.config.temperature)
            metrics = {f"teacher/{name}": value for name, value in teacher.items()}
            labels = labels.long()
            for name, level in zip(self.level_names, logits, strict=True):
                metrics[f"accuracy/{name}"] = top1_accuracy(level, labels)
        return metrics

    def training_metrics(self) -> dict[str, Tensor]:
        """The diagnostics of the last training forward (the trainer logs them with the losses)."""
        return dict(self._last_metrics)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> dict[str, Tensor] | Tensor:
        if not self.training:
            return self.embed(images)
        if labels is None:
            raise ValueError(
                "training mode needs labels: model(images, labels); use model.eval() to embed"
            )
        logits = self.classify(self.level_features(images))
        losses = self.losses(logits, labels)  # checks the labels first
        self._last_metrics = self.diagnostics(logits, labels)
        return losses


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dim() != 1:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ConfigError(
            f"identity labels span [{low}, {high}] but the model has num_classes={num_classes}: "
            "labels must be 0..num_classes-1 (unlabelled crops, -1, cannot be trained on)"
        )


def build_reid_model(config: ReidConfig | Mapping[str, Any]) -> ReidModel:
    """A ReidModel from a config or its dict form (as read from YAML or a model file)."""
    if not isinstance(config, ReidConfig):
        config = ReidConfig.from_dict(config, prefix="")
    return ReidModel(config)
