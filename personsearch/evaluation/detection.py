"""The person-search papers' detection measure: recall and AP at IoU 0.5, with the PR curve.

Per image, a (ground truth, detection) pair with IoU >= 0.5 is a match only if the detection is
the ground truth's highest-IoU detection and the ground truth is the detection's highest-IoU
ground truth (first one on ties, as `argmax` picks). Recall = matches / ground-truth boxes, images
without detections included; AP = step-wise average precision of (score, matched), ties grouped,
times recall. `labeled_only` counts labelled persons only and, as the published code does, skips
images without any labelled person (their detections are neither right nor wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personsearch.boxes import paired_iou


@dataclass(frozen=True)
class DetectionResult:
    """Detection recall and AP, and the precision-recall curve over score thresholds."""

    recall: float  #: matched ground truth / all ground truth
    ap: float  #: average precision, scaled by recall
    count_gt: int
    count_tp: int
    thresholds: np.ndarray  #: distinct detection scores, descending
    precision_curve: np.ndarray  #: precision of the detections scored >= each threshold
    recall_curve: np.ndarray  #: recall (over every ground-truth box) at each threshold

    def summary(self) -> dict[str, float]:
        return {"recall": self.recall, "ap": self.ap}


def _first_argmax(values: np.ndarray, group_start: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Boolean mask: the first element holding its group's maximum (groups are contiguous)."""
    group_max = np.maximum.reduceat(values, group_start)
    group_of = np.cumsum(np.isin(np.arange(len(values)), group_start)) - 1
    candidate = np.where(values == group_max[group_of], position, np.iinfo(np.int64).max)
    first = np.minimum.reduceat(candidate, group_start)
    return position == first[group_of]


def evaluate_detection(
    gt_image: np.ndarray,
    gt_boxes: np.ndarray,
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    num_images: int,
    *,
    det_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    gt_labeled: np.ndarray | None = None,
    labeled_only: bool = False,
) -> DetectionResult:
    """Evaluate detections against ground truth, both given as flat per-box arrays.

    `gt_image`/`det_image` index images 0..num_images-1; `gt_labeled` (needed for
    `labeled_only`) marks ground-truth persons that carry an identity.
    """
    gt_image = np.asarray(gt_image, dtype=np.int64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    det_image = np.asarray(det_image, dtype=np.int64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if len(gt_image) != len(gt_boxes) or not (len(det_image) == len(det_boxes) == len(det_scores)):
        raise ValueError("ground-truth or detection arrays disagree in length")

    keep_det = det_scores >= det_thresh
    counted_images = np.ones(num_images, dtype=bool)
    if labeled_only:
        if gt_labeled is None:
            raise ValueError("labeled_only needs gt_labeled")
        labeled = np.asarray(gt_labeled, dtype=bool).reshape(-1)
        gt_image, gt_boxes = gt_image[labeled], gt_boxes[labeled]
        counted_images[:] = False
        counted_images[gt_image] = True
        keep_det &= counted_images[det_image]
    det_index = np.flatnonzero(keep_det)
    det_index = det_index[np.argsort(det_image[det_index], kind="stable")]
    gt_index = np.argsort(gt_image, kind="stable")

    # every (ground truth, detection) pair of an image, ground-truth-major within each image
    gt_count = np.bincount(gt_image, minlength=num_images)
    det_count = np.bincount(det_image[det_index], minlength=num_images)
    gt_start = np.cumsum(gt_count) - gt_count
    det_start = np.cumsum(det_count) - det_count
    per_gt = det_count[gt_image[gt_index]]  # pairs per ground truth, in gt_index order
    pair_gt = np.repeat(np.arange(len(gt_index)), per_gt)
    pair_image = gt_image[gt_index][pair_gt]
    seg = np.cumsum(per_gt) - per_gt
    pair_det = det_start[pair_image] + np.arange(len(pair_gt)) - np.repeat(seg, per_gt)

    matched = np.zeros(len(det_index), dtype=bool)
    count_tp = 0
    if len(pair_gt):
        iou = paired_iou(gt_boxes[gt_index[pair_gt]], det_boxes[det_index[pair_det]])
        within_gt = pair_det - det_start[pair_image]
        gt_groups = np.flatnonzero(np.r_[True, pair_gt[1:] != pair_gt[:-1]])
        best_for_gt = _first_argmax(iou, gt_groups, within_gt)
        by_det = np.lexsort((pair_gt, pair_det))
        det_groups = np.flatnonzero(np.r_[True, pair_det[by_det][1:] != pair_det[by_det][:-1]])
        within_det = pair_gt[by_det] - gt_start[pair_image[by_det]]
        best_for_det = np.zeros(len(iou), dtype=bool)
        best_for_det[by_det] = _first_argmax(iou[by_det], det_groups, within_det)
        marks = (iou >= iou_thresh) & best_for_gt & best_for_det
        matched[pair_det[marks]] = True
        count_tp = int(marks.sum())

    count_gt = len(gt_image)
    scores = det_scores[det_index]
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], matched[order]
    last_of_tie = (
        np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.zeros(0, int)
    )
    tp = np.cumsum(hits)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_curve = tp / count_gt if count_gt else np.zeros(len(tp))
    recall = count_tp / count_gt if count_gt else 0.0
    ap = 0.0
    if count_tp:
        ap = float(np.sum(np.diff(np.r_[0.0, recall_curve]) * precision))
    return DetectionResult(
        recall=recall,
        ap=ap,
        count_gt=count_gt,
        count_tp=count_tp,
        thresholds=scores[last_of_tie],
        precision_curve=precision,
        recall_curve=recall_curve,
    )
