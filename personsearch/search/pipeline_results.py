"""Run a search pipeline over a benchmark's test set and write the evaluator's results file.

Every test (gallery) image is detected (or given its ground-truth boxes, the paper's Figure 6(b)
comparison), every detection is cropped and embedded, and every query is embedded from its
ground-truth box in its own image. The persons detected in each query's image are kept as the
CBGM context. The output is the results file of `personsearch.evaluation.results_file`, so the
numbers come from the same evaluator that scores any other system's results.

The gallery side comes either from running the pipeline here (`detect_and_embed`) or from a
gallery index that already holds the test images (`detections_from_index`), which is how the
demo evaluates exactly what it indexed, in one detection pass. `pipeline_results_file` does it
all for `personsearch evaluate --pipeline`: load the pipeline, run it, write the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from personsearch.data.images import read_rgb
from personsearch.data.registry import load_scene_dataset, load_search_protocol
from personsearch.data.scenes import Scene, SearchProtocol
from personsearch.errors import DatasetError
from personsearch.evaluation.cbgm import QueryContext
from personsearch.evaluation.results_file import save_results
from personsearch.evaluation.search_protocols import MAIN_GALLERY_SIZE
from personsearch.search.detectors import Detector
from personsearch.search.embedders import Embedder
from personsearch.search.index import GalleryIndex
from personsearch.search.pipeline import load_pipeline
from personsearch.search.searcher import crop_box

#: Per image name: (boxes N x 4, scores N, features N x D).
ImageDetections = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def protocol_scenes(test_scenes: Sequence[Scene], protocol: SearchProtocol) -> list[Scene]:
    """The scenes a protocol needs: its gallery images, then query images not among them."""
    by_name = {scene.name: scene for scene in test_scenes}
    needed = list(protocol.images)
    needed += sorted({q.image for q in protocol.queries} - set(protocol.images))
    missing = [name for name in needed if name not in by_name]
    if missing:
        raise DatasetError(
            f"{len(missing)} images of protocol {protocol.name} are not among the test scenes, "
            f"e.g. {missing[:3]}"
        )
    return [by_name[name] for name in needed]


def detect_and_embed(
    detector: Detector | None,
    embedder: Embedder,
    scenes: Sequence[Scene],
    *,
    batch: int = 4,
    progress: bool = True,
) -> ImageDetections:
    """Detect (or take ground-truth boxes when `detector` is None), crop and embed every scene."""
    from tqdm import tqdm

    out: ImageDetections = {}
    detect_batch = getattr(detector, "detect_batch", None)
    with tqdm(total=len(scenes), desc="detect + embed", unit="img", disable=not progress) as bar:
        for start in range(0, len(scenes), batch):
            chunk = scenes[start : start + batch]
            images = [read_rgb(scene.path) for scene in chunk]
            if detector is None:
                found = [(s.boxes, np.ones(len(s.boxes), dtype=np.float32)) for s in chunk]
            elif detect_batch is not None:
                found = detect_batch(images)
            else:
                found = [detector.detect(image) for image in images]
            for scene, image, (boxes, scores) in zip(chunk, images, found, strict=True):
                boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
                feats = embedder.embed_crops([crop_box(image, box) for box in boxes])
                out[scene.name] = (
                    boxes,
                    np.asarray(scores, np.float32).reshape(-1),
                    np.asarray(feats, np.float32).reshape(len(boxes), embedder.dim),
                )
            bar.update(len(chunk))
    return out


def detections_from_index(index: GalleryIndex, scenes: Sequence[Scene]) -> ImageDetections:
    """The boxes, scores and features a gallery index holds for the given scenes."""
    wanted = {str(Path(scene.path).resolve()): scene.name for scene in scenes}
    store = index.store
    vectors = store.vectors()
    grouped: dict[str, list[int]] = {}
    rows = store.rows()
    for row, (path, _, _) in enumerate(rows):
        if path in wanted:
            grouped.setdefault(wanted[path], []).append(row)
    indexed = {path for path, record in store.known_images().items() if record.status == "ok"}
    missing = [name for path, name in wanted.items() if path not in indexed]
    if missing:
        raise DatasetError(f"{len(missing)} test images are not in the index, e.g. {missing[:3]}")
    out: ImageDetections = {}
    for scene in scenes:
        ids = grouped.get(scene.name, [])
        boxes = np.asarray([rows[i][1] for i in ids], dtype=np.float32).reshape(-1, 4)
        scores = np.asarray([rows[i][2] for i in ids], dtype=np.float32)
        out[scene.name] = (boxes, scores, vectors[ids].reshape(len(ids), store.dim))
    return out


def write_search_results(
    detections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    embedder: Embedder,
    scenes: Sequence[Scene],
    protocol: SearchProtocol,
    out_path: str | os.PathLike[str],
    *,
    progress: bool = True,
) -> Path:
    """Embed the protocol's queries and write the results file with the gallery detections."""
    from tqdm import tqdm

    dim = embedder.dim
    names = list(protocol.images)
    by_name = {scene.name: scene for scene in scenes}
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, dim), np.float32))
    gallery = [detections.get(name, empty) for name in names]

    queries_in: dict[str, list[int]] = {}
    for q, query in enumerate(protocol.queries):
        queries_in.setdefault(query.image, []).append(q)
    query_feats = np.zeros((len(protocol.queries), dim), dtype=np.float32)
    ctx_index, ctx_boxes, ctx_scores, ctx_feats = [], [], [], []
    for image_name, qs in tqdm(queries_in.items(), desc="queries", disable=not progress):
        image = read_rgb(by_name[image_name].path)
        crops = [crop_box(image, protocol.queries[q].box) for q in qs]
        query_feats[qs] = np.asarray(embedder.embed_crops(crops), np.float32).reshape(len(qs), dim)
        boxes, scores, feats = detections.get(image_name, empty)
        for q in qs:  # the image's other persons: the query's context for CBGM
            ctx_index.append(np.full(len(boxes), q, dtype=np.int64))
            ctx_boxes.append(boxes)
            ctx_scores.append(scores)
            ctx_feats.append(feats)

    def cat(parts: list[np.ndarray], fallback: np.ndarray) -> np.ndarray:
        return np.concatenate(parts) if parts else fallback

    return save_results(
        out_path,
        image_names=names,
        det_image=np.repeat(np.arange(len(names)), [len(g[0]) for g in gallery]),
        det_boxes=cat([g[0] for g in gallery], empty[0]),
        det_scores=cat([g[1] for g in gallery], empty[1]),
        det_feats=cat([g[2] for g in gallery], empty[2]),
        query_feats=query_feats,
        context=QueryContext(
            query_index=cat(ctx_index, np.zeros(0, np.int64)),
            feats=cat(ctx_feats, empty[2]),
            scores=cat(ctx_scores, empty[1]),
            boxes=cat(ctx_boxes, empty[0]),
        ),
    )


def pipeline_results_file(
    pipeline_dir: str | os.PathLike[str],
    dataset: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    gt_boxes: bool = False,
    cross_camera: bool = False,
) -> Path:
    """Run the pipeline of `pipeline_dir` over the test scenes of `dataset`'s protocol (the
    ground-truth gallery boxes instead of detections with `gt_boxes`) and write the results
    file `out`; returns its path."""
    pipeline = load_pipeline(pipeline_dir)
    scene_dataset = load_scene_dataset(dataset, root)
    protocol = load_search_protocol(
        dataset, root, gallery_size=MAIN_GALLERY_SIZE, cross_camera=cross_camera
    )
    scenes = protocol_scenes(scene_dataset.test, protocol)
    detector = None if gt_boxes else pipeline.detector
    detections = detect_and_embed(detector, pipeline.embedder, scenes)
    return write_search_results(detections, pipeline.embedder, scenes, protocol, out)
