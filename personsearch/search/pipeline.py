"""Where a detector and an embedder come from: a training run folder, or the built-in baseline.

`load_pipeline(run_dir)` is the single place that turns a run folder (or a folder whose
`pipeline.yaml` pairs a detector run with a re-id run) into a (detector, embedder) pair for `personsearch index` / `personsearch search`. It checks what a run folder must hold and
says what is missing; building the torch models from it is delegated to the adapter module
`personsearch.search.adapters` (function `pipeline_from_run(run_dir, config, checkpoint)`
returning a `Pipeline`), which wraps the project's trained detector and re-id net in the
`Detector` / `Embedder` protocols. That module is the extension point for trained models.

`baseline_pipeline()` needs no training and no weights: OpenCV's HOG people detector when `cv2`
is installed (else every image is one person) and a colour-histogram embedder. It is a weak
baseline, there so that the commands work out of the box.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personsearch.errors import ConfigError, PersonSearchError
from personsearch.search.embedders import (
    ColorHistogramEmbedder,
    Detector,
    Embedder,
    HogPeopleDetector,
    WholeImageDetector,
    hog_available,
)

if TYPE_CHECKING:
    from personsearch.search.searcher import PersonSearcher

CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
ADAPTER_MODULE = "personsearch.search.adapters"
PIPELINE_FILE = "pipeline.yaml"


@dataclass(frozen=True)
class Pipeline:
    """A detector and an embedder that belong together, and where they came from."""

    detector: Detector
    embedder: Embedder
    source: str  #: "baseline" or the run folder


def baseline_pipeline() -> Pipeline:
    """The dependency-free weak baseline: HOG people detector (or whole image) + colour histograms."""
    detector: Detector = HogPeopleDetector() if hog_available() else WholeImageDetector()
    return Pipeline(detector=detector, embedder=ColorHistogramEmbedder(), source="baseline")


def open_searcher(
    index_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None
) -> PersonSearcher:
    """A search-only searcher on an existing index: the run's embedder, or the baseline's.

    The one way `personsearch search` and `personsearch serve` open an index, so both refuse an
    index built by another model with the same message.
    """
    from personsearch.search.index import GalleryIndex
    from personsearch.search.searcher import PersonSearcher

    embedder = (load_pipeline(run_dir) if run_dir else baseline_pipeline()).embedder
    index = GalleryIndex.open(index_dir, fingerprint=embedder.fingerprint)
    return PersonSearcher(None, embedder, index)


def load_pipeline(run_dir: str | os.PathLike[str]) -> Pipeline:
    """The trained detector + re-id embedder of a run folder.

    Raises PersonSearchError naming what is missing: the folder, its resolved config, a
    checkpoint, or the adapter that builds models from them.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PersonSearchError(f"run folder not found: {run}")
    spec_path = run / PIPELINE_FILE
    if spec_path.is_file():  # a detector + re-id pairing (see personsearch.search.adapters)
        from personsearch.search.adapters import pipeline_from_spec

        return pipeline_from_spec(run, read_run_config(spec_path))
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
    config = read_run_config(config_path)
    try:
        adapters = importlib.import_module(ADAPTER_MODULE)
    except ModuleNotFoundError as error:
        if error.name != ADAPTER_MODULE:
            raise  # the adapter exists but one of its own imports is missing: show that
        raise PersonSearchError(
            f"run folder {run} holds a config and checkpoint {checkpoint.name}, but this "
            f"installation cannot build trained models for search yet ({ADAPTER_MODULE} is "
            "missing); leave out --run to use the colour-histogram baseline"
        ) from None
    pipeline = adapters.pipeline_from_run(run, config, checkpoint)
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"{ADAPTER_MODULE}.pipeline_from_run must return a Pipeline")
    return pipeline


def find_checkpoint(run: Path) -> Path | None:
    """The run's weights: its final model.pt, else checkpoints/best.pt, last.pt, or the newest."""
    for preferred in (
        run / "model.pt",
        run / "checkpoints" / "best.pt",
        run / "checkpoints" / "last.pt",
    ):
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
