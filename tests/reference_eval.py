"""Plain reference implementations of the evaluation protocols, written straight from
../shared/evaluation.md: loops over queries, gallery images and detections, and scikit-learn's
`average_precision_score`. Slow on purpose; the tests and the benchmark compare the vectorised
evaluator in personsearch.evaluation against these.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score


def iou(a, b) -> float:
    """IoU of two x1 y1 x2 y2 boxes, continuous coordinates (no +1)."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def cosine(feats: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products in float64, stored as float32 (the evaluator's convention)."""
    return (np.asarray(feats, dtype=np.float64) @ np.asarray(query, dtype=np.float64)).astype(
        np.float32
    )


def reference_search(
    protocol,
    det_image,
    det_boxes,
    det_scores,
    det_feats,
    query_feats,
    det_thresh=0.5,
    duplicates="original",
    ks=(1, 5, 10),
    queries=None,
    cbgm=None,
    context=None,
):
    """Per-query (ap, hits, count_gt, count_tp) for the queries listed (default: all).

    `cbgm` = (k1, k2) with `context[q]` the query image's other persons' features (at most
    k2 - 1, most confident first) turns on SeqNet's context re-scoring, done here by brute force.
    """
    per_image = {}
    for j in range(len(det_image)):
        if det_scores[j] >= det_thresh:
            per_image.setdefault(int(det_image[j]), []).append(j)
    index = {name: i for i, name in enumerate(protocol.images)}
    out = []
    for qi in range(len(protocol.queries)) if queries is None else queries:
        task = protocol.queries[qi]
        query = query_feats[qi]
        sims_of = candidate_similarities(protocol, per_image, det_feats, qi, query, duplicates)
        if cbgm is not None:
            brute_force_cbgm(sims_of, per_image, det_feats, cbgm[0], context[qi])
        y_true, y_score = [], []
        count_gt = count_tp = 0
        evaluated = set()
        for img, gt in zip(task.gallery.tolist(), task.gt_boxes.astype(np.float64), strict=True):
            holds = not math.isnan(gt[0])
            count_gt += holds
            if duplicates == "first":
                if img in evaluated:
                    continue
                evaluated.add(img)
            rows = per_image.get(img, [])
            if not rows:
                continue
            sims = sims_of[img]
            labels = [0] * len(rows)
            if holds:
                w, h = gt[2] - gt[0], gt[3] - gt[1]
                threshold = min(0.5, w * h / ((w + 10) * (h + 10)))
                best = None
                for k, row in enumerate(rows):
                    if iou(det_boxes[row].astype(np.float64), gt) >= threshold and (
                        best is None or sims[k] > sims[best]
                    ):
                        best = k
                if best is not None:
                    labels[best] = 1
                    count_tp += 1
            y_true += labels
            y_score += sims.tolist()
        if protocol.unlisted != "none":
            listed = set(task.gallery.tolist())
            own = index.get(task.image, -1)
            for g in range(len(protocol.images)):
                if g in listed or g == own:
                    continue
                if (
                    protocol.unlisted == "other-cameras"
                    and protocol.image_cameras[g] == task.camera
                ):
                    continue
                if g in sims_of:
                    y_true += [0] * len(sims_of[g])
                    y_score += sims_of[g].tolist()
        y_true = np.array(y_true, dtype=int)
        y_score = np.array(y_score, dtype=np.float64)
        ap = 0.0
        if count_tp:
            ap = average_precision_score(y_true, y_score) * count_tp / count_gt
        # best first; among equal scores negatives first (ties count against the system)
        order = np.lexsort((y_true, -y_score))
        hits = [bool(y_true[order][:k].any()) for k in ks]
        out.append((ap, hits, count_gt, count_tp))
    return out


def candidate_similarities(protocol, per_image, det_feats, qi, query, duplicates):
    """image -> similarities of its detections, for every image the query searches."""
    task = protocol.queries[qi]
    images = set(task.gallery.tolist())
    if protocol.unlisted != "none":
        own = protocol.images.index(task.image) if task.image in protocol.images else -1
        for g in range(len(protocol.images)):
            if g == own or g in images:
                continue
            if protocol.unlisted == "other-cameras" and protocol.image_cameras[g] == task.camera:
                continue
            images.add(g)
    return {g: cosine(det_feats[per_image[g]], query) for g in images if per_image.get(g)}


def brute_force_cbgm(sims_of, per_image, det_feats, k1, context):
    """SeqNet's CBGM: re-score the images of the k1 best detections by best context matching."""
    import itertools

    flat = sorted(
        ((s, g, j) for g, sims in sims_of.items() for j, s in enumerate(sims)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    for g in sorted({g for _, g, _ in flat[:k1]}):
        feats = det_feats[per_image[g]].astype(np.float64)
        weights = [sims_of[g].astype(np.float32)]
        weights += [cosine(feats, c) for c in context]
        weights = np.array(weights)
        rows, cols = weights.shape
        best, best_pairs = -np.inf, None
        if rows <= cols:
            for perm in itertools.permutations(range(cols), rows):
                pairs = list(zip(range(rows), perm, strict=True))
                total = sum(float(weights[r, c]) for r, c in pairs)
                if total > best:
                    best, best_pairs = total, pairs
        else:
            for perm in itertools.permutations(range(rows), cols):
                pairs = list(zip(perm, range(cols), strict=True))
                total = sum(float(weights[r, c]) for r, c in pairs)
                if total > best:
                    best, best_pairs = total, pairs
        top = max(weights[r, c] for r, c in best_pairs)
        new = sims_of[g].copy()
        for r, c in best_pairs:
            if r == 0:
                new[c] = top
        sims_of[g] = new


def reference_detection(
    gt_image,
    gt_boxes,
    det_image,
    det_boxes,
    det_scores,
    num_images,
    det_thresh=0.5,
    iou_thresh=0.5,
    gt_labeled=None,
    labeled_only=False,
):
    """(recall, ap) of the person-search papers' detection measure, image by image."""
    y_true, y_score = [], []
    count_gt = count_tp = 0
    for g in range(num_images):
        gts = [i for i in range(len(gt_image)) if gt_image[i] == g]
        if labeled_only:
            gts = [i for i in gts if gt_labeled[i]]
            if not gts:
                continue
        dets = [
            j for j in range(len(det_image)) if det_image[j] == g and det_scores[j] >= det_thresh
        ]
        if not dets:
            count_gt += len(gts)
            continue
        if not gts:
            y_true += [False] * len(dets)
            y_score += [det_scores[j] for j in dets]
            continue
        ious = np.array(
            [
                [iou(gt_boxes[i].astype(np.float64), det_boxes[j].astype(np.float64)) for j in dets]
                for i in gts
            ]
        )
        marks = ious >= iou_thresh
        for c in range(len(dets)):
            for r in range(len(gts)):
                if r != np.argmax(ious[:, c]):
                    marks[r, c] = False
        for r in range(len(gts)):
            for c in range(len(dets)):
                if c != np.argmax(ious[r, :]):
                    marks[r, c] = False
        for c, j in enumerate(dets):
            y_true.append(bool(marks[:, c].any()))
            y_score.append(det_scores[j])
        count_tp += int(marks.sum())
        count_gt += len(gts)
    recall = count_tp / count_gt if count_gt else 0.0
    ap = average_precision_score(y_true, y_score) * recall if count_tp else 0.0
    return recall, ap


def reference_reid(dist, q_pids, q_cams, g_pids, g_cams, ks=(1, 5, 10)):
    """(cmc at ks, mAP, per-query AP list) for re-id on crops; ties keep gallery order."""
    aps, firsts = [], []
    for i in range(len(q_pids)):
        order = np.argsort(dist[i], kind="stable")
        ranked = []
        for j in order:
            if g_pids[j] == -1:
                continue
            if g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
                continue
            ranked.append(g_pids[j] == q_pids[i])
        if not any(ranked):
            continue
        hits = 0
        precisions = []
        for rank, good in enumerate(ranked):
            if good:
                hits += 1
                precisions.append(hits / (rank + 1))
        aps.append(float(np.mean(precisions)))
        firsts.append(ranked.index(True))
    firsts = np.array(firsts)
    cmc = [float(np.mean(firsts < k)) for k in ks]
    return cmc, float(np.mean(aps)), aps
