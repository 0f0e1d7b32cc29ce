"""Tracking quality against per-frame ground truth, as pure array functions.

Inputs are one video's detections and ground-truth boxes as flat arrays (frame numbers, boxes
x1 y1 x2 y2, and a track id or an identity per row). Detections are matched to ground-truth boxes
frame by frame (one-to-one, IoU >= 0.5, most overlap first); the measures then read which track
each matched identity was given:

- `id_switches`: along each identity's matched frames in time order, how often its track id
  changes (CLEAR-MOT's IDSW, counted on the frames sampled);
- `fragments`: tracks per identity seen, averaged (1.0: every person one track);
- `purity`: the share of tracked, matched detections whose track's majority identity is theirs;
- `idf1`: the identity F1 of Ristani et al. (2016): identities and tracks paired one-to-one to
  maximise shared detections; 2 IDTP / (ground-truth boxes + tracked detections);
- `identities_found`: identities with at least one matched, tracked detection (to compare a
  sampled pass with a per-frame one: `tracks_kept`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from personsearch.boxes import box_iou

MATCH_IOU = 0.5


def match_detections(
    det_frame: np.ndarray,
    det_boxes: np.ndarray,
    gt_frame: np.ndarray,
    gt_boxes: np.ndarray,
    gt_pid: np.ndarray,
    min_iou: float = MATCH_IOU,
) -> np.ndarray:
    """(M,) the identity of the ground-truth box each detection matches (-1: none)."""
    matched = np.full(len(det_frame), -1, dtype=np.int64)
    for frame in np.intersect1d(det_frame, gt_frame):
        dets = np.flatnonzero(det_frame == frame)
        truths = np.flatnonzero(gt_frame == frame)
        iou = box_iou(det_boxes[dets], gt_boxes[truths])
        rows, cols = linear_sum_assignment(-iou)
        for row, col in zip(rows, cols, strict=True):
            if iou[row, col] >= min_iou:
                matched[dets[row]] = gt_pid[truths[col]]
    return matched


def track_quality(
    det_frame: np.ndarray, det_track: np.ndarray, det_pid: np.ndarray, gt_boxes_total: int
) -> dict[str, Any]:
    """Identity switches, fragments, purity and IDF1 of one video's tracked detections.

    `det_pid` is `match_detections`' output; `det_track` each detection's track (-1: none);
    `gt_boxes_total` the ground-truth boxes in the frames that were looked at.
    """
    tracked = det_track >= 0
    both = tracked & (det_pid >= 0)
    switches = 0
    tracks_per_identity = []
    for pid in np.unique(det_pid[both]):
        rows = np.flatnonzero(both & (det_pid == pid))
        tracks = det_track[rows[np.argsort(det_frame[rows], kind="stable")]]
        switches += int(np.count_nonzero(np.diff(tracks)))
        tracks_per_identity.append(len(np.unique(tracks)))
    majority = 0
    for track in np.unique(det_track[both]):
        _, counts = np.unique(det_pid[both & (det_track == track)], return_counts=True)
        majority += int(counts.max())
    idtp = 0
    if both.any():
        pids, pid_index = np.unique(det_pid[both], return_inverse=True)
        tracks, track_index = np.unique(det_track[both], return_inverse=True)
        shared = np.zeros((len(pids), len(tracks)), dtype=np.int64)
        np.add.at(shared, (pid_index, track_index), 1)
        rows, cols = linear_sum_assignment(-shared)
        idtp = int(shared[rows, cols].sum())
    denominator = gt_boxes_total + int(tracked.sum())
    return {
        "id_switches": switches,
        "fragments": float(np.mean(tracks_per_identity)) if tracks_per_identity else 0.0,
        "purity": majority / int(both.sum()) if both.any() else 0.0,
        "idf1": 2 * idtp / denominator if denominator else 0.0,
        "identities_found": int(len(tracks_per_identity)),
        "tracks": int(len(np.unique(det_track[tracked]))),
        "matched_detections": int(both.sum()),
    }


def tracks_kept(found_sampled: set[Any], found_every_frame: set[Any]) -> float:
    """The share of the identities a per-frame pass tracked that a sampled pass still tracks."""
    if not found_every_frame:
        return 1.0
    return len(found_sampled & found_every_frame) / len(found_every_frame)


def track_search_ap(
    track_scores: np.ndarray,
    track_relevant: np.ndarray,
    relevant_total: int,
    track_trajectory: np.ndarray | None = None,
) -> float:
    """Average precision of one query over a gallery of tracks (one hit per track).

    `track_relevant` says whether each track's majority identity is the query's;
    `relevant_total` is how many (video, identity) trajectories of the query's person the
    gallery holds. When `track_trajectory` names each track's trajectory, only a trajectory's
    first-ranked track counts as found: a person cut into three tracks gives one hit and two
    false ones, so fragmentation costs mAP as it costs a user's attention.
    """
    if relevant_total <= 0:
        raise ValueError("a query with no relevant trajectory has no AP")
    order = np.argsort(-np.asarray(track_scores, dtype=np.float64), kind="stable")
    hits = np.asarray(track_relevant, dtype=bool)[order].copy()
    if track_trajectory is not None:
        seen: set[Any] = set()
        for rank, trajectory in enumerate(np.asarray(track_trajectory)[order]):
            if hits[rank]:
                hits[rank] = trajectory not in seen
                seen.add(trajectory)
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    precision = np.arange(1, len(ranks) + 1) / ranks
    return float(precision.sum() / relevant_total)
