"""Detection recall / AP (personsearch.evaluation.detection) against the reference loop and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from reference_eval import reference_detection
from search_synth import make_world
from sklearn.metrics import average_precision_score

from personsearch.evaluation.detection import evaluate_detection


def both(gt_image, gt_boxes, det_image, det_boxes, det_scores, num_images, **kwargs):
    result = evaluate_detection(
        gt_image, gt_boxes, det_image, det_boxes, det_scores, num_images, **kwargs
    )
    recall, ap = reference_detection(
        gt_image, gt_boxes, det_image, det_boxes, det_scores, num_images, **kwargs
    )
    assert result.recall == pytest.approx(recall, abs=1e-12)
    assert result.ap == pytest.approx(ap, abs=1e-9)
    return result


@pytest.mark.parametrize("labeled_only", [False, True])
@pytest.mark.parametrize("det_thresh", [0.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_reference_on_random_worlds(seed, det_thresh, labeled_only):
    w = make_world(seed=seed, num_images=30, empty_images=3, tiny_boxes=seed % 2 == 1)
    scores = w.det_scores.copy()
    if seed == 3:
        scores = np.round(scores * 4) / 4  # many tied scores
    both(
        w.gt_image,
        w.gt_boxes,
        w.det_image,
        w.det_boxes,
        scores,
        len(w.protocol.images),
        det_thresh=det_thresh,
        gt_labeled=w.gt_pids >= 0,
        labeled_only=labeled_only,
    )


def test_hand_worked_matches_recall_and_ap():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]], dtype=np.float32)
    gt_image = np.array([0, 0, 1])  # image 1 gets no detection: its person still counts
    dets = np.array(
        [
            [0, 0, 10, 10],  # exact on person 0 (score 0.9): match
            [0, 0, 10, 9],  # a second detection of person 0 (0.8): not its best, no match
            [20, 0, 30, 10],  # person 1 (0.6): match
            [50, 50, 60, 60],  # nothing (0.7)
        ],
        dtype=np.float32,
    )
    r = both(gt_image, gt, np.zeros(4, dtype=int), dets, np.array([0.9, 0.8, 0.6, 0.7]), 2)
    assert (r.count_gt, r.count_tp) == (3, 2)
    assert r.recall == pytest.approx(2 / 3)
    # ranked: 0.9 T, 0.8 F, 0.7 F, 0.6 T -> AP = (1/1 + 2/4) / 3
    assert r.ap == pytest.approx((1 + 0.5) / 3)
    np.testing.assert_allclose(r.thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(r.precision_curve, [1, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(r.recall_curve, [1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_a_detection_between_two_people_matches_only_its_best():
    gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], dtype=np.float32)
    det = np.array([[2, 0, 12, 10]], dtype=np.float32)  # IoU 0.667 with both: first gt wins
    r = both(np.array([0, 0]), gt, np.array([0]), det, np.array([0.9]), 1)
    assert r.count_tp == 1 and r.recall == pytest.approx(0.5)


def test_labeled_only_skips_images_without_labelled_people():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    gt_image, labeled = np.array([0, 1]), np.array([True, False])
    det = np.array([[0, 0, 10, 10], [30, 30, 40, 40]], dtype=np.float32)
    # image 1's detection (a false alarm) is not counted at all under labeled_only
    r = both(
        gt_image,
        gt,
        np.array([0, 1]),
        det,
        np.array([0.6, 0.9]),
        2,
        gt_labeled=labeled,
        labeled_only=True,
    )
    assert (r.count_gt, r.count_tp, r.ap) == (1, 1, 1.0)
    r = both(gt_image, gt, np.array([0, 1]), det, np.array([0.6, 0.9]), 2)
    assert (r.count_gt, r.count_tp) == (2, 1) and r.ap == pytest.approx(0.5 * 0.5)


def test_ap_equals_sklearn_times_recall():
    w = make_world(seed=9, num_images=25)
    r = evaluate_detection(
        w.gt_image,
        w.gt_boxes,
        w.det_image,
        w.det_boxes,
        w.det_scores,
        len(w.protocol.images),
        det_thresh=0.0,
    )
    # recompute the true-positive flags from the curve: AP is a step-wise sum
    assert r.ap == pytest.approx(
        float(np.sum(np.diff(np.r_[0, r.recall_curve]) * r.precision_curve))
    )
    assert np.all(np.diff(r.recall_curve) >= 0) and r.recall_curve[-1] == pytest.approx(r.recall)
    labels = np.r_[np.ones(3), np.zeros(2)]
    assert average_precision_score(labels, [0.9, 0.8, 0.5, 0.7, 0.1]) > 0  # sklearn available


def test_no_detections_at_all():
    r = evaluate_detection(
        np.array([0]), np.array([[0, 0, 5, 5]]), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0), 1
    )
    assert (r.recall, r.ap, r.count_gt) == (0.0, 0.0, 1)
    assert len(r.thresholds) == 0
