"""Synthetic person-search worlds for the evaluation tests and benchmark: a SearchProtocol plus a
detector's flat output (det_image, boxes, scores, feats) and query features, at any shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personsearch.data.scenes import QueryTask, SearchProtocol


@dataclass
class SynthWorld:
    protocol: SearchProtocol
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_feats: np.ndarray
    query_feats: np.ndarray
    gt_image: np.ndarray  #: every annotated person: image index
    gt_boxes: np.ndarray
    gt_pids: np.ndarray  #: -1 unlabelled

    def flat(self):
        return self.det_image, self.det_boxes, self.det_scores, self.det_feats


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_world(
    seed: int = 0,
    num_images: int = 40,
    num_ids: int = 12,
    num_queries: int = 10,
    gallery_size: int | None = 8,
    dim: int = 16,
    persons_per_image: tuple[int, int] = (1, 5),
    noise: float = 0.8,
    quantise: float | None = None,
    unlisted: str = "none",
    num_cameras: int = 3,
    duplicate_entries: int = 0,
    own_image_listed: int = 0,
    empty_images: int = 0,
    tiny_boxes: bool = False,
) -> SynthWorld:
    """A random world. `gallery_size=None` lists only the images holding the person (PRW-style).

    `quantise` rounds features to a coarse grid (many exact ties); `duplicate_entries` and
    `own_image_listed` inject the CUHK-SYSU protocol quirks; `empty_images` leaves images with
    no detection at all.
    """
    rng = np.random.default_rng(seed)
    gt_image, gt_boxes, gt_pids = [], [], []
    for g in range(num_images):
        present: set[int] = set()
        for _ in range(rng.integers(persons_per_image[0], persons_per_image[1] + 1)):
            scale = (
                rng.uniform(3, 12) if tiny_boxes and rng.random() < 0.5 else rng.uniform(30, 200)
            )
            x, y = rng.uniform(0, 600, 2)
            gt_image.append(g)
            gt_boxes.append([x, y, x + scale * 0.4, y + scale])
            pid = int(rng.integers(0, num_ids)) if rng.random() < 0.7 else -1
            pid = -1 if pid in present else pid  # a person appears once per image
            present.add(pid)
            gt_pids.append(pid)
    gt_image = np.array(gt_image)
    gt_boxes = np.array(gt_boxes, dtype=np.float32)
    gt_pids = np.array(gt_pids)
    centres = _normalise(rng.standard_normal((num_ids + 1, dim)))

    # detections: jittered copies of most persons, plus false alarms
    det_image, det_boxes, det_scores, det_feats = [], [], [], []
    no_det = set(rng.choice(num_images, size=empty_images, replace=False).tolist())
    for i in range(len(gt_image)):
        if gt_image[i] in no_det or rng.random() < 0.15:
            continue
        for _ in range(rng.integers(1, 3)):
            b = gt_boxes[i].astype(np.float64)
            wh = np.array([b[2] - b[0], b[3] - b[1]] * 2)
            det_image.append(gt_image[i])
            det_boxes.append(b + rng.normal(0, 0.12, 4) * wh)
            det_scores.append(rng.uniform(0.2, 1.0))
            pid = gt_pids[i] if gt_pids[i] >= 0 else num_ids
            det_feats.append(centres[pid] + noise * rng.standard_normal(dim) / np.sqrt(dim))
    for g in range(num_images):
        if g in no_det:
            continue
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 600, 2)
            det_image.append(g)
            det_boxes.append([x, y, x + 40, y + 100])
            det_scores.append(rng.uniform(0.0, 1.0))
            det_feats.append(rng.standard_normal(dim))
    det_feats = _normalise(np.array(det_feats))
    if quantise:
        det_feats = (np.round(det_feats / quantise) * quantise).astype(np.float32)

    names = tuple(f"s{g}.jpg" for g in range(num_images))
    cameras = rng.integers(1, num_cameras + 1, num_images)
    labelled = np.flatnonzero(gt_pids >= 0)
    picks = rng.choice(labelled, size=min(num_queries, len(labelled)), replace=False)
    queries, query_feats = [], []
    for n, i in enumerate(picks):
        pid, own = gt_pids[i], gt_image[i]
        holding = sorted(set(gt_image[(gt_pids == pid)].tolist()) - {own})
        if gallery_size is None:
            gallery = list(holding)
        else:
            others = [g for g in range(num_images) if g != own and g not in holding]
            k = max(0, gallery_size - len(holding))
            # every holding image is listed, as in CUHK-SYSU: an unlisted one would be a negative
            gallery = (
                list(holding) + rng.choice(others, size=min(k, len(others)), replace=False).tolist()
            )
            rng.shuffle(gallery)
        if n < own_image_listed:
            gallery.append(own)
        if n < duplicate_entries and gallery:
            gallery.append(gallery[0])
        gts = []
        for g in gallery:
            rows = np.flatnonzero((gt_image == g) & (gt_pids == pid))
            gts.append(gt_boxes[rows[0]] if len(rows) else [np.nan] * 4)
        if n < duplicate_entries and len(gallery) > 1:
            # a duplicate carrying a second, different box for the person (as TestG100 does)
            g = gallery[-1]
            rows = np.flatnonzero(gt_image == g)
            gts[-1] = gt_boxes[rows[-1]]
        queries.append(
            QueryTask(
                image=names[own],
                box=gt_boxes[i],
                pid=int(pid),
                camera=int(cameras[own]),
                gallery=np.array(gallery, dtype=np.int64),
                gt_boxes=np.array(gts, dtype=np.float32).reshape(-1, 4),
            )
        )
        query_feats.append(centres[pid] + noise * rng.standard_normal(dim) / np.sqrt(dim))
    query_feats = _normalise(np.array(query_feats).reshape(-1, dim))
    if quantise:
        query_feats = (np.round(query_feats / quantise) * quantise).astype(np.float32)
    protocol = SearchProtocol(
        name="synthetic",
        images=names,
        queries=tuple(queries),
        unlisted=unlisted,
        image_cameras=cameras,
    )
    return SynthWorld(
        protocol,
        np.array(det_image, dtype=np.int64),
        np.array(det_boxes, dtype=np.float32).reshape(-1, 4),
        np.array(det_scores, dtype=np.float32),
        det_feats,
        query_feats,
        gt_image,
        gt_boxes,
        gt_pids,
    )
