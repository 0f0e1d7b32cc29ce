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


@dataclass(frozen=True)
class ServedVideoGallery:
    index_dir: Path
    gallery: Path  #: holds cam0.mp4 (8 s at 5 fps, 320 x 180) and still.jpg
    probe: Path  #: a person crop of the world (a query image)


def build_video_gallery(folder: Path) -> ServedVideoGallery:
    """A world-in-motion video and a still image, indexed at 2 fps with one box per frame (the
    whole frame) and the baseline embedder, as `personsearch serve` without --pipeline opens."""
    import shutil

    from personsearch.data.synthetic_video import VideoWorldSettings, generate_video_world
    from personsearch.search.detectors import WholeImageDetector

    settings = VideoWorldSettings(
        cameras=2, identities=3, duration_s=8, fps=5, width=320, height=180, visit_s=(2.0, 5.0)
    )
    world = generate_video_world(folder / "world", settings)
    gallery = folder / "g"
    gallery.mkdir()
    shutil.copy(world / "videos" / "cam0.mp4", gallery / "cam0.mp4")
    shutil.copy(world / "queries" / "0001.jpg", gallery / "still.jpg")
    with PersonSearcher.open(
        folder / "i", WholeImageDetector(), ColorHistogramEmbedder(), info={"pipeline": "baseline"}
    ) as searcher:
        searcher.index_folder(gallery, progress=False)
        searcher.index.prepare()
    return ServedVideoGallery(folder / "i", gallery, world / "queries" / "0000.jpg")
