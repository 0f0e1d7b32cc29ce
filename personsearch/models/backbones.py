"""Backbones that return named stages: ``res2``..``res5`` at strides 4, 8, 16, 32.

ResNet-50 is the paper's backbone; ResNet-18 and MobileNetV2 are lighter ones for CPU work. All
three are torchvision networks cut into the same five pieces (``stem`` + four stages), so a head
names the stages it reads and never needs to know which network it sits on. MobileNetV2 has no
ResNet stages: its blocks are grouped by output stride and given the ResNet names. The CIFAR
ResNets of He et al. (``cifar_resnet110``, the paper's CIFAR-100 backbone, and its shallower
siblings; see cifar_resnet.py) have three stages, ``res2``..``res4`` at strides 1, 2, 4.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torchvision
from torch import Tensor, nn

from personsearch.errors import ConfigError
from personsearch.models.cifar_resnet import (
    CIFAR_RESNETS,
    CIFAR_STAGE_CHANNELS,
    CIFAR_STAGE_STRIDES,
    CIFAR_STAGES,
    cifar_resnet,
)
from personsearch.models.pretrained import MissingWeights, load_pretrained

STAGES = ("res2", "res3", "res4", "res5")
# Where MobileNetV2's res3/res4 are read: "bottleneck" (the blocks' 32- and 96-channel linear
# outputs) or "expanded" (the next block's 192- and 576-channel expansion, after ReLU6).
MOBILENET_TAPS = ("bottleneck", "expanded")
#: what happens when pretrained=True cannot be honoured (personsearch.models.pretrained)
MISSING_WEIGHTS = ("warn", "raise")
STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
FREEZABLE = ("stem", *STAGES)

# torchvision mobilenet_v2().features indices of each piece, split where the stride doubles
# (features[18], the 1x1 conv to 1280 channels, ends res5 so its ImageNet weights are used).
MOBILENET_V2_SPLITS = {
    "stem": (0, 2),
    "res2": (2, 4),
    "res3": (4, 7),
    "res4": (7, 14),
    "res5": (14, 19),
}
# With taps="expanded", res3 and res4 end inside the stride-2 block that opens the next stage:
# after its expansion, a 1x1 conv + BN + ReLU6 at the input's resolution (features[7].conv[0]:
# 32 -> 192 channels at stride 8; features[14].conv[0]: 96 -> 576 at stride 16). Its depthwise
# conv (conv[1], stride 2) then starts the next stage. Why these: the bottleneck outputs are
# narrow and linear (no activation, by MobileNetV2's design), while ResNet-50's res3/res4 are
# 512/1024-channel post-ReLU maps; the expansion is the widest post-activation map at each
# stride, and tapping it adds no layer and keeps every ImageNet weight. The split is exact only
# because these blocks have no residual connection (stride 2), which `_split_after_expansion`
# checks.
MOBILENET_V2_EXPANDED_TAPS = {"res3": 7, "res4": 14}


class Backbone(nn.Module):
    """A stem and its stages run in sequence; forward returns the stage outputs by name.

    The stages are `STAGES` (res2..res5), or the first ones of them for a shallower network
    (the CIFAR ResNets: res2..res4). Attributes: `stage_names`, `stage_channels` and
    `stage_strides` (by stage name), `weights_source` (where the initial weights came from),
    `frozen_stages`. Frozen stages get no gradient and keep their BatchNorm statistics fixed
    even in training mode.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: OrderedDict[str, nn.Module],
        stage_channels: dict[str, int],
        weights_source: str = "random",
        stage_strides: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        names = tuple(stages)
        if not names or names != STAGES[: len(names)]:
            raise ValueError(f"stages must be {STAGES} or its first ones, got {names}")
        self.stem = stem
        for name, module in stages.items():
            self.add_module(name, module)
        self.stage_names = names
        self.stage_channels = dict(stage_channels)
        self.stage_strides = dict(stage_strides or STAGE_STRIDES)
        self.weights_source = weights_source
        self.frozen_stages: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        outputs: OrderedDict[str, Tensor] = OrderedDict()
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs

    def freeze(self, names: Iterable[str]) -> None:
        """Fix the parameters and BatchNorm statistics of the named pieces ("stem", "res2", ...)."""
        names = tuple(names)
        freezable = ("stem", *self.stage_names)
        unknown = [n for n in names if n not in freezable]
        if unknown:
            raise ConfigError(f"cannot freeze {unknown}: stages are {', '.join(freezable)}")
        for name in names:
            for parameter in getattr(self, name).parameters():
                parameter.requires_grad_(False)
        self.frozen_stages = tuple(n for n in freezable if n in names or n in self.frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for name in self.frozen_stages:  # fixed statistics: the frozen layers see no updates
            getattr(self, name).eval()
        return self


def _resnet(arch: str, pretrained: bool | str | Path, missing: MissingWeights) -> Backbone:
    net = getattr(torchvision.models, arch)(weights=None)
    source = load_pretrained(net, arch, pretrained, missing)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    layers = (net.layer1, net.layer2, net.layer3, net.layer4)
    stages = OrderedDict(zip(STAGES, layers, strict=True))
    # The last block's last BatchNorm gives each stage's width (bn3 in Bottleneck, bn2 in Basic).
    channels = {
        name: [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        for name, layer in stages.items()
    }
    return Backbone(stem, stages, channels, source)


def _mobilenet_v2(
    pretrained: bool | str | Path, missing: MissingWeights, taps: str = "bottleneck"
) -> Backbone:
    net = torchvision.models.mobilenet_v2(weights=None)
    # Weights are loaded into the intact torchvision network; the pieces below share its modules.
    source = load_pretrained(net, "mobilenet_v2", pretrained, missing)
    modules = {name: list(net.features[a:b]) for name, (a, b) in MOBILENET_V2_SPLITS.items()}
    if taps == "expanded":
        for name, index in MOBILENET_V2_EXPANDED_TAPS.items():
            following = STAGES[STAGES.index(name) + 1]
            expansion, rest = _split_after_expansion(net.features[index], index)
            # The block opens the following stage; its expansion moves to the end of this one.
            assert modules[following][0] is net.features[index]
            modules[name].append(expansion)
            modules[following] = [*rest, *modules[following][1:]]
    pieces = {name: nn.Sequential(*layers) for name, layers in modules.items()}
    stages = OrderedDict((name, pieces[name]) for name in STAGES)
    channels = {
        name: [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        for name, stage in stages.items()
    }
    return Backbone(pieces["stem"], stages, channels, source)


def _split_after_expansion(block: nn.Module, index: int) -> tuple[nn.Module, list[nn.Module]]:
    """An inverted residual block cut after its expansion (1x1 conv + BN + ReLU6)."""
    # A residual block adds its input to its output, which a cut in the middle would drop.
    if getattr(block, "use_res_connect", True) or len(block.conv) != 4:
        raise RuntimeError(
            f"mobilenet_v2().features[{index}] is not a stride-2 expanding block without a "
            "residual connection; this torchvision version's layout differs from the expected one"
        )
    return block.conv[0], list(block.conv[1:])


def _resnet_backbone(
    name: str, pretrained: bool | str | Path, missing: MissingWeights, taps: str
) -> Backbone:
    return _resnet(name, pretrained, missing)


def _mobilenet_backbone(
    name: str, pretrained: bool | str | Path, missing: MissingWeights, taps: str
) -> Backbone:
    return _mobilenet_v2(pretrained, missing, taps)


def _cifar_backbone(
    name: str, pretrained: bool | str | Path, missing: MissingWeights, taps: str
) -> Backbone:
    if pretrained is not False:
        raise ConfigError(
            f"{name} has no pretrained weights (CIFAR ResNets train from scratch): set "
            "model.pretrained=false"
        )
    stem, stages = cifar_resnet(name)
    return Backbone(
        stem,
        stages,
        CIFAR_STAGE_CHANNELS,
        weights_source="random",
        stage_strides=CIFAR_STAGE_STRIDES,
    )


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name stands for: its builder (name, pretrained, missing_weights,
    mobilenet_taps -> the backbone) and the stages it returns."""

    build: Callable[[str, bool | str | Path, MissingWeights, str], Backbone]
    stages: tuple[str, ...] = STAGES


BACKBONE_SPECS = {
    "resnet50": BackboneSpec(_resnet_backbone),  # the paper's
    "resnet18": BackboneSpec(_resnet_backbone),
    "mobilenet_v2": BackboneSpec(_mobilenet_backbone),  # the one that takes mobilenet_taps
    **{name: BackboneSpec(_cifar_backbone, CIFAR_STAGES) for name in CIFAR_RESNETS},
}
BACKBONES = tuple(BACKBONE_SPECS)


def backbone_stages(name: str) -> tuple[str, ...]:
    """The stage names backbone `name` returns, lowest first."""
    return BACKBONE_SPECS[name].stages if name in BACKBONE_SPECS else STAGES


def backbone_option_problems(
    backbone: str, mobilenet_taps: str = "bottleneck", missing_weights: str = "warn"
) -> list[str]:
    """What is wrong with these backbone options (the one check of them: the model configs
    report it with their other problems, build_backbone raises it)."""
    problems = []
    if mobilenet_taps not in MOBILENET_TAPS:
        problems.append(
            f"mobilenet_taps must be one of {', '.join(MOBILENET_TAPS)}, got {mobilenet_taps!r}"
        )
    elif mobilenet_taps != "bottleneck" and backbone != "mobilenet_v2":
        problems.append(
            f"mobilenet_taps={mobilenet_taps!r} applies to backbone mobilenet_v2 only "
            f"(backbone is {backbone})"
        )
    if missing_weights not in MISSING_WEIGHTS:
        problems.append(f"missing_weights must be 'warn' or 'raise', got {missing_weights!r}")
    return problems


def build_backbone(
    name: str,
    pretrained: bool | str | Path = False,
    *,
    frozen_stages: Iterable[str] = (),
    missing_weights: MissingWeights = "warn",
    mobilenet_taps: str = "bottleneck",
) -> Backbone:
    """Build backbone `name` ("resnet50", "resnet18", "mobilenet_v2", "cifar_resnet110", ...).

    `pretrained`: False (random), True (ImageNet weights, see personsearch.models.pretrained) or the
    path of a weights file; the CIFAR ResNets train from scratch (False only). `missing_weights`:
    when True cannot be honoured, "raise" a WeightsUnavailableError or "warn" and keep random
    weights. `frozen_stages`: pieces to freeze.
    `mobilenet_taps`: where MobileNetV2's res3/res4 end, "bottleneck" (32/96 channels) or
    "expanded" (192/576; see MOBILENET_V2_EXPANDED_TAPS); other backbones accept "bottleneck" only.
    """
    problems = backbone_option_problems(name, mobilenet_taps, missing_weights)
    if problems:
        raise ConfigError("; ".join(problems))
    if name not in BACKBONE_SPECS:
        raise ConfigError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONE_SPECS[name].build(name, pretrained, missing_weights, mobilenet_taps)
    backbone.freeze(frozen_stages)
    return backbone
