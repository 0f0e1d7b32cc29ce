"""Bring your own re-id model: any ONNX network taking N x 3 x H x W and returning N x D.

A model exported from torchreid, fast-reid or `personsearch export onnx` replaces the built-in
re-id net for indexing and search. What the network expects of its input lives in a small YAML
(or JSON) file beside it:

    model: osnet_x1_0.onnx          # path, relative to this file
    input_height: 256               # crops are resized to this (omit to take the model's own)
    input_width: 128
    mean: [0.485, 0.456, 0.406]     # per channel, in the units of pixel_scale
    std: [0.229, 0.224, 0.225]
    pixel_scale: 255.0              # pixels are divided by this first (1.0 keeps 0..255)
    channel_order: rgb              # or bgr (Caffe-era models)
    batch_size: 32                  # crops per ONNX Runtime call

    embedder = load_onnx_embedder("osnet_x1_0.yaml")
    features = embedder.embed_crops(list_of_hxwx3_uint8_crops)   # N x D float32, unit rows

Preprocessing is personsearch.data.preprocess's (numpy and Pillow, bilinear resize, as the
training crops are), so this module needs `onnxruntime` and nothing from torch. The embedder's `fingerprint` hashes the model
file and the preprocessing, so a gallery index built with one model refuses features of another.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_crops
from personsearch.errors import ConfigError, PersonSearchError
from personsearch.io import file_hash
from personsearch.search.embedders import l2_normalize
from personsearch.search.onnx_files import (
    ModelConfigFile,
    open_session,
    pick_input,
    read_config_file,
    write_config_file,
)


@dataclass(frozen=True)
class OnnxEmbedderConfig(ModelConfigFile):
    """How to feed an ONNX re-id model; see the module docstring for the file format."""

    KIND = "ONNX embedder"

    model: str
    input_height: int | None = None
    input_width: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pixel_scale: float = 255.0
    channel_order: str = "rgb"
    batch_size: int = 32
    input_name: str | None = None  #: the graph input to feed (default: the only one)
    output_name: str | None = None  #: the graph output to read (default: the first one)
    name: str = ""  #: a label for messages and the fingerprint (default: the file name)
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form notes, e.g. the source run

    def __post_init__(self) -> None:
        problems = []
        for key in ("mean", "std"):
            value = getattr(self, key)
            numbers = (
                isinstance(value, list | tuple)
                and len(value) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            )
            if not numbers:
                problems.append(f"{key} must be 3 numbers (one per channel), got {value!r}")
            elif not all(math.isfinite(v) for v in value):
                problems.append(f"{key} must be 3 finite numbers, got {list(value)!r}")
            else:
                object.__setattr__(self, key, tuple(float(v) for v in value))
        if not problems and min(self.std) <= 0:
            problems.append(f"std must be positive, got {self.std}")
        for key in ("input_height", "input_width"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{key} must be a positive integer, got {value!r}")
        scale = self.pixel_scale
        if (
            not isinstance(scale, int | float)
            or isinstance(scale, bool)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            problems.append(f"pixel_scale must be a positive finite number, got {scale!r}")
        if self.channel_order not in ("rgb", "bgr"):
            problems.append(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if problems:
            raise ConfigError("invalid ONNX embedder config: " + "; ".join(problems))


def read_embedder_config(path: str | os.PathLike[str]) -> OnnxEmbedderConfig:
    """Read a YAML/JSON embedder config; its `model` path becomes relative to the file."""
    return read_config_file(path, OnnxEmbedderConfig.from_dict, "ONNX embedder")


def write_embedder_config(path: str | os.PathLike[str], config: OnnxEmbedderConfig) -> None:
    """Write `config` as YAML (atomically), with the model path relative to the file if beside it."""
    write_config_file(path, config)


class OnnxEmbedder:
    """An `Embedder` running an ONNX re-id model with ONNX Runtime on the CPU.

    The model's input must be N x 3 x H x W. A fixed batch size in the graph is honoured by
    padding the last chunk; fixed H and W in the graph must agree with the config (or fill it).
    Outputs N x D (or N x D x 1 x 1) are flattened and L2-normalised.
    """

    def __init__(self, config: OnnxEmbedderConfig, *, threads: int | None = None) -> None:
        model = Path(config.model)
        self._session = open_session(model, threads, "ONNX")
        self.config = config
        self._input = pick_input(self._session, config.input_name, config.model)
        self._output = config.output_name or self._session.get_outputs()[0].name
        if self._output not in {o.name for o in self._session.get_outputs()}:
            raise ConfigError(
                f"{model}: no output named {self._output!r}; outputs are "
                f"{[o.name for o in self._session.get_outputs()]}"
            )
        self.height, self.width, self._fixed_batch = self._input_geometry(config, model)
        self.dim = int(self._run(np.zeros((1, 3, self.height, self.width), np.float32)).shape[1])
        self.fingerprint = self._fingerprint(model)

    def _input_geometry(self, config: OnnxEmbedderConfig, model: Path) -> tuple[int, int, int]:
        shape = list(self._input.shape)
        symbolic_channels = len(shape) == 4 and not isinstance(shape[1], int)
        if len(shape) != 4 or not (symbolic_channels or shape[1] == 3):
            raise ConfigError(
                f"{model}: input {self._input.name!r} has shape {shape}; a re-id model must "
                "take N x 3 x H x W images"
            )
        batch, _, model_h, model_w = (s if isinstance(s, int) and s > 0 else None for s in shape)
        sizes = []
        for key, wanted, fixed in (
            ("input_height", config.input_height, model_h),
            ("input_width", config.input_width, model_w),
        ):
            if wanted is not None and fixed is not None and wanted != fixed:
                raise ConfigError(
                    f"{model} takes {key.split('_')[1]} {fixed} but the config says {key}={wanted}"
                )
            size = wanted or fixed
            if size is None:
                raise ConfigError(
                    f"{model}: its input size is not fixed in the graph: give input_height and "
                    "input_width in the config"
                )
            sizes.append(size)
        return sizes[0], sizes[1], batch or 0

    def _fingerprint(self, model: Path) -> str:
        digest = file_hash(model)
        c = self.config
        digest.update(
            repr(
                (
                    self.height,
                    self.width,
                    c.mean,
                    c.std,
                    c.pixel_scale,
                    c.channel_order,
                    self._input.name,
                    self._output,
                )
            ).encode()
        )
        return f"onnx:{c.name or model.stem}:{digest.hexdigest()[:16]}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self._fixed_batch and count != self._fixed_batch:
            # a graph exported with a fixed batch: pad the chunk to it and drop the padding after
            padded = np.zeros((self._fixed_batch, *batch.shape[1:]), dtype=np.float32)
            padded[:count] = batch
            batch = padded
        (output,) = self._session.run([self._output], {self._input.name: batch})
        output = np.asarray(output, dtype=np.float32)[:count]
        return output.reshape(count, -1)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        c = self.config
        chunk = self._fixed_batch or c.batch_size
        outputs = []
        for start in range(0, len(crops), chunk):
            batch = preprocess_crops(
                crops[start : start + chunk],
                self.height,
                self.width,
                c.mean,
                c.std,
                c.pixel_scale,
                c.channel_order,
            )
            outputs.append(self._run(batch))
        features = np.concatenate(outputs)
        if features.shape[1] != self.dim:
            raise PersonSearchError(
                f"{c.model} returned {features.shape[1]}-d features, {self.dim}-d before"
            )
        bad = ~np.isfinite(features).all(axis=1)
        if bad.any():
            raise PersonSearchError(
                f"ONNX model {c.model} returned NaN or infinite features for {int(bad.sum())} of "
                f"{len(features)} crops (first: crop {int(np.flatnonzero(bad)[0])}): the model "
                "or its export is broken, or its config's mean/std/pixel_scale do not fit it"
            )
        return l2_normalize(features)


def load_onnx_embedder(
    config_path: str | os.PathLike[str], *, threads: int | None = None
) -> OnnxEmbedder:
    """The embedder described by a YAML/JSON config file (see the module docstring)."""
    return OnnxEmbedder(read_embedder_config(config_path), threads=threads)
