"""Where a search pipeline's detector and embedder come from: a folder, or the built-in baseline.

A search pipeline is a detector and a re-id net trained separately (the paper's two-stage design).
`load_pipeline(folder)` is the single place that turns a folder given as `--pipeline` into a
(detector, embedder) pair for `personsearch index` / `search` / `evaluate` / `serve`:

- a folder holding `pipeline.yaml`, which names both:

      detector: runs/synthetic-detector   # a detector run folder or its model.pt, an ONNX
                                          # detector's .yaml (see onnx_detector.py),
                                          # torchvision:NAME[?weights=FILE] (a COCO detector,
                                          # coco_detectors.py), or "hog" / "whole-image"
      slices: {tile: [416, 416], overlap: 0.25}   # optional: run the detector on overlapping
                                          # tiles plus the whole frame (small people; sliced.py)
      reid: runs/synthetic-reid           # a re-id run folder or its model.pt, an ONNX embedder's
                                          # .yaml (see onnx_embedder.py), or "imagenet"
      det_thresh: 0.5                     # keep detections scored at least this (the paper's
                                          # 0.5; for an ONNX detector, default: its score_thresh)

  Relative paths are relative to the folder holding pipeline.yaml (`write_pipeline_spec` writes
  one);
- a re-id training run folder: its weights (model.pt, else checkpoints/last.pt or the newest
  checkpoint) paired with the baseline detector (HOG, or the whole image).

It says what a folder lacks when it is neither. `DETECTOR_SOURCES` and `REID_SOURCES` are the
one table of what pipeline.yaml may name. The torch models are wrapped by
`personsearch.search.torch_detector` and `torch_embedders`, imported only when a pipeline needs
one, so importing this module does not import torch.

`baseline_pipeline()` needs no training and no weights: OpenCV's HOG people detector when `cv2`
is installed (else every image is one person) and a colour-histogram embedder. It is a weak
baseline, there so that the commands work out of the box.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from personsearch.errors import ConfigError, PersonSearchError
from personsearch.io import atomic_open
from personsearch.search.detectors import (
    Detector,
    HogPeopleDetector,
    WholeImageDetector,
    hog_available,
)
from personsearch.search.embedders import ColorHistogramEmbedder, Embedder
from personsearch.search.index import GalleryIndex
from personsearch.search.onnx_detector import OnnxDetector, read_detector_config
from personsearch.search.onnx_embedder import load_onnx_embedder
from personsearch.search.searcher import PersonSearcher

CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
PIPELINE_FILE = "pipeline.yaml"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  #: an ONNX model's config, not a run folder


@dataclass(frozen=True)
class Pipeline:
    """A detector and an embedder that belong together, and where they came from."""

    detector: Detector
    embedder: Embedder
    source: str  #: "baseline" or the run folder


def baseline_detector() -> Detector:
    """The detector that needs no training: HOG people detector, or the whole image without cv2."""
    return HogPeopleDetector() if hog_available() else WholeImageDetector()


def baseline_pipeline() -> Pipeline:
    """The dependency-free weak baseline: HOG people detector (or whole image) + colour histograms."""
    return Pipeline(
        detector=baseline_detector(), embedder=ColorHistogramEmbedder(), source="baseline"
    )


def open_searcher(
    index_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None
) -> PersonSearcher:
    """A search-only searcher on an existing index: the run's embedder, or the baseline's.

    The one way `personsearch search` and `personsearch serve` open an index, so both refuse an
    index built by another model with the same message.
    """
    embedder = (load_pipeline(run_dir) if run_dir else baseline_pipeline()).embedder
    index = GalleryIndex.open(index_dir, fingerprint=embedder.fingerprint)
    return PersonSearcher(None, embedder, index)


def load_pipeline(run_dir: str | os.PathLike[str]) -> Pipeline:
    """The detector + re-id embedder of a folder: its pipeline.yaml, or a re-id run's weights.

    Raises PersonSearchError naming what is missing: the folder, its resolved config or a
    checkpoint.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PersonSearchError(f"run folder not found: {run}")
    spec_path = run / PIPELINE_FILE
    if spec_path.is_file():  # a detector + re-id pairing
        return pipeline_from_spec(run, read_run_config(spec_path))
    return pipeline_from_run(run, *_run_config_and_checkpoint(run))


def _run_config_and_checkpoint(run: Path) -> tuple[dict[str, Any], Path]:
    """A training run folder's resolved config and weights, or an error naming what is missing."""
    config_path = next((run / name for name in CONFIG_NAMES if (run / name).is_file()), None)
    if config_path is None:
        raise PersonSearchError(
            f"run folder {run} has no resolved config ({' or '.join(CONFIG_NAMES)}): is it the "
            "output folder of a training run?"
        )
    checkpoint = find_checkpoint(run)
    if checkpoint is None:
        raise PersonSearchError(
            f"run folder {run} has no checkpoint (*.pt or *.pth in {run} or {run / 'checkpoints'})"
            ": did its training finish writing one?"
        )
    return read_run_config(config_path), checkpoint


def read_pipeline_spec(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What a pipeline folder pairs, as pipeline.yaml's mapping (paths relative to `folder`).

    A re-id run folder alone reads as {"detector": None, "reid": its checkpoint}: the baseline
    detector with that run's weights.
    """
    run = Path(folder)
    if not run.is_dir():
        raise PersonSearchError(f"run folder not found: {run}")
    if (run / PIPELINE_FILE).is_file():
        return read_run_config(run / PIPELINE_FILE)
    config, checkpoint = _run_config_and_checkpoint(run)
    task = config.get("task")
    if task != "reid":
        raise PersonSearchError(
            f"{run} is a {task!r} run; a pipeline needs a detector and a re-id net: write a "
            f"{PIPELINE_FILE} naming both"
        )
    return {"detector": None, "reid": str(checkpoint)}


def find_checkpoint(run: Path) -> Path | None:
    """The run's weights: its final model.pt, else checkpoints/last.pt, or the newest."""
    for preferred in (run / "model.pt", run / "checkpoints" / "last.pt"):
        if preferred.is_file():
            return preferred
    found = [
        path
        for folder in (run / "checkpoints", run)
        if folder.is_dir()
        for path in folder.iterdir()
        if path.suffix in CHECKPOINT_SUFFIXES and path.is_file()
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's resolved config as a dict (YAML or JSON), with errors naming the file."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read run config {path}: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"run config {path} must be a mapping, got {type(config).__name__}")
    return config


def write_pipeline_spec(
    folder: str | os.PathLike[str],
    detector: str | os.PathLike[str],
    reid: str | os.PathLike[str],
    det_thresh: float = 0.5,
) -> Path:
    """Write `folder/pipeline.yaml` pairing a detector and a re-id net (paths made relative)."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def rel(target: str | os.PathLike[str]) -> str:
        if str(target) in BUILTIN_SOURCES or str(target).startswith(TORCHVISION_PREFIX):
            return str(target)
        return os.path.relpath(Path(target).resolve(), folder.resolve())

    spec = {"detector": rel(detector), "reid": rel(reid), "det_thresh": float(det_thresh)}
    path = folder / PIPELINE_FILE
    with atomic_open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(spec, handle, sort_keys=False)
    return path


TORCHVISION_PREFIX = "torchvision:"  #: pipeline.yaml: detector: torchvision:NAME
SLICE_KEYS = ("tile", "overlap", "full_frame", "nms_iou")  #: pipeline.yaml: slices:


@dataclass(frozen=True)
class SourceRequest:
    """A detector or re-id source as pipeline.yaml names it, and what building it needs."""

    value: str
    resolve: Callable[[str], Path]  #: a path named in pipeline.yaml -> the existing file
    det_thresh: float
    thresh_given: bool  #: pipeline.yaml sets det_thresh (it then wins over a detector file's)
    device: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """One way pipeline.yaml names a detector or a re-id net: a built-in name, or a kind of
    path; `build` makes the detector or embedder."""

    what: str
    matches: Callable[[str], bool]
    build: Callable[[SourceRequest], Any]
    builtin: bool = False  #: `what` is the name itself (kept as is, not a path)


def _named(name: str) -> Callable[[str], bool]:
    return lambda value: value == name


def _config_file(value: str) -> bool:
    return value.endswith(CONFIG_SUFFIXES)


def _onnx_detector(request: SourceRequest) -> Detector:
    config = read_detector_config(request.resolve(request.value))
    if request.thresh_given:  # the pipeline's threshold wins over the detector file's
        config = dataclasses.replace(config, score_thresh=request.det_thresh)
    return OnnxDetector(config)


def _torchvision_detector(request: SourceRequest) -> Detector:
    """torchvision:NAME[?weights=FILE]: one of torchvision's COCO detectors, persons only."""
    from personsearch.search.coco_detectors import CocoDetector  # imports torch

    name, _, query = request.value[len(TORCHVISION_PREFIX) :].partition("?")
    weights = None
    if query:
        key, _, weights = query.partition("=")
        if key != "weights" or not weights:
            raise ConfigError(f"detector {request.value!r}: the only option is ?weights=FILE")
        # "random": untrained weights (tests, export checks), else a file
        weights = weights if weights == "random" else str(request.resolve(weights))
    return CocoDetector(
        name, weights=weights, score_thresh=request.det_thresh, device=request.device
    )


def _torch_detector(request: SourceRequest) -> Detector:
    from personsearch.search.torch_detector import TorchDetector  # imports torch

    return TorchDetector.from_run(
        request.resolve(request.value), request.det_thresh, request.device
    )


def _imagenet_embedder(request: SourceRequest) -> Embedder:
    from personsearch.search.torch_embedders import ImageNetEmbedder  # imports torch

    return ImageNetEmbedder()


def _torch_embedder(request: SourceRequest) -> Embedder:
    from personsearch.search.torch_embedders import TorchReidEmbedder  # imports torch

    return TorchReidEmbedder.from_run(request.resolve(request.value), request.device)


#: pipeline.yaml's `detector:`, the first matching source wins.
DETECTOR_SOURCES = (
    SourceSpec("hog", _named("hog"), lambda _: HogPeopleDetector(), builtin=True),
    SourceSpec("whole-image", _named("whole-image"), lambda _: WholeImageDetector(), builtin=True),
    SourceSpec(
        "torchvision:NAME[?weights=FILE]",
        lambda value: value.startswith(TORCHVISION_PREFIX),
        _torchvision_detector,
    ),
    SourceSpec("an ONNX detector's config", _config_file, _onnx_detector),  # any ONNX detector
    SourceSpec("a detector run folder or its model.pt", lambda _: True, _torch_detector),
)
#: pipeline.yaml's `reid:`, the first matching source wins.
REID_SOURCES = (
    # pooled ImageNet features: before any re-id net is trained
    SourceSpec("imagenet", _named("imagenet"), _imagenet_embedder, builtin=True),
    SourceSpec(
        "an ONNX embedder's config",
        _config_file,  # any exported re-id model
        lambda request: load_onnx_embedder(request.resolve(request.value)),
    ),
    SourceSpec("a re-id run folder or its model.pt", lambda _: True, _torch_embedder),
)
#: The sources named, not found at a path.
BUILTIN_SOURCES = tuple(s.what for s in (*DETECTOR_SOURCES, *REID_SOURCES) if s.builtin)


def build_source(sources: tuple[SourceSpec, ...], request: SourceRequest) -> Any:
    """The detector or embedder of the first source that matches `request.value`."""
    source = next(s for s in sources if s.matches(request.value))
    return source.build(request)


def pipeline_from_spec(folder: Path, spec: dict[str, Any], device: str | None = None) -> Pipeline:
    """Build the pipeline that `folder/pipeline.yaml` describes."""
    missing = [key for key in ("detector", "reid") if not spec.get(key)]
    if missing:
        raise ConfigError(f"{folder / PIPELINE_FILE} must name {' and '.join(missing)}")
    raw_thresh = spec.get("det_thresh", 0.5)
    try:
        det_thresh = float(raw_thresh)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{folder / PIPELINE_FILE}: det_thresh={raw_thresh!r} must be a number in [0, 1]"
        ) from error
    if isinstance(raw_thresh, bool) or not (math.isfinite(det_thresh) and 0 <= det_thresh <= 1):
        raise ConfigError(
            f"{folder / PIPELINE_FILE}: det_thresh={raw_thresh!r} must be a number in [0, 1] "
            "(a detection score)"
        )

    request = partial(
        SourceRequest,
        resolve=lambda value: resolve_spec_path(folder, value),
        det_thresh=det_thresh,
        thresh_given="det_thresh" in spec,
        device=device,
    )
    detector = build_source(DETECTOR_SOURCES, request(str(spec["detector"])))
    embedder = build_source(REID_SOURCES, request(str(spec["reid"])))
    if spec.get("slices") is not None:
        detector = sliced_detector(detector, spec["slices"], folder / PIPELINE_FILE)
    return Pipeline(detector=detector, embedder=embedder, source=str(folder))


def sliced_detector(detector: Detector, settings: Any, where: Path) -> Detector:
    """`detector` run on tiles, as pipeline.yaml's `slices:` says (true: the defaults)."""
    from personsearch.search.sliced import SlicedDetector

    if settings is True:
        settings = {}
    if not isinstance(settings, dict):
        raise ConfigError(
            f"{where}: slices={settings!r} must be true or a mapping of {', '.join(SLICE_KEYS)}"
        )
    unknown = sorted(set(settings) - set(SLICE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown slices settings {', '.join(unknown)} "
            f"(known: {', '.join(SLICE_KEYS)})"
        )
    values = dict(settings)
    if "tile" in values:
        tile = values["tile"]
        values["tile"] = (tile, tile) if isinstance(tile, int) else tuple(tile)
    try:
        return SlicedDetector(detector, **values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: slices: {error}") from error


def detector_from_spec(
    value: str,
    folder: Path,
    det_thresh: float,
    thresh_given: bool = True,
    device: str | None = None,
) -> Detector:
    """The detector a pipeline.yaml's `detector:` names (paths relative to `folder`), through
    `DETECTOR_SOURCES`; `evaluate-detector --detector` uses it for any detector."""
    request = SourceRequest(
        value,
        resolve=lambda path: resolve_spec_path(folder, path),
        det_thresh=det_thresh,
        thresh_given=thresh_given,
        device=device,
    )
    return build_source(DETECTOR_SOURCES, request)


def resolve_spec_path(folder: Path, value: str) -> Path:
    """A path named in `folder`'s pipeline.yaml (relative to the folder), which must exist."""
    path = Path(value)
    path = path if path.is_absolute() else folder / path
    if not path.exists():
        raise PersonSearchError(f"{folder / PIPELINE_FILE} names {value}, which does not exist")
    return path


def pipeline_from_run(run: Path, config: dict[str, Any], checkpoint: Path) -> Pipeline:
    """A re-id run folder's weights in `checkpoint` (its model.pt, or a training checkpoint such
    as checkpoints/last.pt, as `load_pipeline` found them), with the baseline detector."""
    task = config.get("task")
    if task == "reid":
        from personsearch.search.torch_embedders import TorchReidEmbedder  # imports torch

        return Pipeline(
            baseline_detector(), TorchReidEmbedder.from_run(checkpoint), source=str(run)
        )
    raise PersonSearchError(
        f"{run} is a {task!r} run; search needs a detector and a re-id net: write a "
        f"{PIPELINE_FILE} naming both (see personsearch.search.pipeline) and pass its folder"
    )
