"""Typed training configs: dataclass defaults, YAML in, `key=value` overrides, resolved YAML out.

A config has five sections: `data` (what to train on and how crops look), `model` (the task's
model config: `ReidConfig` for reid and classify, `DetectorConfig` for detector), `optim`
(optimiser and schedule), `run` (where, seed, workers, periods) and the top-level `task` / `name`.
The defaults of the dataclasses are the paper's re-id settings, so a shipped config only lists
what differs.

Overrides use dotted keys (`optim.lr=0.001`, `data.crop_height=128`, `model.levels=5`); values
are parsed as YAML and checked against the field's type. Every section is built by
personsearch.config_base: frozen, checked at construction, unknown keys a ConfigError naming the
key and the valid ones.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from personsearch.config_base import ConfigBase, coerce
from personsearch.errors import ConfigError
from personsearch.io import atomic_open

if TYPE_CHECKING:
    from personsearch.models.detector import DetectorConfig
    from personsearch.models.reid import ReidConfig

    ModelConfig = ReidConfig | DetectorConfig
else:
    ModelConfig = Any  # resolved at runtime without importing torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """What to train on and how a training crop is made."""

    SECTION = "data"

    #: "cuhk-sysu", "prw", "market1501", "cuhk03", "synthetic"; "cifar100" (task classify)
    dataset: str = "cuhk-sysu"
    root: str = ""  #: dataset folder (the synthetic world: where it is, or is generated)
    variant: str = ""  #: CUHK03 only: "labeled" (the default) or "detected"
    synthetic_size: str = "small"  #: size preset when the synthetic world must be generated
    #: optional detections on the training scenes (extra crops), as `personsearch detect` writes
    detections: str = ""
    det_iou: float = 0.5  #: a detection joins a labelled box's identity above this IoU
    crop_height: int = 256
    crop_width: int = 128
    flip: bool = True  #: random horizontal flip
    random_erasing: float = 0.0  #: probability of erasing a random rectangle
    color_jitter: float = 0.0  #: strength of brightness/contrast/saturation jitter (0 = off)
    #: probability that a training crop is shrunk by a random factor and resized back up
    #: (simulates small, low-resolution people; the cheap alternative to multi-scale matching)
    lowres_prob: float = 0.0
    #: [min, max] of that factor, a fraction of the crop size (0 < min <= max <= 1)
    lowres_scale: list[float] = field(default_factory=lambda: [0.25, 0.75])
    #: the older name of lowres_prob (kept so earlier run folders' config.yaml still load)
    low_resolution: float = 0.0
    cache_dir: str = ""  #: pre-crop scene boxes into this folder once ("" = crop on the fly)

    def check(self) -> None:
        _check_data(self)


@dataclass(frozen=True)
class OptimConfig(ConfigBase):
    """SGD with step decay; the length and milestones are in epochs or in iterations."""

    SECTION = "optim"

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    nesterov: bool = False
    batch_size: int = 64  #: global batch, split evenly across DDP ranks
    epochs: int = 100  #: schedule length in epochs (used when iterations is 0)
    iterations: int = 0  #: > 0 makes the schedule iteration-based
    milestones: list[int] = field(default_factory=lambda: [40, 80])  #: in the schedule's unit
    gamma: float = 0.1
    warmup_iterations: int = 0  #: linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.1
    amp: bool = True  #: mixed precision on CUDA (ignored on CPU)
    grad_clip: float = 0.0  #: max gradient norm (0 = off)

    def check(self) -> None:
        _check_optim(self)


@dataclass(frozen=True)
class RunConfig(ConfigBase):
    """Where a run writes, how it is seeded and how often it evaluates and checkpoints."""

    SECTION = "run"

    out: str = ""  #: run folder ("" = runs/<name>)
    seed: int = 0
    device: str = "auto"  #: "auto", "cpu", "cuda" or "cuda:N"
    workers: int = 4
    deterministic: bool = False  #: deterministic kernels (slower; exact reruns on GPU)
    eval_period: int = 0  #: evaluate every N units of the schedule (0 = at the end only)
    evaluate: bool = True  #: evaluate at all (off when the caller evaluates the result itself)
    checkpoint_period: int = 1  #: checkpoint every N units of the schedule
    keep_checkpoints: bool = False  #: also keep checkpoints/<unit>_<N>.pt besides last.pt
    log_period: int = 20  #: iterations between logged training scalars
    eval_batch_size: int = 128
    progress: bool = True  #: progress bars (rank 0 only)
    find_unused_parameters: bool = False  #: DDP option for models with unused branches

    def check(self) -> None:
        _check_run(self)


#: task -> "module:class" of its model section (imported when a config is built: torch)
MODEL_CONFIGS = {
    "reid": "personsearch.models.reid:ReidConfig",
    "detector": "personsearch.models.detector:DetectorConfig",
    # the classifier is the re-id network with classes for identities
    "classify": "personsearch.models.reid:ReidConfig",
}


def model_config_class(task: str) -> type[ConfigBase]:
    """The config class of a task's model section."""
    if task not in MODEL_CONFIGS:
        raise ConfigError(f"task={task!r}: choose one of {', '.join(MODEL_CONFIGS)}")
    module, name = MODEL_CONFIGS[task].split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Config(ConfigBase):
    """A full training config, checked (`validate`) when it is constructed.

    `model` may be given as a mapping (the section as written); it becomes the task's model
    config (MODEL_CONFIGS), whose own checks name the bad key.
    """

    task: str = "reid"
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        kind = model_config_class(self.task)
        model = self.model
        if not isinstance(model, ConfigBase):
            model = kind.from_dict(coerce(model, dict[str, Any], "model"), "model.")
            object.__setattr__(self, "model", model)
        elif not isinstance(model, kind):
            raise ConfigError(
                f"model is a {type(model).__name__}; task {self.task} takes a {kind.__name__}"
            )
        super().__post_init__()

    def check(self) -> None:
        validate(self)

    @property
    def iteration_based(self) -> bool:
        return self.optim.iterations > 0

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out or os.path.join("runs", self.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain types; the model section as it was written (`given()`), not resolved: the model
        resolves its defaults and writes them to model.pt, while config.yaml and the fingerprint
        repeat the section key for key, so earlier runs keep their fingerprints."""
        return {**super().to_dict(), "model": self.model.given()}

    def fingerprint(self) -> str:
        """Hash of what a checkpoint's tensors depend on: the task, the model, the data (dataset,
        CUHK03 variant) and the crop size."""
        key = {
            "task": self.task,
            "model": self.model.given(),
            "dataset": self.data.dataset,
            "crop": [self.data.crop_height, self.data.crop_width],
        }
        if self.data.dataset == "cuhk03":  # other datasets' runs keep their earlier fingerprints
            key["variant"] = self.data.variant or "labeled"
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# building a Config from nested dicts


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from nested dicts (missing keys keep their defaults)."""
    return Config.from_dict(values)


def validate(config: Config) -> None:
    """Check every setting, and the relations between them, before anything is read or trained.

    Raises one ConfigError naming the first bad key and its value. Every number anywhere in the
    config (the model section included) must be finite: YAML's `.nan` and `.inf` are not settings.
    A Config runs this when it is built; each section's own checks ran when it was.
    """
    _check_finite(config.to_dict())
    for section in (config.optim, config.data, config.run):
        section.check()


def _check_optim(optim: OptimConfig) -> None:
    if optim.iterations < 0:
        raise ConfigError(f"optim.iterations={optim.iterations} must be >= 0 (0: use optim.epochs)")
    if optim.iterations == 0 and optim.epochs <= 0:
        raise ConfigError(
            f"optim.epochs={optim.epochs}: optim.epochs (or optim.iterations) must be positive"
        )
    length = optim.iterations or optim.epochs
    unit = "optim.iterations" if optim.iterations else "optim.epochs"
    if any(m <= 0 or m > length for m in optim.milestones):
        raise ConfigError(
            f"optim.milestones={optim.milestones} must lie in 1..{length} ({unit}={length})"
        )
    if optim.milestones != sorted(optim.milestones):
        raise ConfigError(f"optim.milestones={optim.milestones} must be increasing")
    _require(optim.batch_size >= 1, "optim.batch_size", optim.batch_size, "must be positive")
    _require(optim.lr > 0, "optim.lr", optim.lr, "must be positive")
    _require(0.0 <= optim.momentum < 1.0, "optim.momentum", optim.momentum, "must be in [0, 1)")
    if optim.nesterov and optim.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0 (it is 0)")
    _require(optim.weight_decay >= 0, "optim.weight_decay", optim.weight_decay, "must be >= 0")
    _require(
        0.0 < optim.gamma <= 1.0,
        "optim.gamma",
        optim.gamma,
        "is the learning-rate decay factor at each milestone: it must be in (0, 1]",
    )
    _require(
        optim.warmup_iterations >= 0,
        "optim.warmup_iterations",
        optim.warmup_iterations,
        "must be >= 0",
    )
    if optim.iterations and optim.warmup_iterations > optim.iterations:
        raise ConfigError(
            f"optim.warmup_iterations={optim.warmup_iterations} is longer than the schedule "
            f"(optim.iterations={optim.iterations})"
        )
    _require(
        0.0 <= optim.warmup_factor <= 1.0,
        "optim.warmup_factor",
        optim.warmup_factor,
        "is the learning-rate fraction the warm-up starts from: it must be in [0, 1]",
    )
    _require(optim.grad_clip >= 0, "optim.grad_clip", optim.grad_clip, "must be >= 0 (0 = off)")


def _check_data(data: DataConfig) -> None:
    _require(data.crop_height >= 1, "data.crop_height", data.crop_height, "must be positive")
    _require(data.crop_width >= 1, "data.crop_width", data.crop_width, "must be positive")
    for name in ("random_erasing", "low_resolution", "lowres_prob"):
        value = getattr(data, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{name} is a probability in [0, 1], got data.{name}={value}")
    _require(0.0 <= data.det_iou <= 1.0, "data.det_iou", data.det_iou, "is an IoU in [0, 1]")
    if data.variant and (data.dataset != "cuhk03" or data.variant not in ("labeled", "detected")):
        raise ConfigError(
            f"data.variant={data.variant!r}: CUHK03's variants are labeled and detected "
            f"(data.dataset is {data.dataset!r}; other datasets have none)"
        )
    _require(
        0.0 <= data.color_jitter <= 1.0,
        "data.color_jitter",
        data.color_jitter,
        "must be in [0, 1] (factors in [1 - s, 1 + s])",
    )
    if data.low_resolution and data.lowres_prob and data.low_resolution != data.lowres_prob:
        raise ConfigError(
            "data.low_resolution is the older name of data.lowres_prob: set only lowres_prob"
        )
    scale = data.lowres_scale
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(
            f"data.lowres_scale={scale} must be [min, max] with 0 < min <= max <= 1 "
            "(fractions of the crop size)"
        )


def _check_run(run: RunConfig) -> None:
    _require(run.workers >= 0, "run.workers", run.workers, "must be >= 0 (0: load in this process)")
    _require(
        run.eval_batch_size >= 1, "run.eval_batch_size", run.eval_batch_size, "must be positive"
    )
    _require(
        run.checkpoint_period >= 1,
        "run.checkpoint_period",
        run.checkpoint_period,
        "must be positive",
    )
    _require(run.log_period >= 1, "run.log_period", run.log_period, "must be positive")
    _require(
        run.eval_period >= 0,
        "run.eval_period",
        run.eval_period,
        "must be >= 0 (0: evaluate at the end only)",
    )
    _require(run.seed >= 0, "run.seed", run.seed, "must be >= 0")


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}={value!r} {rule}")


def _check_finite(values: Any, key: str = "") -> None:
    """ConfigError naming the first NaN or infinite number in a nested config dict."""
    if isinstance(values, dict):
        for name, value in values.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(values, list | tuple):
        for i, value in enumerate(values):
            _check_finite(value, f"{key}[{i}]")
    elif isinstance(values, float) and not math.isfinite(values):
        raise ConfigError(
            f"config key {key}={values!r} is not a finite number (YAML .nan and .inf are not "
            "settings)"
        )


# --------------------------------------------------------------------------------------------
# files and overrides


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A YAML file path, or the name of a shipped config (`synthetic-reid`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.suffix in ("", ".yaml") and len(path.parts) == 1 and shipped.is_file():
        return shipped
    names = ", ".join(shipped_configs())
    raise ConfigError(f"config {name_or_path} not found: give a YAML file or one of: {names}")


def shipped_configs() -> list[str]:
    """Names of the configs that ship with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse config {path}: {error}") from error
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return values


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn `["optim.lr=0.1", "model.backbone=resnet18"]` into nested dicts (values as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.001)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: cannot parse the value: {error}") from error
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part}")
            node = child
        node[parts[-1]] = value
    return nested


def load_config(
    name_or_path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML config (or the defaults when None) and apply dotted `key=value` overrides."""
    values = read_yaml(resolve_config_path(name_or_path)) if name_or_path is not None else {}
    if "name" not in values and name_or_path is not None:
        values["name"] = Path(name_or_path).stem
    return config_from_dict(_merge(values, parse_overrides(overrides or [])))


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
