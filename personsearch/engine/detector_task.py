"""The detector task for the trainer: its data, its model and its evaluation.

`train_detector(config)` is what `personsearch train detector` runs (single process or torchrun);
it ends by writing the run's model.pt, which `personsearch.models.saving.load_detector(run)`
rebuilds the trained detector from (for evaluation, export of detections and search).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from personsearch.config import Config, validate
from personsearch.data import registry
from personsearch.data.detection_dataset import SceneDetectionDataset, collate_detection
from personsearch.data.scenes import Scene, SceneDataset
from personsearch.engine.detector_eval import EVAL_SCORE_THRESH, detect_scenes
from personsearch.engine.distributed import DistInfo
from personsearch.engine.runs import run_task
from personsearch.engine.trainer import Trainer, build_train_loader
from personsearch.errors import ConfigError, DatasetError
from personsearch.evaluation.scene_detection import detection_metrics
from personsearch.models.detector import DetectorConfig, build_detector
from personsearch.models.saving import MODEL_FILE, save_detector

DETECTOR_DATASETS = registry.dataset_names(task="detector")
FLIP_PROB = 0.5  # data.flip: mirror half of the training images


def detector_config(config: Config) -> DetectorConfig:
    """The model section: a DetectorConfig (checked when the config was built)."""
    return config.model


def load_scenes(dataset: str, root: str | os.PathLike[str]) -> SceneDataset:
    """Training and test scenes of a detector dataset (the synthetic world reads as CUHK-SYSU)."""
    if dataset not in DETECTOR_DATASETS:
        raise ConfigError(f"data.dataset={dataset!r}: choose one of {', '.join(DETECTOR_DATASETS)}")
    if not str(root):
        raise ConfigError(f"data.root is empty: give the {dataset} folder (data.root=DIR)")
    return registry.load_scene_dataset(registry.reader_name(dataset), root)


def train_detector(config: Config, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a detector run; returns the metrics summary. Works under torchrun."""
    validate(config)  # every setting, before any data is read or any step is taken
    return run_task(_train, config, resume)


def _train(config: Config, checkpoint: Path | None, dist_info: DistInfo) -> dict[str, Any]:
    scenes = load_scenes(config.data.dataset, config.data.root)
    if not scenes.train:
        raise DatasetError(f"{config.data.root}: no training scenes in {config.data.dataset}")
    model = build_detector(detector_config(config))
    if dist_info.is_main:
        start = (
            f"torchvision COCO {model.config.coco_start}"
            if model.config.coco_start
            else f"backbone {model.config.backbone}"
        )
        print(f"detector from {start}, initial weights: {model.weights_source}")
    train_set = SceneDetectionDataset(
        scenes.train, flip_prob=FLIP_PROB if config.data.flip else 0.0
    )
    loader = build_train_loader(train_set, config, dist_info, collate_fn=collate_detection)

    def export(module: nn.Module) -> None:  # after the last checkpoint, before the final eval
        save_detector(config.run_dir / MODEL_FILE, module, config)  # type: ignore[arg-type]

    trainer = Trainer(
        model,
        loader,
        config,
        dist_info,
        evaluate=detector_evaluator(scenes.test, config, dist_info),
        export=export,
    )
    if checkpoint is not None:
        trainer.resume(checkpoint)
    return trainer.train()


def detector_evaluator(
    scenes: tuple[Scene, ...], config: Config, dist_info: DistInfo
) -> Callable[[nn.Module], dict[str, float]] | None:
    """The trainer's evaluation: recall and AP on the test scenes (None without test scenes)."""
    if not scenes:
        return None

    def evaluate(module: nn.Module) -> dict[str, float]:
        detections = detect_scenes(
            module,  # type: ignore[arg-type]
            scenes,
            score_thresh=EVAL_SCORE_THRESH,
            workers=config.run.workers,
            dist_info=dist_info,
            progress=config.run.progress,
        )
        return detection_metrics(scenes, detections, det_thresh=module.config.score_thresh)  # type: ignore[union-attr]

    return evaluate
