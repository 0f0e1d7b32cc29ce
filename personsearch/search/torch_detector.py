"""The trained person detector as the searcher's `Detector`: boxes in the input image's pixels.

`TorchDetector` wraps the project's trained detector, read from a training run folder or its
model.pt; `personsearch.search.pipeline` pairs it with an embedder. This module imports torch, so
the pipeline imports it only when a torch detector is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from personsearch.io import file_digest
from personsearch.models.inference import prepare_for_inference
from personsearch.models.saving import MODEL_FILE, load_detector
from personsearch.search.torch_embedders import torch_device


class TorchDetector:
    """A trained person detector as a `Detector`: boxes in the input image's pixels."""

    def __init__(
        self,
        model: torch.nn.Module,
        fingerprint: str,
        score_thresh: float = 0.5,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch_device(device)
        self.model = prepare_for_inference(model.to(self.device))
        self.score_thresh = float(score_thresh)
        # The model's own threshold filters before NMS caps the count; keep it no higher.
        if hasattr(self.model, "score_thresh"):
            self.model.score_thresh = min(self.model.score_thresh, self.score_thresh)
        self.fingerprint = fingerprint

    @classmethod
    def from_run(
        cls, path: str | os.PathLike[str], score_thresh: float = 0.5, device: str | None = None
    ) -> TorchDetector:
        """The detector of a training run folder (or its model.pt)."""
        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        model, _ = load_detector(model_file, device="cpu")
        return cls(
            model, f"detector:{file_digest(model_file)}@{score_thresh:g}", score_thresh, device
        )

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detect persons in several images in one forward pass."""
        tensors = [
            torch.from_numpy(np.array(img, dtype=np.uint8)).to(self.device).permute(2, 0, 1).float()
            / 255.0
            for img in images
        ]
        with torch.inference_mode():
            outputs = self.model(tensors)
        results = []
        for out in outputs:
            boxes = out["boxes"].float().cpu().numpy().reshape(-1, 4)
            scores = out["scores"].float().cpu().numpy().reshape(-1)
            keep = scores >= self.score_thresh
            results.append((boxes[keep].astype(np.float32), scores[keep].astype(np.float32)))
        return results
