"""Scale-gap metrics (personsearch.evaluation.scale_gap) against plain reference loops written
from the definition, on random worlds whose person heights put many ratios exactly on the bin
edges; hand-worked cases; the `evaluate --by-scale` command."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from cuhk_fixture import DEFAULT_IMAGES, write_cuhk_sysu
from reference_eval import brute_force_cbgm, cosine, iou, reference_reid
from sklearn.metrics import average_precision_score

import personsearch.evaluation.scale_gap as scale_gap
from personsearch.cli import main
from personsearch.data.registry import load_scene_dataset, load_search_protocol
from personsearch.data.scenes import QueryTask, SearchProtocol
from personsearch.evaluation.cbgm import CBGMOptions, QueryContext
from personsearch.evaluation.reid import evaluate_reid
from personsearch.evaluation.results_file import load_results
from personsearch.evaluation.scale_gap import (
    BIN_KEYS,
    SCALE_BINS,
    reid_by_scale,
    scale_bin,
    scale_table,
    search_by_scale,
)
from personsearch.evaluation.search import GalleryDetections

# the bins written out again, on exact fractions: the reference's own reading of the definition
THIRD, TWO_THIRDS, ONE_HALF_MORE, THREE = (
    Fraction(1, 3),
    Fraction(2, 3),
    Fraction(3, 2),
    Fraction(3),
)
REFERENCE_BINS = {
    "smaller_3x": lambda r: 0 < r <= THIRD,
    "smaller_1.5x": lambda r: THIRD < r <= TWO_THIRDS,
    "same": lambda r: TWO_THIRDS < r < ONE_HALF_MORE,
    "larger_1.5x": lambda r: ONE_HALF_MORE <= r < THREE,
    "larger_3x": lambda r: r >= THREE,
}
#: Person heights (pixels) whose ratios hit 1/3, 2/3, 3/2 and 3 exactly, and fall between them.
HEIGHTS = (20, 30, 40, 45, 60, 90, 120, 135, 180, 270)


def exact_ratio(gallery_height: float, query_height: float) -> Fraction:
    return Fraction(float(gallery_height)) / Fraction(float(query_height))


def test_bin_edges():
    assert BIN_KEYS == ("smaller_3x", "smaller_1.5x", "same", "larger_1.5x", "larger_3x")
    ratios = np.array(
        [
            30 / 90,
            1 / 3,
            0.34,
            60 / 90,
            1 / 1.5,
            0.67,
            1.0,
            1.49,
            1.5,
            135 / 90,
            2.99,
            3.0,
            270 / 90,
            50.0,
        ]
    )
    assert scale_bin(ratios).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert scale_bin(np.array([np.nan, 0.0, -1.0, np.inf])).tolist() == [-1] * 4
    assert scale_bin(np.full((2, 3), 0.1)).shape == (2, 3)
    # every pair of HEIGHTS falls where the exact fractions say
    g, q = np.meshgrid(HEIGHTS, HEIGHTS)
    expected = [
        [
            BIN_KEYS.index(next(k for k, f in REFERENCE_BINS.items() if f(Fraction(a, b))))
            for a, b in zip(row_g, row_q, strict=True)
        ]
        for row_g, row_q in zip(g, q, strict=True)
    ]
    assert scale_bin(scale_gap.scale_ratio(g, q)).tolist() == expected
    assert [b.range for b in SCALE_BINS] == [
        "r <= 1/3",
        "1/3 < r <= 2/3",
        "2/3 < r < 1.5",
        "1.5 <= r < 3",
        "r >= 3",
    ]


# ------------------------------------------------------------------------------ re-id on crops


def reid_split(seed, num_query=40, num_gallery=160, ids=10, cams=3, quantise=True):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids, num_query)
    q_cams = rng.integers(1, cams + 1, num_query)
    g_pids = rng.integers(-1, ids, num_gallery)
    g_cams = rng.integers(1, cams + 1, num_gallery)
    centres = rng.standard_normal((ids, 6))
    q = centres[q_pids] + rng.standard_normal((num_query, 6))
    g = centres[np.clip(g_pids, 0, None)] + rng.standard_normal((num_gallery, 6))
    sims = -np.linalg.norm(q[:, None] - g[None], axis=2)
    if quantise:
        sims = np.round(sims * 2) / 2  # many ties
    # heights from a short list (bin edges exactly hit); one query of pid 1 only has large matches
    q_h = rng.choice(HEIGHTS, num_query).astype(np.float64)
    g_h = rng.choice(HEIGHTS, num_gallery).astype(np.float64)
    q_pids[0], q_h[0] = ids, 20.0  # an identity of its own, with only gallery matches >= 3x larger
    g_pids[:2], g_cams[:2], g_h[:2] = ids, q_cams[0] % cams + 1, [60.0, 180.0]
    return sims, q_pids, g_pids, q_cams, g_cams, q_h, g_h


def reference_reid_by_scale(sims, q_pids, g_pids, q_cams, g_cams, q_h, g_h):
    """Per bin, query by query: out-of-bin correct matches become junk (pid -1), then the plain
    Market-1501 loop on that one row."""
    out = {}
    for key, in_bin in REFERENCE_BINS.items():
        aps, firsts, pairs = [], [], 0
        for i in range(len(q_pids)):
            pids = g_pids.copy()
            kept_matches = 0
            for j in range(len(g_pids)):
                if g_pids[j] != q_pids[i] or g_pids[j] == -1 or g_cams[j] == q_cams[i]:
                    continue
                if in_bin(exact_ratio(g_h[j], q_h[i])):
                    kept_matches += 1
                else:
                    pids[j] = -1
            if not kept_matches:
                continue
            pairs += kept_matches
            cmc, mean_ap, _ = reference_reid(
                -sims[i : i + 1], q_pids[i : i + 1], q_cams[i : i + 1], pids, g_cams, ks=(1,)
            )
            aps.append(mean_ap)
            firsts.append(cmc[0])
        out[key] = (
            float(np.mean(aps)) if aps else 0.0,
            float(np.mean(firsts)) if firsts else 0.0,
            len(aps),
            pairs,
        )
    return out


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reid_by_scale_matches_reference(seed, quantise):
    split = reid_split(seed, quantise=quantise)
    got = reid_by_scale(*split)
    reference = reference_reid_by_scale(*split)
    assert list(got) == list(BIN_KEYS)
    for key, (mean_ap, rank1, queries, pairs) in reference.items():
        assert got[key]["mAP"] == pytest.approx(mean_ap, abs=1e-12), key
        assert (got[key]["rank1"], got[key]["queries"], got[key]["pairs"]) == (
            rank1,
            queries,
            pairs,
        ), key
        assert got[key]["label"] == SCALE_BINS[BIN_KEYS.index(key)].label
    # the query with only >= 3x larger matches counts there and nowhere else
    assert got["larger_3x"]["queries"] >= 1
    # the same matrix as distances gives the same numbers
    sims, *rest = split
    assert reid_by_scale(-sims, *rest, kind="distance") == got


def test_reid_empty_bins_and_no_matches():
    sims = np.array([[0.9, 0.5, 0.1]])
    got = reid_by_scale(sims, [1], [1, 2, 1], [1], [2, 2, 1], [90.0], [90.0, 30.0, 30.0])
    # g2 is the query's camera (dropped), g1 another identity: one pair, in "same"
    assert got["same"] == {
        "mAP": 1.0,
        "rank1": 1.0,
        "queries": 1,
        "pairs": 1,
        "label": "within 1.5x",
        "range": "2/3 < r < 1.5",
    }
    for key in ("smaller_3x", "smaller_1.5x", "larger_1.5x", "larger_3x"):
        assert got[key]["queries"] == got[key]["pairs"] == 0 and got[key]["mAP"] == 0.0
    with pytest.raises(ValueError, match="height"):
        reid_by_scale(sims, [1], [1, 2, 1], [1], [2, 2, 1], [90.0], [90.0, 30.0])


def test_evaluate_reid_exclude_mask():
    sims, q_pids, g_pids, q_cams, g_cams, *_ = reid_split(3)
    plain = evaluate_reid(sims, q_pids, g_pids, q_cams, g_cams)
    none = evaluate_reid(sims, q_pids, g_pids, q_cams, g_cams, exclude=np.zeros(sims.shape, bool))
    assert none.mAP == plain.mAP and (none.cmc == plain.cmc).all()
    # excluding crops is the same as making them junk, query by query
    rng = np.random.default_rng(3)
    exclude = rng.random(sims.shape) < 0.3
    got = evaluate_reid(sims, q_pids, g_pids, q_cams, g_cams, exclude=exclude, batch_size=7)
    for i in range(len(q_pids)):
        row = evaluate_reid(
            sims[i : i + 1],
            q_pids[i : i + 1],
            np.where(exclude[i], -1, g_pids),
            q_cams[i : i + 1],
            g_cams,
        )
        np.testing.assert_allclose(got.ap[i], row.ap[0], atol=1e-12)
    with pytest.raises(ValueError, match="exclude"):
        evaluate_reid(sims, q_pids, g_pids, q_cams, g_cams, exclude=exclude[:, 1:])


# --------------------------------------------------------------------------------- search


def scale_world(
    seed,
    num_images=36,
    num_ids=8,
    num_queries=12,
    gallery_size=8,
    unlisted="none",
    quantise=None,
    duplicate_entries=0,
    own_image_listed=0,
    dim=12,
):
    """A random search world (like search_synth.make_world) whose person heights come from
    HEIGHTS, at integer coordinates, so that many query/gallery ratios sit on the bin edges."""
    rng = np.random.default_rng(seed)
    gt_image, gt_boxes, gt_pids = [], [], []
    for g in range(num_images):
        present = set()
        for _ in range(rng.integers(1, 5)):
            h = int(rng.choice(HEIGHTS))
            x, y = (int(v) for v in rng.integers(0, 600, 2))
            pid = int(rng.integers(0, num_ids)) if rng.random() < 0.75 else -1
            pid = -1 if pid in present else pid
            present.add(pid)
            gt_image.append(g)
            gt_boxes.append([x, y, x + h * 2 // 5, y + h])
            gt_pids.append(pid)
    gt_image, gt_pids = np.array(gt_image), np.array(gt_pids)
    gt_boxes = np.array(gt_boxes, dtype=np.float32)
    centres = rng.standard_normal((num_ids + 1, dim))
    det_image, det_boxes, det_scores, det_feats = [], [], [], []
    for i in range(len(gt_image)):
        if rng.random() < 0.1:
            continue  # missed by the detector
        for _ in range(rng.integers(1, 3)):
            b = gt_boxes[i].astype(np.float64)
            wh = np.array([b[2] - b[0], b[3] - b[1]] * 2)
            det_image.append(gt_image[i])
            det_boxes.append(b + rng.normal(0, 0.08, 4) * wh)
            det_scores.append(rng.uniform(0.3, 1.0))
            pid = gt_pids[i] if gt_pids[i] >= 0 else num_ids
            det_feats.append(centres[pid] + 1.2 * rng.standard_normal(dim))
    for g in range(num_images):
        for _ in range(rng.integers(0, 2)):
            x, y = rng.uniform(0, 600, 2)
            det_image.append(g)
            det_boxes.append([x, y, x + 40, y + 100])
            det_scores.append(rng.uniform(0.3, 1.0))
            det_feats.append(rng.standard_normal(dim))
    det_feats = np.array(det_feats)
    det_feats = (det_feats / np.linalg.norm(det_feats, axis=1, keepdims=True)).astype(np.float32)
    if quantise:
        det_feats = (np.round(det_feats / quantise) * quantise).astype(np.float32)

    names = tuple(f"s{g}.jpg" for g in range(num_images))
    cameras = rng.integers(1, 4, num_images)
    labelled = np.flatnonzero(gt_pids >= 0)
    picks = rng.choice(labelled, size=min(num_queries, len(labelled)), replace=False)
    queries, query_feats = [], []
    for n, i in enumerate(picks):
        pid, own = gt_pids[i], gt_image[i]
        holding = sorted(set(gt_image[gt_pids == pid].tolist()) - {own})
        if gallery_size is None:
            gallery = list(holding)
        else:
            others = [g for g in range(num_images) if g != own and g not in holding]
            extra = max(0, gallery_size - len(holding))
            gallery = (
                holding + rng.choice(others, size=min(extra, len(others)), replace=False).tolist()
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
            gts[-1] = gt_boxes[np.flatnonzero(gt_image == gallery[-1])[-1]]  # a second, other box
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
        query_feats.append(centres[pid] + 1.2 * rng.standard_normal(dim))
    query_feats = np.array(query_feats)
    query_feats = (query_feats / np.linalg.norm(query_feats, axis=1, keepdims=True)).astype(
        np.float32
    )
    if quantise:
        query_feats = (np.round(query_feats / quantise) * quantise).astype(np.float32)
    protocol = SearchProtocol(
        "scale-world", names, tuple(queries), unlisted=unlisted, image_cameras=cameras
    )
    flat = (
        np.array(det_image),
        np.array(det_boxes, dtype=np.float32),
        np.array(det_scores, np.float32),
        det_feats,
    )
    return protocol, flat, query_feats


def reference_search_by_scale(
    protocol,
    det_image,
    det_boxes,
    det_scores,
    det_feats,
    query_feats,
    det_thresh=0.5,
    duplicates="original",
    cbgm=None,
    context=None,
):
    """Per bin, query by query, from the definition: the listed entries holding the person at an
    out-of-bin scale are dropped, and their images are not searched at all; everything else as
    reference_eval.reference_search does it."""
    per_image = {}
    for j in range(len(det_image)):
        if det_scores[j] >= det_thresh:
            per_image.setdefault(int(det_image[j]), []).append(j)
    own_of = {name: g for g, name in enumerate(protocol.images)}
    out = {}
    for key, in_bin in REFERENCE_BINS.items():
        aps, top1, pairs = [], [], 0
        for qi, task in enumerate(protocol.queries):
            query_h = float(task.box[3]) - float(task.box[1])
            entries = []  # (image, box or None) of the query's gallery in this bin
            for img, gt in zip(
                task.gallery.tolist(), task.gt_boxes.astype(np.float64), strict=True
            ):
                if math.isnan(gt[0]):
                    entries.append((img, None))
                elif in_bin(
                    exact_ratio(float(np.float32(gt[3])) - float(np.float32(gt[1])), query_h)
                ):
                    entries.append((img, gt))
            positives = sum(gt is not None for _, gt in entries)
            if not positives:
                continue
            pairs += positives
            searched = {img for img, _ in entries}
            if protocol.unlisted != "none":
                named = set(task.gallery.tolist())  # removed entries included: never negatives
                for g in range(len(protocol.images)):
                    if g in named or g == own_of.get(task.image, -1):
                        continue
                    if (
                        protocol.unlisted == "other-cameras"
                        and protocol.image_cameras[g] == task.camera
                    ):
                        continue
                    searched.add(g)
            sims_of = {
                g: cosine(det_feats[per_image[g]], query_feats[qi])
                for g in searched
                if per_image.get(g)
            }
            if cbgm is not None:
                brute_force_cbgm(sims_of, per_image, det_feats, cbgm[0], context[qi])
            y_true, y_score = [], []
            count_gt = count_tp = 0
            evaluated = set()
            for img, gt in entries:
                count_gt += gt is not None
                if duplicates == "first":
                    if img in evaluated:
                        continue
                    evaluated.add(img)
                rows = per_image.get(img, [])
                labels = [0] * len(rows)
                if gt is not None and rows:
                    w, h = gt[2] - gt[0], gt[3] - gt[1]
                    threshold = min(0.5, w * h / ((w + 10) * (h + 10)))
                    best = None
                    for k, row in enumerate(rows):
                        if iou(det_boxes[row].astype(np.float64), gt) >= threshold and (
                            best is None or sims_of[img][k] > sims_of[img][best]
                        ):
                            best = k
                    if best is not None:
                        labels[best] = 1
                        count_tp += 1
                if rows:
                    y_true += labels
                    y_score += sims_of[img].tolist()
            listed = {img for img, _ in entries}
            for g in searched - listed:
                if g in sims_of:
                    y_true += [0] * len(sims_of[g])
                    y_score += sims_of[g].tolist()
            y_true, y_score = np.array(y_true, dtype=int), np.array(y_score, dtype=np.float64)
            ap = average_precision_score(y_true, y_score) * count_tp / count_gt if count_tp else 0.0
            order = np.lexsort((y_true, -y_score))  # among equal scores, negatives first
            aps.append(ap)
            top1.append(bool(count_tp) and bool(y_true[order][0]))
        out[key] = (
            float(np.mean(aps)) if aps else 0.0,
            float(np.mean(top1)) if top1 else 0.0,
            len(aps),
            pairs,
        )
    return out


def assert_by_scale_matches(got, reference):
    assert list(got) == list(BIN_KEYS)
    for key, (mean_ap, top1, queries, pairs) in reference.items():
        assert abs(got[key]["mAP"] - mean_ap) < 1e-9, key
        assert (got[key]["top1"], got[key]["queries"], got[key]["pairs"]) == (
            top1,
            queries,
            pairs,
        ), key


WORLDS = {
    "listed": {},
    "ties": {"quantise": 0.25},
    "quirks": {"duplicate_entries": 4, "own_image_listed": 3},
    "full-gallery": {"unlisted": "all", "own_image_listed": 2},
    "prw": {"unlisted": "all", "gallery_size": None},
    "prw-cross-camera": {"unlisted": "other-cameras", "gallery_size": None},
    "ties-full": {"unlisted": "all", "quantise": 0.34, "duplicate_entries": 3},
}


@pytest.mark.parametrize("duplicates", ["original", "first"])
@pytest.mark.parametrize("name", sorted(WORLDS))
@pytest.mark.parametrize("seed", [0, 1])
def test_search_by_scale_matches_reference(name, seed, duplicates, monkeypatch):
    if seed == 1:  # one written-out query per sub-protocol: the chunking changes nothing
        monkeypatch.setattr(scale_gap, "_EXPLICIT_ENTRIES", 1)
    protocol, flat, query_feats = scale_world(seed, **WORLDS[name])
    gallery = GalleryDetections.from_flat(*flat, len(protocol.images))
    got = search_by_scale(protocol, gallery, query_feats, duplicates=duplicates)
    assert_by_scale_matches(
        got, reference_search_by_scale(protocol, *flat, query_feats, duplicates=duplicates)
    )


def test_worlds_exercise_edges_and_exclusions():
    """The random worlds do what the comparisons rely on: ratios exactly on every edge, queries
    left out of bins, empty bins, and queries with positives in several bins."""
    edges = {THIRD: 0, TWO_THIRDS: 0, ONE_HALF_MORE: 0, THREE: 0}
    several = absent = 0
    for seed in (0, 1):
        protocol, *_ = scale_world(seed, unlisted="all", gallery_size=None)
        for task in protocol.queries:
            qh = float(task.box[3] - task.box[1])
            ratios = [exact_ratio(gt[3] - gt[1], qh) for gt in task.gt_boxes[task.holds_person]]
            for r in ratios:
                if r in edges:
                    edges[r] += 1
            bins = {next(k for k, f in REFERENCE_BINS.items() if f(r)) for r in ratios}
            several += len(bins) > 1
            absent += len(bins) < len(BIN_KEYS)
    assert all(edges.values()) and several and absent
    protocol, flat, query_feats = scale_world(0)
    got = search_by_scale(
        protocol, GalleryDetections.from_flat(*flat, len(protocol.images)), query_feats
    )
    assert sum(v["queries"] for v in got.values()) > len(protocol.queries)  # some in several bins


def test_search_by_scale_cbgm_matches_brute_force():
    protocol, flat, query_feats = scale_world(4, num_queries=8, unlisted="all")
    rng = np.random.default_rng(4)
    k = 2
    ctx = rng.standard_normal((len(query_feats) * k, query_feats.shape[1]))
    ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
    context = QueryContext(
        np.repeat(np.arange(len(query_feats)), k), ctx, rng.uniform(0.5, 1, len(ctx))
    )
    per_query = context.persons_per_query(np.stack([t.box for t in protocol.queries]), k)
    gallery = GalleryDetections.from_flat(*flat, len(protocol.images))
    got = search_by_scale(
        protocol, gallery, query_feats, cbgm=CBGMOptions(5, k + 1), query_context=context
    )
    assert_by_scale_matches(
        got, reference_search_by_scale(protocol, *flat, query_feats, cbgm=(5, 3), context=per_query)
    )


def test_search_hand_worked():
    """One query (height 90) and three images holding it: heights 30 (r = 1/3), 90 and 270
    (r = 3), similarities 0.9, 0.5 and 0.7; a negative scores 0.6 in a fourth image."""

    def feat(s):
        return [s, math.sqrt(1 - s * s)]

    boxes = {0: [0, 0, 12, 30], 1: [0, 0, 36, 90], 2: [0, 0, 108, 270], 3: [0, 0, 36, 90]}
    sims = {0: 0.9, 1: 0.5, 2: 0.7, 3: 0.6}
    det_image = np.arange(4)
    det_boxes = np.array([boxes[g] for g in range(4)], dtype=np.float32)
    det_feats = np.array([feat(sims[g]) for g in range(4)], dtype=np.float32)
    nan = [np.nan] * 4
    task = QueryTask(
        "q.jpg",
        [0, 0, 36, 90],
        7,
        -1,
        [0, 1, 2, 3],
        np.array([boxes[0], boxes[1], boxes[2], nan], dtype=np.float32),
    )
    images = ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "q.jpg")
    expected = {  # bin: (AP, top-1)
        "smaller_3x": (1.0, 1.0),  # 0.9 P, 0.6 N
        "same": (0.5, 0.0),  # 0.6 N, 0.5 P
        "larger_3x": (1.0, 1.0),  # 0.7 P, 0.6 N
    }
    for unlisted, listed in (("none", [0, 1, 2, 3]), ("all", [0, 1, 2])):
        # with unlisted images searched, the negative image is searched without being listed
        t = QueryTask(task.image, task.box, 7, -1, listed, task.gt_boxes[: len(listed)])
        protocol = SearchProtocol("hand", images, (t,), unlisted=unlisted)
        gallery = GalleryDetections.from_flat(
            det_image, det_boxes, np.ones(4), det_feats, len(images)
        )
        got = search_by_scale(protocol, gallery, np.array([[1.0, 0.0]], dtype=np.float32))
        for key in BIN_KEYS:
            if key in expected:
                assert (got[key]["mAP"], got[key]["top1"]) == pytest.approx(expected[key]), (
                    unlisted,
                    key,
                )
                assert got[key]["queries"] == got[key]["pairs"] == 1
            else:
                assert got[key]["queries"] == got[key]["pairs"] == 0 and got[key]["mAP"] == 0.0
    assert "gallery >=3x smaller" in scale_table(got) and "-" in scale_table(got)
    with pytest.raises(ValueError, match="unknown scale bins"):
        search_by_scale(protocol, gallery, np.array([[1.0, 0.0]], dtype=np.float32), bins=["tiny"])
    assert list(
        search_by_scale(protocol, gallery, np.array([[1.0, 0.0]], np.float32), bins=["same"])
    ) == ["same"]


# ------------------------------------------------------------------------- evaluate --by-scale

# pid 10 asked in s5 (height 90): s6 holds it at 30 (r = 1/3), s7 at 91 (within 1.5x);
# pid 11 asked in s6 (height 70): s8 holds it at 140 (r = 2)
SCALE_IMAGES = {
    **{name: DEFAULT_IMAGES[name] for name in ("s1.jpg", "s2.jpg", "s3.jpg", "s4.jpg")},
    "s5.jpg": [(10, (10, 10, 30, 90)), (None, (80, 10, 20, 60))],
    "s6.jpg": [(10, (50, 12, 10, 30)), (11, (100, 20, 25, 70))],
    "s7.jpg": [(10, (20, 15, 29, 91))],
    "s8.jpg": [(11, (30, 25, 26, 140)), (None, (90, 20, 30, 80))],
}


@pytest.fixture(scope="module")
def cuhk(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk-scale")
    write_cuhk_sysu(root, images=SCALE_IMAGES, gallery_sizes=(50, 100), write_images=False)
    return root


def perfect_results(root, path):
    """Ground-truth boxes as detections, one-hot identity features, and in every image one
    extra detection equally similar to every query."""
    protocol = load_search_protocol("cuhk-sysu", root, 100)
    test = {s.name: s for s in load_scene_dataset("cuhk-sysu", root).test}
    det_image, boxes, feats = [], [], []
    dim = 16
    for g, name in enumerate(protocol.images):
        for box, pid in zip(test[name].boxes, test[name].pids, strict=True):
            det_image.append(g)
            boxes.append(box)
            feats.append(np.eye(dim)[pid if pid >= 0 else 15])
        det_image.append(g)
        boxes.append([140, 0, 150, 30])
        feats.append(np.full(dim, 1 / 4))
    np.savez(
        path,
        image_names=np.array(protocol.images),
        det_image=np.array(det_image),
        det_boxes=np.array(boxes, dtype=np.float32),
        det_scores=np.full(len(det_image), 0.9, np.float32),
        det_feats=np.array(feats, dtype=np.float32),
        query_feats=np.array([np.eye(dim)[q.pid] for q in protocol.queries], dtype=np.float32),
    )
    return path


def test_evaluate_by_scale_json_and_table(cuhk, tmp_path, capsys):
    results = perfect_results(cuhk, tmp_path / "r.npz")
    args = ["evaluate", "--dataset", "cuhk-sysu", "--root", str(cuhk), "--results", str(results)]
    assert main([*args, "--by-scale", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mAP"] == 1.0 and list(summary["by_scale"]) == sorted(BIN_KEYS)  # sort_keys
    by_scale = summary["by_scale"]
    assert {k: (v["queries"], v["pairs"]) for k, v in by_scale.items() if v["queries"]} == {
        "smaller_3x": (1, 1),
        "same": (1, 1),
        "larger_1.5x": (1, 1),
    }
    assert all(v["mAP"] == v["top1"] == 1.0 for v in by_scale.values() if v["queries"])
    # what the command prints is search_by_scale on the same inputs
    loaded = load_results(results)
    protocol = load_search_protocol("cuhk-sysu", cuhk, 100)
    direct = search_by_scale(protocol, loaded.gallery_for(protocol.images), loaded.query_feats)
    assert by_scale == json.loads(json.dumps(direct))

    assert (
        main(
            [
                *args,
                "--by-scale",
                "--gallery-size",
                "all-sizes",
                "--json",
                "--plot",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    sizes = summary["gallery_sizes"]
    assert [row["gallery_size"] for row in sizes] == [50, 100, "full"]
    assert all(set(row["by_scale"]) == set(BIN_KEYS) for row in sizes)
    assert summary["by_scale"] == sizes[1]["by_scale"]

    assert main([*args, "--by-scale", "--gallery-size", "full"]) == 0
    out = capsys.readouterr().out
    assert "cuhk-sysu/full by scale" in out and "gallery >=3x smaller" in out and "r <= 1/3" in out
    assert main([*args, "--json"]) == 0
    assert "by_scale" not in json.loads(capsys.readouterr().out)


def test_demo_metrics_and_report_chart(cuhk, tmp_path):
    """The demo's evaluation carries by_scale at gallery 100 and full, and its report draws them."""
    from personsearch.data.cuhk_sysu import load_cuhk_sysu_protocol
    from personsearch.demo import _evaluate
    from personsearch.report.demo_report import write_demo_report

    results = perfect_results(cuhk, tmp_path / "r.npz")
    dataset = load_scene_dataset("cuhk-sysu", cuhk)
    protocols = {size: load_cuhk_sysu_protocol(cuhk, size) for size in (50, 100, "full")}
    detections = {s.name: (s.boxes, np.full(len(s.boxes), 0.9, np.float32)) for s in dataset.test}
    metrics = _evaluate(results, protocols, dataset.test, detections)
    assert "by_scale" not in metrics["search"]["50"]
    for size in ("100", "full"):
        by_scale = metrics["search"][size]["by_scale"]
        assert list(by_scale) == list(BIN_KEYS) and by_scale["smaller_3x"]["queries"] == 1
    report = write_demo_report(
        tmp_path / "report.html",
        metrics=metrics,
        timings={"evaluate": 1.0},
        plan_name="test",
        world=cuhk,
        dataset=dataset,
        protocol=protocols[100],
        results_path=results,
        examples=0,
    )
    html = report.read_text()
    assert (
        "Search across scales" in html and "r = gallery person height / query person height" in html
    )
    assert html.count("data:image/png") == 3  # gallery curve, scale gap, precision-recall
