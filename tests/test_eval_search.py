"""Search evaluation (personsearch.evaluation.search) against the plain reference loop, hand-worked
cases of every protocol rule, and properties (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_data import REAL_DATA, needs_real
from reference_eval import reference_search
from search_synth import make_world

import personsearch.evaluation._search_common as search_common
import personsearch.evaluation._search_sparse as search_sparse
from personsearch.data.scenes import QueryTask, SearchProtocol
from personsearch.evaluation.cbgm import CBGMOptions, QueryContext
from personsearch.evaluation.search import GalleryDetections, evaluate_search

NAN = [np.nan] * 4


def paths_for(unlisted: str) -> tuple[str, ...]:
    """The computation paths a protocol can take: the sparse one scores listed images only."""
    return ("sparse", "dense") if unlisted == "none" else ("dense",)


def run(world, det_thresh=0.5, **kwargs):
    gallery = GalleryDetections.from_flat(*world.flat(), len(world.protocol.images), det_thresh)
    return evaluate_search(world.protocol, gallery, world.query_feats, **kwargs)


def assert_matches_reference(result, reference):
    ap = np.array([r[0] for r in reference])
    np.testing.assert_allclose(result.ap, ap, rtol=0, atol=1e-9)
    assert (result.hits == np.array([r[1] for r in reference])).all()
    assert (result.count_gt == np.array([r[2] for r in reference])).all()
    assert (result.count_tp == np.array([r[3] for r in reference])).all()
    assert abs(result.mAP - ap.mean()) < 1e-9


# ------------------------------------------------------------------ against the reference loop

WORLDS = {
    "plain": {},
    "ties": {"quantise": 0.25},
    "quirks": {"duplicate_entries": 4, "own_image_listed": 3},
    "empty-and-tiny": {"empty_images": 6, "tiny_boxes": True},
    "full-gallery": {"unlisted": "all", "own_image_listed": 2},
    "prw": {"unlisted": "all", "gallery_size": None},
    "prw-cross-camera": {"unlisted": "other-cameras", "gallery_size": None},
    "ties-full": {"unlisted": "all", "quantise": 0.34, "duplicate_entries": 3},
}


WORLD_PATHS = [
    (name, path)
    for name in sorted(WORLDS)
    for path in paths_for(WORLDS[name].get("unlisted", "none"))
]


@pytest.mark.parametrize("duplicates", ["original", "first"])
@pytest.mark.parametrize(("name", "path"), WORLD_PATHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(name, path, seed, duplicates):
    world = make_world(seed=seed, **WORLDS[name])
    result = run(world, duplicates=duplicates, batch_size=4, path=path)
    assert_matches_reference(
        result,
        reference_search(world.protocol, *world.flat(), world.query_feats, duplicates=duplicates),
    )


@pytest.mark.parametrize("cbgm", [False, True])
@pytest.mark.parametrize("duplicates", ["original", "first"])
@pytest.mark.parametrize("seed", [3, 4])
def test_sparse_and_dense_paths_agree(seed, duplicates, cbgm):
    """The two kernels (and the automatic choice) give the very same numbers, bit for bit."""
    world = make_world(
        seed=seed,
        quantise=0.25 if seed == 3 else None,
        duplicate_entries=2,
        own_image_listed=2,
        empty_images=3,
    )
    kwargs = {"duplicates": duplicates, "batch_size": 3}
    if cbgm:
        rng = np.random.default_rng(seed)
        ctx_feats = rng.standard_normal((2 * len(world.query_feats), world.query_feats.shape[1]))
        ctx_feats /= np.linalg.norm(ctx_feats, axis=1, keepdims=True)
        kwargs["query_context"] = QueryContext(
            np.repeat(np.arange(len(world.query_feats)), 2),
            ctx_feats,
            rng.uniform(0.5, 1, len(ctx_feats)),
        )
        kwargs["cbgm"] = CBGMOptions(k1=4, k2=3)
    sparse, dense, auto = (run(world, path=path, **kwargs) for path in ("sparse", "dense", "auto"))
    for other in (dense, auto):
        for field in ("ap", "hits", "count_gt", "count_tp"):
            assert np.array_equal(getattr(sparse, field), getattr(other, field)), field


def test_path_is_checked():
    world = make_world(seed=0, unlisted="all")
    with pytest.raises(ValueError, match="listed images only"):
        run(world, path="sparse")
    with pytest.raises(ValueError, match="path must be"):
        run(world, path="fast")


def test_threaded_products_match_reference(monkeypatch):
    """Enough images and candidates for threads to share the sparse path's per-image products
    and the counting (the kernels' private thresholds lowered, their thread pools watched)."""
    world = make_world(
        seed=5, num_images=240, num_queries=40, gallery_size=30, quantise=0.25, duplicate_entries=3
    )
    monkeypatch.setattr(search_sparse, "_IMAGES_PER_THREAD", 20)
    monkeypatch.setattr(search_sparse, "_ELEMENTS_PER_THREAD", 100)
    threads = []
    original = search_sparse.ThreadPoolExecutor

    def recording(count):
        threads.append(count)
        return original(count)

    for module in (search_common, search_sparse):
        monkeypatch.setattr(module, "cpu_count", lambda: 4)
        monkeypatch.setattr(module, "ThreadPoolExecutor", recording)
    result = run(world, path="sparse")
    # the norm bound in the background, the products, then the counting
    assert threads[:2] == [1, 4] and len(threads) == 3 and threads[2] >= 2
    assert_matches_reference(
        result, reference_search(world.protocol, *world.flat(), world.query_feats)
    )


@pytest.mark.parametrize("gallery_size", [20, 60])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_high_dimension_float32_products_match_reference(gallery_size, path):
    # D = 512: the float32 error band of the sparse path is wider; tied features fall inside it
    world = make_world(
        seed=5, num_images=150, num_ids=30, num_queries=40, gallery_size=gallery_size, dim=512
    )
    world.det_feats[1::7] = world.det_feats[0::7][: len(world.det_feats[1::7])]  # exact ties
    result = run(world, path=path)
    assert_matches_reference(
        result, reference_search(world.protocol, *world.flat(), world.query_feats)
    )


@pytest.mark.parametrize("det_thresh", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_detection_threshold_matches_reference(det_thresh, path):
    world = make_world(seed=6, duplicate_entries=1)
    result = run(world, det_thresh=det_thresh, path=path)
    assert_matches_reference(
        result,
        reference_search(world.protocol, *world.flat(), world.query_feats, det_thresh=det_thresh),
    )


@pytest.mark.parametrize(
    ("unlisted", "path"), [(u, p) for u in ("none", "all") for p in paths_for(u)]
)
def test_cbgm_matches_brute_force_reference(unlisted, path):
    world = make_world(seed=7, num_queries=12, noise=1.2)
    rng = np.random.default_rng(0)
    k = 2
    ctx_feats = rng.standard_normal((len(world.query_feats) * k, world.query_feats.shape[1]))
    ctx_feats /= np.linalg.norm(ctx_feats, axis=1, keepdims=True)
    context = QueryContext(
        np.repeat(np.arange(len(world.query_feats)), k),
        ctx_feats,
        rng.uniform(0.5, 1, len(ctx_feats)),
    )
    options = CBGMOptions(k1=5, k2=k + 1)
    per_query = context.persons_per_query(np.stack([t.box for t in world.protocol.queries]), k)
    world.protocol = SearchProtocol(
        world.protocol.name, world.protocol.images, world.protocol.queries, unlisted=unlisted
    )
    result = run(world, cbgm=options, query_context=context, path=path)
    reference = reference_search(
        world.protocol, *world.flat(), world.query_feats, cbgm=(5, 3), context=per_query
    )
    assert_matches_reference(result, reference)
    plain = run(world, path=path)
    assert not np.allclose(plain.ap, result.ap)  # it did re-score something


# ------------------------------------------------------------------------ hand-worked cases


def vec(sim: float) -> list[float]:
    """A 2-D unit feature whose dot product with the query feature (1, 0) is `sim`."""
    return [sim, float(np.sqrt(1 - sim * sim))]


def evaluate(
    images, queries, dets, unlisted="none", duplicates="original", det_thresh=0.5, cameras=None
):
    """dets: (image index, box, score, similarity to the query); one query feature (1, 0)."""
    names = tuple(f"i{g}.jpg" for g in range(images))
    protocol = SearchProtocol(
        "hand",
        names,
        tuple(queries),
        unlisted=unlisted,
        image_cameras=np.array(cameras if cameras else [-1] * images),
    )
    det_image = np.array([d[0] for d in dets], dtype=np.int64)
    boxes = np.array([d[1] for d in dets], dtype=np.float32).reshape(-1, 4)
    scores = np.array([d[2] for d in dets], dtype=np.float32)
    feats = np.array([vec(d[3]) for d in dets], dtype=np.float32).reshape(-1, 2)
    query_feats = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(queries), 1))
    gallery = GalleryDetections.from_flat(det_image, boxes, scores, feats, images, det_thresh)
    reference = reference_search(
        protocol,
        det_image,
        boxes,
        scores,
        feats,
        query_feats,
        det_thresh=det_thresh,
        duplicates=duplicates,
    )
    for path in paths_for(unlisted):
        result = evaluate_search(protocol, gallery, query_feats, duplicates=duplicates, path=path)
        assert_matches_reference(result, reference)
    return result


def task(gallery, gts, image="q.jpg", camera=-1):
    return QueryTask(image, [0, 0, 10, 10], 7, camera, gallery, gts)


GT = [100, 100, 140, 200]  # 40 x 100 person
SMALL = [0, 0, 10, 20]  # 10 x 20 person: threshold 200 / (20 * 30) = 1/3


def test_iou_threshold_of_small_boxes():
    # IoU 0.4 with the small box: a match under the 1/3 threshold (it would fail at 0.5)
    shifted = [0, 0, 10, 8]  # inside the person: IoU = 80 / 200 = 0.4
    r = evaluate(1, [task([0], [SMALL])], [(0, shifted, 0.9, 0.5)])
    assert r.count_tp[0] == 1 and r.ap[0] == 1.0
    too_small = [0, 0, 10, 6]  # IoU 0.3 < 1/3
    r = evaluate(1, [task([0], [SMALL])], [(0, too_small, 0.9, 0.5)])
    assert r.count_tp[0] == 0 and r.ap[0] == 0.0
    # a large person keeps the 0.5 threshold: IoU 0.45 is not enough
    r = evaluate(1, [task([0], [GT])], [(0, [100, 100, 140, 145], 0.9, 0.5)])
    assert r.count_tp[0] == 0


def test_one_positive_per_image_is_the_most_similar_overlapping_detection():
    # two detections on the person: the more similar (0.6) is the positive, the other (0.4) a
    # negative; a detection elsewhere (0.7) ranks first
    dets = [
        (0, GT, 0.9, 0.6),
        (0, [102, 101, 141, 199], 0.9, 0.4),
        (0, [300, 0, 340, 100], 0.9, 0.7),
    ]
    r = evaluate(1, [task([0], [GT])], dets)
    assert r.count_tp[0] == 1
    assert r.ap[0] == pytest.approx(0.5)  # positive at rank 2
    assert list(r.hits[0]) == [False, True, True]
    # the overlapping detections are the two best: still only one positive
    dets = [(0, GT, 0.9, 0.9), (0, [102, 101, 141, 199], 0.9, 0.8)]
    r = evaluate(1, [task([0], [GT])], dets)
    assert r.count_tp[0] == 1 and r.ap[0] == 1.0


def test_missed_detections_lower_ap():
    # the person is in two listed images; only one is detected (ranked first): AP = 1/2
    dets = [(0, GT, 0.9, 0.8), (1, [300, 0, 340, 100], 0.9, 0.5), (2, [0, 0, 40, 90], 0.9, 0.3)]
    r = evaluate(3, [task([0, 1, 2], [GT, GT, NAN])], dets)
    assert (r.count_gt[0], r.count_tp[0]) == (2, 1)
    assert r.ap[0] == pytest.approx(0.5)
    # a detection scored under the threshold does not exist
    dets[0] = (0, GT, 0.4, 0.8)
    r = evaluate(3, [task([0, 1, 2], [GT, GT, NAN])], dets)
    assert r.count_tp[0] == 0 and r.ap[0] == 0.0 and not r.hits[0].any()


def test_tied_scores_form_one_threshold_and_count_against_top_k():
    # positive tied with one negative: precision at that threshold is 1/2
    dets = [(0, GT, 0.9, 0.5), (1, [0, 0, 40, 90], 0.9, 0.5), (1, [50, 0, 90, 90], 0.9, 0.25)]
    r = evaluate(2, [task([0, 1], [GT, NAN])], dets)
    assert r.ap[0] == pytest.approx(0.5)
    assert list(r.hits[0]) == [False, True, True]  # the tied negative is ranked first
    # two tied positives and one tied negative: each positive's precision is 2/3
    dets = [(0, GT, 0.9, 0.5), (1, GT, 0.9, 0.5), (2, GT, 0.9, 0.5)]
    r = evaluate(3, [task([0, 1, 2], [GT, GT, NAN])], dets)
    assert r.ap[0] == pytest.approx(2 / 3)


def test_full_gallery_negatives_exclude_listed_and_own_images():
    # images: 0 listed (holds the person, sim 0.5), 1 the query's own image, 2 and 3 unlisted
    dets = [
        (0, GT, 0.9, 0.5),
        (1, [0, 0, 40, 90], 0.9, 0.9),
        (2, [0, 0, 40, 90], 0.9, 0.7),
        (3, [0, 0, 40, 90], 0.9, 0.1),
    ]
    queries = [task([0], [GT], image="i1.jpg")]
    assert evaluate(4, queries, dets).ap[0] == 1.0  # listed only
    r = evaluate(4, queries, dets, unlisted="all")
    assert r.ap[0] == pytest.approx(0.5)  # image 2 outranks; image 1 (own) does not count
    assert list(r.hits[0]) == [False, True, True]
    # a listed image is not counted again as an unlisted negative
    queries = [task([0, 2], [GT, NAN], image="i1.jpg")]
    assert evaluate(4, queries, dets, unlisted="all").ap[0] == pytest.approx(0.5)
    # cross-camera: image 2 shares the query's camera and drops out
    queries = [task([0], [GT], image="i1.jpg", camera=1)]
    r = evaluate(4, queries, dets, unlisted="other-cameras", cameras=[2, 1, 1, 2])
    assert r.ap[0] == 1.0


def test_duplicated_listed_image_original_versus_first():
    # the same image listed twice (the second time with another box for the person)
    other = [300, 0, 340, 100]
    dets = [(0, GT, 0.9, 0.6), (0, other, 0.9, 0.8), (1, [0, 0, 40, 90], 0.9, 0.7)]
    queries = [task([0, 1, 0], [GT, NAN, other])]
    original = evaluate(2, queries, dets, duplicates="original")
    # candidates: 0.8(pos, 2nd entry) 0.8(neg) 0.7 0.6(pos, 1st entry) 0.6(neg) -> counted twice
    # precision at 0.8: 1/2 (tied pair), at 0.6: 2/5; AP = (1/2 + 2/5) / 2
    assert (original.count_gt[0], original.count_tp[0]) == (2, 2)
    assert original.ap[0] == pytest.approx((1 / 2 + 2 / 5) / 2)
    first = evaluate(2, queries, dets, duplicates="first")
    # evaluated once with the first box: 0.8(neg) 0.7(neg) 0.6(pos); count_gt still 2
    assert (first.count_gt[0], first.count_tp[0]) == (2, 1)
    assert first.ap[0] == pytest.approx((1 / 3) / 2)


def test_query_without_candidates_scores_zero():
    r = evaluate(2, [task([0], [GT]), task([1], [NAN])], [(0, GT, 0.9, 0.5)])
    assert r.ap[1] == 0.0 and not r.hits[1].any() and r.count_gt[1] == 0
    assert r.mAP == pytest.approx(0.5)


def test_bad_inputs_are_rejected():
    world = make_world(seed=0)
    gallery = GalleryDetections.from_flat(*world.flat(), len(world.protocol.images))
    with pytest.raises(ValueError, match="query features"):
        evaluate_search(world.protocol, gallery, world.query_feats[:-1])
    with pytest.raises(ValueError, match="duplicates"):
        evaluate_search(world.protocol, gallery, world.query_feats, duplicates="last")
    with pytest.raises(ValueError, match="query_context"):
        evaluate_search(world.protocol, gallery, world.query_feats, cbgm=CBGMOptions())


# ------------------------------------------------------------------------------- properties

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    unlisted=st.sampled_from(["none", "all", "other-cameras"]),
    quantise=st.sampled_from([None, 0.5]),
)
def test_invariant_to_gallery_and_detection_order(seed, unlisted, quantise):
    world = make_world(
        seed=seed,
        num_images=20,
        num_queries=6,
        unlisted=unlisted,
        quantise=quantise,
        duplicate_entries=1,
    )
    before = run(world)
    rng = np.random.default_rng(seed)
    # relabel the images, shuffle detection rows and every query's gallery list
    perm = rng.permutation(len(world.protocol.images))  # new index of old image i
    names = [None] * len(perm)
    for old, new in enumerate(perm):
        names[new] = world.protocol.images[old]
    cameras = np.empty_like(world.protocol.image_cameras)
    cameras[perm] = world.protocol.image_cameras
    queries = []
    for t in world.protocol.queries:
        order = rng.permutation(len(t.gallery))
        queries.append(
            QueryTask(t.image, t.box, t.pid, t.camera, perm[t.gallery[order]], t.gt_boxes[order])
        )
    world.protocol = SearchProtocol("shuffled", tuple(names), tuple(queries), unlisted, cameras)
    rows = rng.permutation(len(world.det_image))
    world.det_image = perm[world.det_image[rows]]
    world.det_boxes, world.det_scores = world.det_boxes[rows], world.det_scores[rows]
    world.det_feats = world.det_feats[rows]
    after = run(world)
    np.testing.assert_allclose(before.ap, after.ap, rtol=0, atol=1e-12)
    assert (before.hits == after.hits).all()


@SETTINGS
@given(seed=st.integers(0, 10_000), unlisted=st.sampled_from(["none", "all"]))
def test_perfect_features_and_detections_give_perfect_scores(seed, unlisted):
    world = make_world(seed=seed, num_images=20, num_queries=6, unlisted=unlisted)
    # detections = the ground-truth boxes, features = one-hot identity (unlabelled: own index)
    ids = np.where(world.gt_pids >= 0, world.gt_pids, 1000 + np.arange(len(world.gt_pids)))
    _, codes = np.unique(ids, return_inverse=True)
    world.det_image, world.det_boxes = world.gt_image, world.gt_boxes
    world.det_scores = np.ones(len(codes), dtype=np.float32)
    world.det_feats = np.eye(codes.max() + 1, dtype=np.float32)[codes]
    pid_code = {int(p): int(c) for p, c in zip(ids, codes, strict=True)}
    world.query_feats = np.eye(codes.max() + 1, dtype=np.float32)[
        [pid_code[t.pid] for t in world.protocol.queries]
    ]
    result = run(world)
    holders = result.count_gt > 0
    assert (result.ap[holders] == 1.0).all() and result.hits[holders].all()
    assert (result.count_tp == result.count_gt).all()


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_scores_are_bounded_and_monotone_in_k(seed):
    world = make_world(seed=seed, num_images=15, num_queries=5, quantise=0.5)
    result = run(world)
    assert ((result.ap >= 0) & (result.ap <= 1)).all()
    assert (result.count_tp <= result.count_gt).all()
    assert (result.hits[:, 0] <= result.hits[:, 1]).all() and (
        result.hits[:, 1] <= result.hits[:, 2]
    ).all()


# ------------------------------------------------------- the released CUHK-SYSU protocol file

SHARED = REAL_DATA / "cuhk-sysu-protocol" / "TestG100.mat"


class _GrowingIndex(dict):
    """An image index that numbers every name it is asked about (no pool.mat needed)."""

    def __contains__(self, name) -> bool:
        return True

    def __missing__(self, name) -> int:
        self[name] = len(self)
        return self[name]


@needs_real("cuhk-sysu-protocol/TestG100.mat")
def test_released_testg100_quirks_match_reference():
    from personsearch.data.cuhk_sysu import read_test_protocol

    index = _GrowingIndex()
    tasks = read_test_protocol(SHARED, "TestG100", index)
    for t in tasks:
        index[t.image]  # noqa: B018 - number the query images too
    names = tuple(sorted(index, key=index.get))
    duplicated = [i for i, t in enumerate(tasks) if len(set(t.gallery.tolist())) < len(t.gallery)]
    own = [i for i, t in enumerate(tasks) if index[t.image] in set(t.gallery.tolist())]
    assert (len(tasks), len(duplicated), len(own)) == (2900, 4, 2)

    # random results: a detection near every listed person box, plus random ones, 32-dim features
    rng = np.random.default_rng(0)
    boxes, det_image = [], []
    for t in tasks:
        for g, gt in zip(t.gallery, t.gt_boxes, strict=True):
            if not np.isnan(gt[0]):
                wh = np.r_[gt[2:] - gt[:2], gt[2:] - gt[:2]]
                boxes.append(gt + rng.normal(0, 0.08, 4) * wh)
                det_image.append(g)
    for g in range(len(names)):
        for _ in range(3):
            x, y = rng.uniform(0, 500, 2)
            boxes.append([x, y, x + 50, y + 120])
            det_image.append(g)
    feats = rng.standard_normal((len(boxes), 32)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query_feats = rng.standard_normal((len(tasks), 32)).astype(np.float32)
    query_feats /= np.linalg.norm(query_feats, axis=1, keepdims=True)
    flat = (
        np.array(det_image),
        np.array(boxes, dtype=np.float32),
        rng.uniform(0.3, 1, len(boxes)).astype(np.float32),
        feats,
    )
    protocol = SearchProtocol("cuhk-sysu/TestG100", names, tuple(tasks))
    gallery = GalleryDetections.from_flat(*flat, len(names))
    checked = sorted(set(duplicated + own + list(range(0, 2900, 97))))
    results = {}
    for duplicates in ("original", "first"):
        result = evaluate_search(protocol, gallery, query_feats, duplicates=duplicates)
        reference = reference_search(
            protocol, *flat, query_feats, duplicates=duplicates, queries=checked
        )
        np.testing.assert_allclose(result.ap[checked], [r[0] for r in reference], rtol=0, atol=1e-9)
        assert (result.hits[checked] == np.array([r[1] for r in reference])).all()
        results[duplicates] = result
    # the two conventions differ only on the queries listing an image twice
    differs = np.flatnonzero(results["original"].ap != results["first"].ap)
    assert set(differs) <= set(duplicated)


PRW_MINI = REAL_DATA / "prw-mini"


@needs_real("prw-mini")
@pytest.mark.parametrize("cross_camera", [False, True])
def test_prw_protocol_from_the_reader(cross_camera):
    from personsearch.data.registry import load_scene_dataset, load_search_protocol

    protocol = load_search_protocol("prw", PRW_MINI, cross_camera=cross_camera)
    scenes = {s.name: s for s in load_scene_dataset("prw", PRW_MINI).test}
    rng = np.random.default_rng(1)
    det_image, boxes, pids = [], [], []
    for g, name in enumerate(protocol.images):
        for box, pid in zip(scenes[name].boxes, scenes[name].pids, strict=True):
            det_image.append(g)
            boxes.append(box + rng.normal(0, 2, 4))
            pids.append(pid)
    ids = {p: i for i, p in enumerate(sorted(set(pids) | {t.pid for t in protocol.queries}))}
    centres = rng.standard_normal((len(ids), 16))
    feats = centres[[ids[p] for p in pids]] + 0.9 * rng.standard_normal((len(pids), 16))
    query_feats = centres[[ids[t.pid] for t in protocol.queries]]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query_feats /= np.linalg.norm(query_feats, axis=1, keepdims=True)
    flat = (
        np.array(det_image),
        np.array(boxes, dtype=np.float32),
        np.full(len(boxes), 0.9, dtype=np.float32),
        feats.astype(np.float32),
    )
    gallery = GalleryDetections.from_flat(*flat, len(protocol.images))
    result = evaluate_search(protocol, gallery, query_feats.astype(np.float32))
    assert_matches_reference(result, reference_search(protocol, *flat, query_feats))
    assert result.mAP > 0.3
