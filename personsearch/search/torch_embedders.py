"""Embedders that run torch networks on person crops.

`ImageNetEmbedder` needs no training: the globally pooled last feature map of an ImageNet
backbone (MobileNetV2 by default, whose weights ship offline with the project's dependencies).
It is a stand-in to index real photos with before a trained re-id net exists: generic object
features, not trained to tell people apart (on the PRW sample frames its rank-1 is 40/50, colour
histograms' 46/50, where the same people reappear in consecutive frames with the same colours;
see docs/benchmarks.md). A re-id net trained on person identities is what makes search work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from personsearch.models.backbones import build_backbone
from personsearch.models.inference import prepare_for_inference
from personsearch.search.embedders import l2_normalize
from personsearch.search.onnx_embedder import IMAGENET_MEAN, IMAGENET_STD, preprocess_crops


class ImageNetEmbedder:
    """An `Embedder`: pooled ImageNet features of a backbone's last stage (1280-d MobileNetV2,
    2048-d ResNet-50, 512-d ResNet-18), L2-normalised.

    `pretrained`: True (the ImageNet weights, see personsearch.models.pretrained; missing weights
    raise WeightsUnavailableError, since random features would be silently useless) or the path
    of a torchvision-style weights file.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        pretrained: bool | str | Path = True,
        *,
        input_size: tuple[int, int] = (256, 128),
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        if pretrained is False:
            raise ValueError("ImageNetEmbedder needs ImageNet weights: pretrained=True or a path")
        network = build_backbone(backbone, pretrained, missing_weights="raise")
        self.weights_source = network.weights_source
        self.device = torch.device(device)
        self.height, self.width = (int(s) for s in input_size)
        self.batch_size = max(1, int(batch_size))
        self.dim = int(network.stage_channels["res5"])
        self.fingerprint = f"imagenet-{backbone}:{_weights_digest(network)}:{self.height}x{self.width}"
        self._network = prepare_for_inference(network.to(self.device))

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = preprocess_crops(
                crops[start : start + self.batch_size], self.height, self.width,
                IMAGENET_MEAN, IMAGENET_STD,
            )
            images = torch.from_numpy(batch).to(self.device)
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                pooled = self._network(images)["res5"].mean(dim=(2, 3))
            outputs.append(pooled.float().cpu().numpy())
        return l2_normalize(np.concatenate(outputs))


def _weights_digest(network: torch.nn.Module) -> str:
    """A short hash of every weight and statistic: features of other weights never mix."""
    digest = hashlib.sha1()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
