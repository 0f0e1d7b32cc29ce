"""The re-id task for the trainer: its data, its model and its evaluation.

`train_reid(config)` is what `personsearch train reid` runs; it ends by writing the run's
model.pt, which `personsearch.models.saving.load_reid_model(run)` rebuilds the trained network
from (for evaluation, export and search).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from personsearch.config import Config, validate
from personsearch.data import registry
from personsearch.data.crops import (
    CropImageDataset,
    CropSample,
    build_crop_cache,
    crop_file_samples,
    load_detections,
    scene_crop_samples,
    scene_eval_samples,
)
from personsearch.data.transforms import build_crop_transform
from personsearch.engine import distributed
from personsearch.engine.distributed import DistInfo
from personsearch.engine.reid_eval import evaluate_crops
from personsearch.engine.runs import run_task
from personsearch.engine.trainer import Hook, Trainer, build_train_loader
from personsearch.errors import ConfigError, DatasetError
from personsearch.models.saving import MODEL_FILE, save_reid_model

if TYPE_CHECKING:
    from personsearch.models.reid import ReidConfig

REID_DATASETS = registry.dataset_names(task="reid")


@dataclass
class ReidData:
    """Training crops with their classes, and the query/gallery crops of the evaluation."""

    train: CropImageDataset
    query: CropImageDataset | None
    gallery: CropImageDataset | None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


CropSamples = list[CropSample]


def reid_samples(config: Config) -> tuple[CropSamples, CropSamples, CropSamples]:
    """Training, query and gallery crops of the configured dataset."""
    data = config.data
    if data.dataset not in REID_DATASETS:
        raise ConfigError(
            f"data.dataset={data.dataset!r}: choose one of {', '.join(REID_DATASETS)}"
        )
    if not data.root:
        raise ConfigError(f"data.root is empty: give the {data.dataset} folder (data.root=DIR)")
    if registry.DATASET_SPECS[data.dataset].kind == "crop":
        crops = registry.load_crop_dataset(data.dataset, data.root, data.variant or None)
        train = crop_file_samples(crops.train)
        return train, crop_file_samples(crops.query), crop_file_samples(crops.gallery)
    scenes = registry.load_scene_dataset(registry.reader_name(data.dataset), data.root)
    detections = load_detections(data.detections) if data.detections else None
    train = scene_crop_samples(scenes.train, detections, data.det_iou)
    query, gallery = scene_eval_samples(scenes.test)
    return train, query, gallery


def load_reid_data(config: Config, dist_info: DistInfo | None = None) -> ReidData:
    """Crop datasets of the configured dataset; with data.cache_dir, scene crops are cut once."""
    data = config.data
    dist_info = dist_info or DistInfo()
    train, query, gallery = reid_samples(config)
    if not train:
        raise DatasetError(f"{data.root}: no labelled training boxes in {data.dataset}")
    if data.cache_dir:
        build_crop_cache(
            train + gallery,
            data.cache_dir,
            dist_info.rank,
            dist_info.world_size,
            progress=config.run.progress and dist_info.is_main,
        )
        distributed.barrier()
    cache = data.cache_dir or None
    eval_transform = build_crop_transform(data, train=False)
    return ReidData(
        train=CropImageDataset(train, build_crop_transform(data, train=True), None, cache),
        query=CropImageDataset(query, eval_transform, {}, cache) if query else None,
        gallery=CropImageDataset(gallery, eval_transform, {}, cache) if gallery else None,
    )


def check_model_config(model: ReidConfig) -> None:
    """Fail early, before reading any data, on a model section the task cannot take (the rest
    of it was checked when the config was built)."""
    if model.num_classes is not None:
        raise ConfigError("model.num_classes is set from the training identities: remove it")


def build_model(model: ReidConfig, num_classes: int) -> nn.Module:
    from personsearch.models.reid import ReidModel

    return ReidModel(dataclasses.replace(model, num_classes=num_classes))


def train_reid(
    config: Config, resume: bool = False, extra_hooks: Sequence[Hook] = ()
) -> dict[str, Any]:
    """Train (or continue) a re-id run; returns the metrics summary. Works under torchrun.

    `extra_hooks` run after the trainer's own (logging, evaluation, checkpoint, export) at every
    step: the ablation script's learning curves and whole-epoch statistics use them.
    """
    validate(config)  # every setting, before any data is read or any step is taken
    check_model_config(config.model)
    hooks = tuple(extra_hooks)
    return run_task(lambda *args: _train(*args, extra_hooks=hooks), config, resume)


def _train(
    config: Config, checkpoint: Path | None, dist_info: DistInfo, extra_hooks: Sequence[Hook] = ()
) -> dict[str, Any]:
    data = load_reid_data(config, dist_info)
    model = build_model(config.model, data.num_classes)
    evaluator = reid_evaluator(data, config, dist_info)
    loader = build_train_loader(data.train, config, dist_info)
    pids = sorted(data.train.labels)

    def export(module: nn.Module) -> None:  # after the last checkpoint, before the final eval
        save_reid_model(config.run_dir / MODEL_FILE, module, config, pids)

    trainer = Trainer(
        model, loader, config, dist_info, evaluate=evaluator, export=export, extra_hooks=extra_hooks
    )
    if checkpoint is not None:
        trainer.resume(checkpoint)
    return trainer.train()


def reid_evaluator(
    data: ReidData, config: Config, dist_info: DistInfo
) -> Callable[[nn.Module], dict[str, float]] | None:
    """The trainer's evaluation: re-id on the query and gallery crops (None without them)."""
    query, gallery = data.query, data.gallery
    if query is None or gallery is None:
        return None

    def evaluate(module: nn.Module) -> dict[str, float]:
        batch, workers = config.run.eval_batch_size, config.run.workers
        return evaluate_crops(module, query, gallery, batch, dist_info, workers)

    return evaluate
