"""The re-id task for the trainer: its data, its model, its evaluation and its exported weights.

`train_reid(config)` is what `personsearch train reid` runs; `load_reid_model(run)` rebuilds the
trained network from a run folder alone (model.pt holds the model config), for evaluation and
search.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from personsearch.config import Config, validate
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
from personsearch.engine.checkpoint import (
    MODEL_FILE,
    MODEL_FORMAT,
    check_model_state,
    is_training_checkpoint,
    read_model_file,
    read_weights_file,
)
from personsearch.engine.distributed import DistInfo
from personsearch.engine.reid_eval import evaluate_crops
from personsearch.engine.runs import run_task
from personsearch.engine.trainer import Trainer, build_train_loader
from personsearch.errors import CheckpointError, ConfigError, DatasetError
from personsearch.io import atomic_path

REID_DATASETS = ("cuhk-sysu", "prw", "market1501", "synthetic")


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
    from personsearch.data import registry

    if data.dataset == "market1501":
        crops = registry.load_crop_dataset("market1501", data.root)
        train = crop_file_samples(crops.train)
        return train, crop_file_samples(crops.query), crop_file_samples(crops.gallery)
    reader = "cuhk-sysu" if data.dataset == "synthetic" else data.dataset
    scenes = registry.load_scene_dataset(reader, data.root)
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


def check_model_config(model: dict[str, Any]) -> None:
    """Fail early, before reading any data, on a model section the re-id builder rejects."""
    from personsearch.models.reid import ReidConfig

    if "num_classes" in model:
        raise ConfigError("model.num_classes is set from the training identities: remove it")
    ReidConfig.from_dict({**model, "num_classes": 1}).resolved()


def build_model(model: dict[str, Any], num_classes: int) -> nn.Module:
    from personsearch.models.reid import build_reid_model

    return build_reid_model({**model, "num_classes": num_classes})


def train_reid(config: Config, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a re-id run; returns the metrics summary. Works under torchrun."""
    validate(config)  # every setting, before any data is read or any step is taken
    check_model_config(config.model)
    return run_task(_train, config, resume)


def _train(config: Config, checkpoint: Path | None, dist_info: DistInfo) -> dict[str, Any]:
    data = load_reid_data(config, dist_info)
    model = build_model(config.model, data.num_classes)
    evaluator = reid_evaluator(data, config, dist_info)
    loader = build_train_loader(data.train, config, dist_info)
    pids = sorted(data.train.labels)

    def export(module: nn.Module) -> None:  # after the last checkpoint, before the final eval
        export_model(config.run_dir / MODEL_FILE, module, config, pids)

    trainer = Trainer(model, loader, config, dist_info, evaluate=evaluator, export=export)
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
    if importlib.util.find_spec("personsearch.evaluation.reid") is None:
        if dist_info.is_main:
            print("re-id evaluation skipped: personsearch.evaluation.reid is not installed")
        return None

    def evaluate(module: nn.Module) -> dict[str, float]:
        batch, workers = config.run.eval_batch_size, config.run.workers
        return evaluate_crops(module, query, gallery, batch, dist_info, workers)

    return evaluate


# --------------------------------------------------------------------------------------------
# the trained model, for search and on-demand evaluation


def export_model(path: str | os.PathLike[str], model: nn.Module, config: Config, pids: list[int]) -> None:
    """Write the final weights with everything needed to rebuild the model (atomically)."""
    model_config = model.config.to_dict() if hasattr(model, "config") else dict(config.model)
    state = {
        "format_version": MODEL_FORMAT,
        "task": "reid",
        "model_config": model_config,
        "state_dict": model.state_dict(),
        "crop_size": [config.data.crop_height, config.data.crop_width],
        "train_pids": list(pids),
        "dataset": config.data.dataset,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as error:
        raise CheckpointError(f"cannot write the model file {path}: {error}") from error


def load_reid_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained re-id model (eval mode) of a run folder or model.pt, and the file's metadata.

    A training checkpoint of a re-id run (checkpoints/last.pt, best.pt, ...) is accepted too:
    its model config and crop size come from the run config it holds, its number of classes
    from its classifier weights.
    """
    from personsearch.models.reid import build_reid_model

    path = Path(path)
    if path.is_file():
        loaded = read_weights_file(path, device)
        state = (
            _model_state_from_checkpoint(path, loaded)
            if is_training_checkpoint(loaded)
            else check_model_state(path, loaded, "reid")
        )
    else:
        path, state = read_model_file(path, "reid", device)
    # The weights come from the file: skip loading (or warning about) ImageNet ones.
    model = build_reid_model({**state["model_config"], "pretrained": False})
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model config: {error}") from error
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return model, meta


def _model_state_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint of a re-id run in the layout of a model file (`export_model`)."""
    config = checkpoint.get("config")
    if not isinstance(config, dict) or config.get("task") != "reid":
        task = config.get("task") if isinstance(config, dict) else None
        raise CheckpointError(f"{path} is a training checkpoint of a {task!r} run, not a re-id run")
    weights = checkpoint["model"]
    classes = [
        int(value.shape[0])
        for key, value in weights.items()
        if ".classifier" in f".{key}" and key.endswith(".weight") and value.dim() == 2
    ]
    if not classes:
        raise CheckpointError(f"{path}: no identity classifier in its weights")
    data = config.get("data") or {}
    model_config = {**(config.get("model") or {}), "num_classes": classes[0]}
    return {
        "format_version": MODEL_FORMAT,
        "task": "reid",
        "model_config": model_config,
        "state_dict": weights,
        "crop_size": [int(data.get("crop_height", 256)), int(data.get("crop_width", 128))],
        "dataset": data.get("dataset", ""),
        "checkpoint_iteration": int(checkpoint["iteration"]),
    }
