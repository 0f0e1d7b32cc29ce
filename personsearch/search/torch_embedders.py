"""The torch embedders behind the searcher's `Embedder` protocol: the trained re-id net and the
ImageNet stand-in (the trained person detector is in torch_detector.py).

`TorchReidEmbedder` wraps the project's trained re-id net, read from a training run folder, its
model.pt or one of its checkpoints; `personsearch.search.pipeline` pairs it with a detector. This
module imports torch, so the pipeline imports it only when a torch model is asked for.

`ImageNetEmbedder` needs no training: the globally pooled last feature map of an ImageNet
backbone (MobileNetV2 by default, whose weights ship offline with the project's dependencies).
It is a stand-in to index real photos with before a trained re-id net exists: generic object
features, not trained to tell people apart (on the PRW sample frames its rank-1 is 40/50, colour
histograms' 46/50, where the same people reappear in consecutive frames with the same colours;
see docs/benchmarks.md). A re-id net trained on person identities is what makes search work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from personsearch.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_crops
from personsearch.io import file_digest
from personsearch.models.backbones import build_backbone
from personsearch.models.inference import prepare_for_inference
from personsearch.models.saving import MODEL_FILE, load_reid_model
from personsearch.search.embedders import l2_normalize


def torch_device(device: str | torch.device | None) -> torch.device:
    """The device asked for; None or "auto": CUDA when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchReidEmbedder:
    """A trained re-id net as an `Embedder`: resize crops, normalise, batch, embed."""

    def __init__(
        self,
        model: torch.nn.Module,
        crop_size: tuple[int, int],
        fingerprint: str,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        self.device = torch_device(device)
        # folded BatchNorms + channels-last: about 2x faster on the CPU, same outputs (1e-6)
        self.model = prepare_for_inference(model.to(self.device))
        self.crop_height, self.crop_width = int(crop_size[0]), int(crop_size[1])
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.crop_height, self.crop_width, device=self.device)
            self.dim = int(self.model(probe).shape[1])

    @classmethod
    def from_run(cls, path: str | os.PathLike[str], device: str | None = None) -> TorchReidEmbedder:
        """The re-id net of a training run folder, its model.pt or one of its checkpoints."""
        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        model, meta = load_reid_model(model_file, device="cpu")
        config = meta.get("model_config", {})
        name = f"{config.get('head', 'reid')}-{config.get('backbone', 'net')}"
        return cls(
            model,
            tuple(meta.get("crop_size", (256, 128))),
            fingerprint=f"reid:{name}:{file_digest(model_file)}",
            device=device,
        )

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                chunk = crops[start : start + self.batch_size]
                batch = preprocess_crops(chunk, self.crop_height, self.crop_width)
                batch = torch.from_numpy(batch).to(self.device)
                feats = self.model(batch.contiguous(memory_format=torch.channels_last))
                out.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(out))


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
        self.fingerprint = (
            f"imagenet-{backbone}:{_weights_digest(network)}:{self.height}x{self.width}"
        )
        self._network = prepare_for_inference(network.to(self.device))

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = preprocess_crops(
                crops[start : start + self.batch_size],
                self.height,
                self.width,
                IMAGENET_MEAN,
                IMAGENET_STD,
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
