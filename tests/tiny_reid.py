"""A tiny re-id model and dataset that follow the trainer's contracts (shared by tests)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class TinyReid(nn.Module):
    """Follows the model contract: losses dict in training, unit embeddings in eval."""

    def __init__(self, num_classes: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, dim)
        self.dropout = nn.Dropout(0.3)  # uses the global RNG: resume must restore it
        self.classifier = nn.Linear(dim, num_classes)

    def embed(self, images):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(images))), 1).flatten(1))

    def forward(self, images, labels=None):
        features = self.embed(images)
        if not self.training:
            return F.normalize(features, dim=1)
        logits = self.classifier(self.dropout(features))
        return {"ce": F.cross_entropy(logits, labels), "norm": 1e-3 * features.pow(2).mean()}


class ColourCrops(Dataset):
    """Crops whose class is their colour, with a random flip drawn from the sample key."""

    def __init__(self, size: int = 32, classes: int = 4) -> None:
        rng = np.random.default_rng(0)
        self.labels = np.arange(size) % classes
        base = rng.normal(size=(classes, 3, 1, 1)).astype(np.float32)
        noise = rng.normal(scale=0.5, size=(size, 3, 16, 8)).astype(np.float32)
        self.images = torch.from_numpy(base[self.labels] + noise)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        index, seed, epoch = key
        image = self.images[index]
        if np.random.default_rng((seed, epoch, index)).random() < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[index])
