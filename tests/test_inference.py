"""Inference preparation: BatchNorm folding and channels-last change speed, not results; only
convolution -> BatchNorm pairs the data flow allows are folded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from personsearch.models.inference import fuse_conv_batchnorm, prepare_for_inference
from personsearch.models.reid import ReidConfig, ReidModel


def randomise_norms(model: nn.Module) -> nn.Module:
    """Give BatchNorms the non-trivial statistics and affine values training leaves."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("head", ["clsa", "fpn", "mst"])
def test_prepared_reid_model_gives_the_same_embeddings(head):
    model = randomise_norms(
        ReidModel(ReidConfig(num_classes=5, head=head, backbone="resnet18", pretrained=False))
    ).eval()
    images = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        expected = model(images)
    prepared = prepare_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert not any(p.requires_grad for p in prepared.parameters())
    with torch.inference_mode():
        got = prepared(images.contiguous(memory_format=torch.channels_last))
        via_method = prepared.embed(images)  # methods and attributes survive
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(via_method, expected, atol=1e-5, rtol=1e-4)


class SharedOutput(nn.Module):
    """conv1's output feeds its BatchNorm AND a skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.bn2(self.conv2(self.bn1(y))) + y


def test_only_pairs_the_data_flow_allows_are_folded():
    model = randomise_norms(SharedOutput()).eval()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(images)
    assert fuse_conv_batchnorm(model) == 1
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.bn2, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="eval-mode"):
        fuse_conv_batchnorm(SharedOutput().train())


def test_detector_frozen_norms_fold_through_untraceable_parts():
    from personsearch.models.detector import DetectorConfig, build_detector

    torch.manual_seed(0)
    detector = build_detector(
        DetectorConfig(backbone="resnet18", pretrained=False, min_size=128, max_size=192)
    ).eval()
    detector.score_thresh = 0.0
    image = [torch.rand(3, 120, 160)]
    with torch.no_grad():
        expected = detector(image)[0]
    prepared = copy.deepcopy(detector)
    assert fuse_conv_batchnorm(prepared) == 20  # every norm of ResNet-18: trunk and box head
    with torch.no_grad():
        got = prepared(image)[0]
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-2, rtol=1e-4)
