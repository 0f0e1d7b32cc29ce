"""The CIFAR ResNets of He et al. (CVPR 2016, Sec. 4.2): a stem and named stages, which
backbones.py wraps as a `Backbone` (this module does not import it: backbones.py imports this).

A 3 x 3 convolution to 16 channels (the stem), then three stages of n basic blocks each
(16, 32, 64 channels at strides 1, 2, 4 on a 32 x 32 input: 32 x 32, 16 x 16, 8 x 8 maps), for
6n + 2 layers: ResNet-110 is n = 18, the paper's CIFAR-100 backbone (1.7 M parameters). Where a
stage halves the map and doubles the width, the shortcut is He et al.'s option A: the input
subsampled by 2 and zero-padded with the new channels, so every shortcut is parameter-free.

The stages are named `res2`, `res3`, `res4`: like ResNet-50's conv2_x..conv4_x they follow the
stem, so a head names them as it names ResNet-50's, and CLSA's pyramid over the three stages is
"4-3-2" in the paper's block notation.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.errors import ConfigError

#: backbone name -> depth (6n + 2)
CIFAR_RESNETS = {
    "cifar_resnet20": 20,
    "cifar_resnet32": 32,
    "cifar_resnet44": 44,
    "cifar_resnet56": 56,
    "cifar_resnet110": 110,
}
CIFAR_STAGES = ("res2", "res3", "res4")
CIFAR_STAGE_STRIDES = {"res2": 1, "res3": 2, "res4": 4}
WIDTHS = (16, 32, 64)
CIFAR_STAGE_CHANNELS = dict(zip(CIFAR_STAGES, WIDTHS, strict=True))


class BasicBlock(nn.Module):
    """3 x 3 conv - BN - ReLU - 3 x 3 conv - BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity, or option A: subsample and zero-pad the new channels (no parameters)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def cifar_resnet(name: str) -> tuple[nn.Module, OrderedDict[str, nn.Module]]:
    """The stem and stages (res2..res4) of a CIFAR ResNet by name ("cifar_resnet110", ...),
    He-initialised; their widths and strides are `CIFAR_STAGE_CHANNELS`, `CIFAR_STAGE_STRIDES`."""
    if name not in CIFAR_RESNETS:
        raise ConfigError(
            f"unknown CIFAR ResNet '{name}'; choose one of {', '.join(CIFAR_RESNETS)}"
        )
    blocks = (CIFAR_RESNETS[name] - 2) // 6
    stem = nn.Sequential(
        nn.Conv2d(3, WIDTHS[0], 3, 1, padding=1, bias=False),
        nn.BatchNorm2d(WIDTHS[0]),
        nn.ReLU(inplace=True),
    )
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = WIDTHS[0]
    for index, (stage, width) in enumerate(zip(CIFAR_STAGES, WIDTHS, strict=True)):
        layers = []
        for block in range(blocks):
            stride = 2 if index > 0 and block == 0 else 1
            layers.append(BasicBlock(in_channels, width, stride))
            in_channels = width
        stages[stage] = nn.Sequential(*layers)
    # The stem's modules, then each stage's: the order a Backbone of them lists (and initialises)
    for module in nn.Sequential(stem, *stages.values()).modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return stem, stages
