"""What every ONNX model the project runs shares: its YAML/JSON config file and its session.

An ONNX model (re-id net or detector) comes with a small config file beside it whose `model` key
names the .onnx file, relative to the config. `read_config_file` / `write_config_file` read and
write those files for any config class with `from_dict` / `to_dict`; `open_session` opens the
model with ONNX Runtime on the CPU, with errors that name the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from personsearch.config_base import check_keys, fields_dict
from personsearch.errors import CheckpointError, ConfigError, PersonSearchError
from personsearch.io import atomic_open

ONNX_INSTALL = "pip install onnxruntime (personsearch's core install has it)"

Config = TypeVar("Config")


class ModelConfigFile:
    """Mixin for the frozen dataclasses that describe an ONNX model: building one from a file's
    mapping (unknown keys and a missing `model` named) and back. `KIND` names it in errors."""

    KIND = "ONNX model"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> Any:
        try:
            check_keys(cls, values, where=f"an {cls.KIND} config")
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        if not values.get("model"):
            raise ConfigError(f"{source}: 'model' (the .onnx file) is required")
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return fields_dict(self)


def read_config_file(
    path: str | os.PathLike[str], from_dict: Callable[..., Config], what: str
) -> Config:
    """Read a YAML/JSON model config (`what`: "ONNX embedder", "ONNX detector"); its `model`
    path becomes relative to the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{what} config not found: {path}") from None
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {what} config {path}: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{what} config {path} must be a mapping of settings")
    config = from_dict(values, source=str(path))
    model = Path(config.model).expanduser()
    if not model.is_absolute():
        model = path.parent / model
    return from_dict({**values, "model": str(model)}, source=str(path))


def write_config_file(path: str | os.PathLike[str], config: Any) -> None:
    """Write `config` as YAML (atomically), its model path relative when it lies beside the file."""
    import yaml

    path = Path(path)
    values = config.to_dict()
    model = Path(config.model)
    if model.parent.resolve() == path.parent.resolve():
        values["model"] = model.name
    if not values.get("extra"):
        values.pop("extra", None)
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(values, handle, sort_keys=False)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise PersonSearchError(
            f"ONNX models need ONNX Runtime, which is not installed: {ONNX_INSTALL}"
        ) from None
    return onnxruntime


def open_session(model: str | os.PathLike[str], threads: int | None, what: str) -> Any:
    """An ONNX Runtime CPU session on `model` (`threads` intra-op threads; None: its default);
    `what` ("ONNX", "ONNX detector") names it in errors."""
    ort = import_onnxruntime()
    model = Path(model)
    if not model.is_file():
        raise ConfigError(f"{what} model not found: {model}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise CheckpointError(f"cannot load {what} model {model}: {error}") from error


def pick_input(session: Any, input_name: str | None, model: str | os.PathLike[str]) -> Any:
    """The graph input an image goes to: the one named `input_name`, else the only one."""
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if input_name is not None:
        if input_name not in names:
            raise ConfigError(f"{model}: no input named {input_name!r}; inputs are {names}")
        return inputs[names.index(input_name)]
    if len(inputs) != 1:
        raise ConfigError(
            f"{model} has {len(inputs)} inputs {names}: name the image input with input_name"
        )
    return inputs[0]
