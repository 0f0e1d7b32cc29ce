"""A small gallery index with a planted person, for the web server's tests and load benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from search_scenes import SceneImage, make_gallery, make_probe

from personsearch.search.detectors import GroundTruthBoxes
from personsearch.search.embedders import ColorHistogramEmbedder
from personsearch.search.searcher import PersonSearcher


@dataclass(frozen=True)
class ServedGallery:
    index_dir: Path
    images: list[SceneImage]
    probe: Path  #: a scene outside the gallery holding the planted person
    probe_box: np.ndarray

    @property
    def planted_names(self) -> set[str]:
        return {im.path.name for im in self.images if im.planted is not None}


def build_served_gallery(folder: Path, n_images: int = 12, seed: int = 0) -> ServedGallery:
    """Scenes with ground-truth boxes, indexed with the colour-histogram (baseline) embedder.

    The baseline embedder is the one `personsearch serve` uses without --pipeline, so the server
    opens this index as a user's would.
    """
    images = make_gallery(folder / "gallery", n_images=n_images, seed=seed)
    detector = GroundTruthBoxes.from_files({im.path: im.boxes for im in images})
    with PersonSearcher.open(
        folder / "index", detector, ColorHistogramEmbedder(), info={"pipeline": "baseline"}
    ) as searcher:
        searcher.index_folder(folder / "gallery", progress=False)
        searcher.index.prepare()
    probe = folder / "probe.png"
    return ServedGallery(folder / "index", images, probe, make_probe(probe))
