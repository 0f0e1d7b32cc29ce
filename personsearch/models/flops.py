"""Compute cost per person crop, in the paper's unit: billions of multiply-adds (Table 4).

torch's FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matrix products (and
nothing for BatchNorm, ReLU, pooling, additions or resizing). The paper's Table 4 numbers are
multiply-add counts (its ResNet-50 at 256 x 128, 2.678, is the multiply-add count of the network),
so `gflops` reports counted FLOPs / 2. The model runs in eval mode on one crop, as in deployment:
the identity classifiers, used only in training, are not part of the cost.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Table 4 of the paper (FLOPs x 1e9 per bounding box, ResNet-50 backbone, 256 x 128 crops).
PAPER_TABLE4_GFLOPS = {
    "plain": 2.678,
    "pyramid": 2.678,
    "clsa": 2.680,
    "fpn": 4.519,
    "mst": 8.034,
}


def count_multiply_adds(model: nn.Module, height: int = 256, width: int = 128) -> int:
    """Multiply-adds of one forward pass of `model` in eval mode on one 3 x height x width crop."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        crop = torch.zeros(1, 3, height, width, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(crop)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def gflops(model: nn.Module, height: int = 256, width: int = 128) -> float:
    """Billions of multiply-adds per crop (the paper's "FLOPs x 10^9")."""
    return count_multiply_adds(model, height, width) / 1e9
