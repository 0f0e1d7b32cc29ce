"""The classification task for the trainer (paper's Table 8, CIFAR-100): data, model, top-1.

`train_classify(config)` is what `personsearch train classify` runs. The network is the re-id
network (`personsearch.models.reid.ReidModel`): the same backbone code, pyramid head and loss,
CE on the top level plus T^2 * KL aligning the lower levels to it (paper Eq. 4), with
classifiers over the 100 classes instead of identities. On the CIFAR ResNet-110 the CLSA
pyramid is its three stages ("4-3-2"); `model.head=plain` (`model.levels=4`) is the plain
ResNet-110 of the table's first row.

Evaluation on the test split, as fractions:
  top1          the top level's classifier (what the CE loss trains)
  top1_concat   the concatenated level features [x^1 ... x^K] (what re-id matches with) scored
                by the level classifiers stacked, [W^1 ... W^K]: the sum of the level logits,
                so no extra classifier is trained
  top1_<level>  each level's own classifier, for analysis
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from personsearch.config import Config, validate
from personsearch.data.cifar100 import SIDE, CifarImageDataset
from personsearch.data.registry import CLASSIFY_DATASETS, load_classify_dataset
from personsearch.engine.distributed import DistInfo
from personsearch.engine.reid_eval import extract_embeddings
from personsearch.engine.runs import run_task
from personsearch.engine.trainer import Trainer, build_train_loader
from personsearch.errors import ConfigError
from personsearch.models.saving import MODEL_FILE, save_classifier

if TYPE_CHECKING:
    from personsearch.models.reid import ReidConfig

#: data settings of re-id crops that the CIFAR pipeline (pad-4 crop + flip) does not apply
_CROP_ONLY = ("random_erasing", "color_jitter", "lowres_prob", "low_resolution")


@dataclass
class ClassifyData:
    train: CifarImageDataset
    test: CifarImageDataset
    class_names: tuple[str, ...] | None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def check_classify_config(config: Config) -> None:
    """Fail early, before reading any data, on settings the classification task cannot honour."""
    data = config.data
    if data.dataset not in CLASSIFY_DATASETS:
        raise ConfigError(
            f"data.dataset={data.dataset!r}: classification needs one of "
            f"{', '.join(CLASSIFY_DATASETS)}"
        )
    if not data.root:
        raise ConfigError("data.root is empty: give the cifar-100-binary folder (data.root=DIR)")
    if (data.crop_height, data.crop_width) != (SIDE, SIDE):
        raise ConfigError(
            f"data.crop_height={data.crop_height}, data.crop_width={data.crop_width}: CIFAR images "
            f"are {SIDE} x {SIDE} and are not resized; set both to {SIDE}"
        )
    for name in _CROP_ONLY:
        if getattr(data, name):
            raise ConfigError(
                f"data.{name}={getattr(data, name)} applies to re-id crops; CIFAR training uses "
                "the standard pad-4 crop and flip (data.flip) only: set it to 0"
            )
    for name in ("detections", "cache_dir", "variant"):
        if getattr(data, name, ""):
            raise ConfigError(f"data.{name} does not apply to {data.dataset}: remove it")
    check_model_config(config.model)


def check_model_config(model: ReidConfig) -> None:
    """What the task adds to the model section's own checks (done when the config was built):
    num_classes comes from the dataset."""
    if model.num_classes is not None:
        raise ConfigError("model.num_classes is set from the dataset's classes: remove it")


def load_classify_data(config: Config) -> ClassifyData:
    dataset = load_classify_dataset(config.data.dataset, config.data.root)
    return ClassifyData(
        train=CifarImageDataset(dataset.train, train=True, flip=config.data.flip),
        test=CifarImageDataset(dataset.test, train=False),
        class_names=dataset.fine_names,
    )


def build_model(model: ReidConfig, num_classes: int) -> nn.Module:
    from personsearch.models.reid import ReidModel

    return ReidModel(dataclasses.replace(model, num_classes=num_classes))


def train_classify(config: Config, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a classification run; returns the metrics summary (torchrun too)."""
    validate(config)
    check_classify_config(config)
    return run_task(_train, config, resume)


def _train(config: Config, checkpoint: Path | None, dist_info: DistInfo) -> dict[str, Any]:
    data = load_classify_data(config)
    model = build_model(config.model, data.num_classes)
    loader = build_train_loader(data.train, config, dist_info)

    def evaluate(module: nn.Module) -> dict[str, float]:
        batch, workers = config.run.eval_batch_size, config.run.workers
        return evaluate_classifier(module, data.test, batch, dist_info, workers)

    def export(module: nn.Module) -> None:  # after the last checkpoint, before the final eval
        save_classifier(config.run_dir / MODEL_FILE, module, config, data.class_names)

    trainer = Trainer(model, loader, config, dist_info, evaluate=evaluate, export=export)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    return trainer.train()


class LevelLogits(nn.Module):
    """forward(images) -> every level's logits side by side (N x K*C), lowest level first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.level_names: tuple[str, ...] = tuple(model.level_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.model.classify(self.model.level_features(images)), dim=1)


def evaluate_classifier(
    model: nn.Module,
    dataset: CifarImageDataset,
    batch_size: int = 500,
    dist_info: DistInfo | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """Top-1 accuracies (fractions) on `dataset`; the same on every rank (see module docstring)."""
    wrapped = LevelLogits(model)
    logits = extract_embeddings(wrapped, dataset, batch_size, dist_info, workers)
    return top1_scores(logits, np.asarray(dataset.labels), wrapped.level_names)


def top1_scores(
    logits: np.ndarray, labels: np.ndarray, level_names: tuple[str, ...]
) -> dict[str, float]:
    """From N x K*C level logits (lowest level first): top1, top1_concat and top1_<level>."""
    levels = len(level_names)
    if logits.ndim != 2 or logits.shape[1] % levels:
        raise ValueError(f"expected N x {levels}*C logits, got {logits.shape}")
    per_level = logits.reshape(len(logits), levels, -1).astype(np.float64)

    def accuracy(scores: np.ndarray) -> float:
        return float(np.mean(scores.argmax(axis=1) == labels))

    metrics = {"top1": accuracy(per_level[:, -1]), "top1_concat": accuracy(per_level.sum(axis=1))}
    if levels > 1:
        for k, name in enumerate(level_names):
            metrics[f"top1_{name}"] = accuracy(per_level[:, k])
    metrics["images"] = float(len(labels))
    return metrics
