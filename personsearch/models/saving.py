"""Trained model files: what a run's model.pt holds, and rebuilding the network from it.

A model file is the final product of a training run: the weights plus the config that rebuilds
the network, so evaluation, search and export need the file alone. It is written atomically and
read with `weights_only=True`; every error is a CheckpointError naming the file.

    save_reid_model(run / MODEL_FILE, model, config, pids)   # at the end of re-id training
    model, meta = load_reid_model(run)                       # a run folder, model.pt or checkpoint
    detector, meta = load_detector(run)
    classifier, meta = load_classifier(run)                  # CIFAR-100 (train classify)

Training checkpoints (resume state: optimiser, RNG, ...) live in personsearch.engine.checkpoint;
this module only recognises them, so that a re-id run's checkpoints/last.pt can stand in for its
model.pt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from personsearch.errors import CheckpointError, ConfigError
from personsearch.io import atomic_path

if TYPE_CHECKING:
    from personsearch.config import Config
    from personsearch.models.detector import PersonDetector

MODEL_FILE = "model.pt"
MODEL_FORMAT = 1
REID_TASK = "reid"
DETECTOR_TASK = "detector"
CLASSIFY_TASK = "classify"
#: The keys every training checkpoint holds (engine/checkpoint.py writes and requires them).
TRAINING_CHECKPOINT_KEYS = (
    "format_version",
    "model",
    "optimizer",
    "scheduler",
    "iteration",
    "fingerprint",
)


# --------------------------------------------------------------------------------------------
# the file format


def read_model_file(
    path: str | os.PathLike[str], task: str, device: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]]:
    """Read a run folder's (or a path's) model.pt holding a `task` model; CheckpointError if not."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: did the {task} training run finish?")
    return path, check_model_state(path, read_weights_file(path, device), task)


def read_weights_file(path: Path, device: str | torch.device = "cpu") -> Any:
    """torch.load a model file or a checkpoint safely; CheckpointError when it cannot be read."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated or foreign files raise many types
        raise CheckpointError(f"cannot read model file {path}: {error}") from error


def is_training_checkpoint(state: Any) -> bool:
    """Whether a loaded file is a training checkpoint (checkpoints/last.pt, <unit>_<N>.pt)."""
    return isinstance(state, dict) and all(key in state for key in TRAINING_CHECKPOINT_KEYS)


def check_model_state(path: Path, state: Any, task: str) -> dict[str, Any]:
    """A loaded model.pt, checked to hold a `task` model; CheckpointError if not."""
    if not isinstance(state, dict) or state.get("format_version") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a personsearch model file (format {MODEL_FORMAT})")
    if state.get("task") != task:
        raise CheckpointError(f"{path} holds a {state.get('task')!r} model, not a {task} model")
    return state


def write_model_file(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """torch.save a model file atomically; CheckpointError naming the file when it cannot."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as error:
        raise CheckpointError(f"cannot write the model file {path}: {error}") from error


# --------------------------------------------------------------------------------------------
# the re-id net


def save_reid_model(
    path: str | os.PathLike[str], model: nn.Module, config: Config, pids: list[int]
) -> None:
    """Write the final weights with everything needed to rebuild the model (atomically)."""
    model_config = model.config.to_dict() if hasattr(model, "config") else config.model.given()
    write_model_file(
        path,
        {
            "format_version": MODEL_FORMAT,
            "task": REID_TASK,
            "model_config": model_config,
            "state_dict": model.state_dict(),
            "crop_size": [config.data.crop_height, config.data.crop_width],
            "train_pids": list(pids),
            "dataset": config.data.dataset,
        },
    )


def load_reid_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained re-id model (eval mode) of a run folder or model.pt, and the file's metadata.

    A training checkpoint of a re-id run (checkpoints/last.pt, <unit>_<N>.pt) is accepted too:
    its model config and crop size come from the run config it holds, its number of classes
    from its classifier weights.
    """
    from personsearch.models.reid import build_reid_model

    path = Path(path)
    if path.is_file():
        loaded = read_weights_file(path, device)
        state = (
            _reid_state_from_checkpoint(path, loaded)
            if is_training_checkpoint(loaded)
            else check_model_state(path, loaded, REID_TASK)
        )
    else:
        path, state = read_model_file(path, REID_TASK, device)
    # The weights come from the file: skip loading (or warning about) ImageNet ones.
    model = build_reid_model({**state["model_config"], "pretrained": False})
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model config: {error}") from error
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return model, meta


def _reid_state_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint of a re-id run in the layout of a model file (`save_reid_model`)."""
    config = checkpoint.get("config")
    if not isinstance(config, dict) or config.get("task") != REID_TASK:
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
        "task": REID_TASK,
        "model_config": model_config,
        "state_dict": weights,
        "crop_size": [int(data.get("crop_height", 256)), int(data.get("crop_width", 128))],
        "dataset": data.get("dataset", ""),
        "checkpoint_iteration": int(checkpoint["iteration"]),
    }


# --------------------------------------------------------------------------------------------
# the detector


def save_detector(path: str | os.PathLike[str], model: PersonDetector, config: Config) -> None:
    """Write the final weights with the detector config that rebuilds them (atomically)."""
    write_model_file(
        path,
        {
            "format_version": MODEL_FORMAT,
            "task": DETECTOR_TASK,
            "model_config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "dataset": config.data.dataset,
            "weights_source": model.weights_source,
        },
    )


def load_detector(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[PersonDetector, dict[str, Any]]:
    """The trained detector (eval mode) of a run folder or model.pt, and the file's metadata."""
    from personsearch.models.detector import DetectorConfig, build_detector

    path, state = read_model_file(path, DETECTOR_TASK, device)
    try:
        # the weights come from the file: skip loading (or warning about) ImageNet ones
        values = {**state["model_config"], "pretrained": False}
        if values.get("coco_start"):
            values["coco_weights"] = "random"  # likewise for a COCO start's weights
        config = DetectorConfig.from_dict(values)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from error
    model = build_detector(config)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the detector config: {error}") from error
    model.weights_source = f"file:{path}"
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return model, meta


# --------------------------------------------------------------------------------------------
# the classifier (CIFAR-100): the re-id network with classes for identities


def save_classifier(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Config,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """Write a classification run's final weights and model config (atomically)."""
    write_model_file(
        path,
        {
            "format_version": MODEL_FORMAT,
            "task": CLASSIFY_TASK,
            "model_config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "image_size": [config.data.crop_height, config.data.crop_width],
            "class_names": list(class_names or []),
            "dataset": config.data.dataset,
        },
    )


def load_classifier(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained classifier (eval mode) of a run folder or model.pt, and the file's metadata."""
    from personsearch.models.reid import build_reid_model

    path, state = read_model_file(path, CLASSIFY_TASK, device)
    try:
        model = build_reid_model({**state["model_config"], "pretrained": False})
        model.load_state_dict(state["state_dict"])
    except (ConfigError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path}: weights do not fit the model config: {error}") from error
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return model, meta
