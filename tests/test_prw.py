"""PRW reader on the real prw-mini sample, and on damaged copies of its annotations."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.io
from real_data import REAL_DATA, needs_real

from personsearch.data.prw import camera_of, load_prw, load_prw_protocol, read_id_list
from personsearch.data.registry import load_scene_dataset, load_search_protocol
from personsearch.data.scenes import UNLABELED
from personsearch.errors import DatasetError

PRW_MINI = REAL_DATA / "prw-mini"
pytestmark = needs_real("prw-mini")


@pytest.fixture(scope="module")
def dataset():
    return load_prw(PRW_MINI)


@pytest.fixture
def copy(tmp_path):
    """prw-mini's annotations with an empty frames/ folder (loading never opens frames)."""
    root = tmp_path / "PRW"
    root.mkdir()
    for item in PRW_MINI.iterdir():
        if item.is_file():
            shutil.copy(item, root / item.name)
    shutil.copytree(PRW_MINI / "annotations", root / "annotations")
    (root / "frames").mkdir()
    return root


def test_frames_boxes_and_identities(dataset):
    assert (len(dataset.train), len(dataset.test)) == (4, 12)
    scenes = dataset.train + dataset.test
    assert sum(len(s.boxes) for s in scenes) == 61
    assert sum(int(s.labeled.sum()) for s in scenes) == 55
    assert all(7 in s.pids for s in scenes)
    assert dataset.train[0].name == "c1s1_009376.jpg"
    assert dataset.train[0].path == PRW_MINI / "frames" / "c1s1_009376.jpg"
    assert {s.camera for s in scenes} == {1, 3}
    first = dataset.test[0]  # c1s1_001051: rows [-2 62 472 68 147], ..., [7 1222 433 152 315]
    np.testing.assert_array_equal(first.boxes[0], [62, 472, 130, 619])
    assert first.pids[0] == UNLABELED
    np.testing.assert_array_equal(first.boxes[first.pids == 7], [[1222, 433, 1374, 748]])
    heights = np.concatenate([s.boxes[:, 3] - s.boxes[:, 1] for s in scenes])
    assert (heights.min(), heights.max()) == (93, 683)
    id7 = np.concatenate([s.boxes[s.pids == 7] for s in scenes])
    assert (id7[:, 3] - id7[:, 1]).min() == 159 and (id7[:, 3] - id7[:, 1]).max() == 425
    assert dataset.identities("train").tolist() == read_id_list(PRW_MINI, "train").tolist()
    assert dataset.identities("test").tolist() == read_id_list(PRW_MINI, "test").tolist()


def test_fallback_annotation_keys(dataset):
    by_name = {s.name: s for s in dataset.test}
    assert len(by_name["c1s1_002376.jpg"].boxes) == 4  # anno_file
    assert len(by_name["c3s1_000551.jpg"].boxes) == 3  # anno_previous


def test_protocol_default_and_cross_camera(dataset):
    protocol = load_prw_protocol(PRW_MINI)
    assert protocol.name == "prw" and protocol.unlisted == "all"
    assert protocol.images == tuple(s.name for s in dataset.test)
    assert protocol.image_cameras.tolist() == [s.camera for s in dataset.test]
    assert len(protocol.queries) == 11
    query = protocol.queries[0]  # "1 1002 419 51 175 c1s1_001051"
    assert (query.pid, query.image, query.camera) == (1, "c1s1_001051.jpg", 1)
    np.testing.assert_array_equal(query.box, [1002, 419, 1053, 594])
    index = protocol.image_index()
    for q in protocol.queries:
        assert index[q.image] not in q.gallery and q.holds_person.all()
        for j, box in zip(q.gallery, q.gt_boxes, strict=True):
            scene = dataset.test[j]
            np.testing.assert_array_equal(box, scene.boxes[scene.pids == q.pid][0])
        holders = {i for i, s in enumerate(dataset.test) if q.pid in s.pids} - {index[q.image]}
        assert set(q.gallery.tolist()) == holders
    id7 = protocol.queries[2]
    assert id7.pid == 7 and len(id7.gallery) == 11

    cross = load_search_protocol("prw", PRW_MINI, cross_camera=True)
    assert cross.name == "prw/cross-camera" and cross.unlisted == "other-cameras"
    for q, q_all in zip(cross.queries, protocol.queries, strict=True):
        assert all(cross.image_cameras[j] != q.camera for j in q.gallery)
        assert set(q.gallery) == {j for j in q_all.gallery if protocol.image_cameras[j] != q.camera}
    assert [len(q.gallery) for q in cross.queries][:3] == [0, 0, 3]  # ids 1, 4: one camera
    assert len(load_scene_dataset("prw", PRW_MINI).test) == 12


def test_camera_from_name():
    assert camera_of("c3s1_000551.jpg") == 3 and camera_of("c6s2_012345") == 6
    with pytest.raises(DatasetError, match="does not start with c<camera>"):
        camera_of("frame_0001.jpg")


def test_lf_line_endings_and_negative_corners(copy):
    (copy / "query_info.txt").write_text("7 -4 433 152 315 c1s1_001051\n\n", encoding="utf-8")
    scipy.io.savemat(
        copy / "annotations" / "c1s1_001051.jpg.mat",
        {"box_new": np.array([[7.0, -4, 433, 152, 315], [-2, 10, -6, 40, 100]])},
    )
    protocol = load_prw_protocol(copy)
    np.testing.assert_array_equal(protocol.queries[0].box, [0, 433, 152, 748])
    scene = load_prw(copy).test[0]
    # x, y, w, h are clipped at 0 before conversion, as the field's evaluation code does
    np.testing.assert_array_equal(scene.boxes, [[0, 433, 152, 748], [10, 0, 50, 100]])


def test_wrong_root_and_missing_files(copy):
    with pytest.raises(
        DatasetError,
        match=r"frame_train.mat not found under .*: is .* the "
        "unpacked PRW folder",
    ):
        load_prw(copy / "annotations")
    (copy / "annotations" / "c1s1_002401.jpg.mat").unlink()
    with pytest.raises(DatasetError, match="not found: .*c1s1_002401.jpg.mat"):
        load_prw(copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"boxes": np.ones((2, 5))},
            r"holds no variable 'box_new' or 'anno_file' or 'anno_previous'",
        ),
        ({"box_new": np.ones((2, 4))}, r"expected an N x 5 matrix, found shape \(2, 4\)"),
        ({"box_new": np.array([[-3.0, 1, 1, 5, 5]])}, r"row 1 has identity -3"),
        (
            {"box_new": np.array([[1.0, 1, 1, 5, 5], [2, 1, 1, 0, 5]])},
            r"row 2 .* non-positive size",
        ),
        ({"box_new": np.array([[1.0, -50, 1, 20, 5]])}, r"row 1 lies entirely left of or above"),
        ({"box_new": "abc"}, r"expected a numeric matrix"),
    ],
)
def test_malformed_annotation_files(copy, content, message):
    path = copy / "annotations" / "c1s1_002401.jpg.mat"
    scipy.io.savemat(path, content)
    with pytest.raises(DatasetError, match=f"c1s1_002401.jpg.mat.*{message}"):
        load_prw(copy)


def test_truncated_annotation_file(copy):
    path = copy / "annotations" / "c1s1_002401.jpg.mat"
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DatasetError, match=r"c1s1_002401.jpg.mat \(truncated"):
        load_prw(copy)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("7 1222 433 152 c1s1_001051", r"line 2: expected 'pid x y w h frame', found 5 fields"),
        ("7 1222 433 1x2 315 c1s1_001051", r"line 2: could not convert"),
        ("7 1222 433 0 315 c1s1_001051", r"line 2: query box has non-positive size"),
        ("7 1222 433 152 315 c1s1_009376", r"line 2: query frame c1s1_009376 is not a test frame"),
    ],
)
def test_malformed_queries(copy, line, message):
    (copy / "query_info.txt").write_bytes(f"1 1002 419 51 175 c1s1_001051\r\n{line}\r\n".encode())
    with pytest.raises(DatasetError, match=f"query_info.txt, {message}"):
        load_prw_protocol(copy)


def test_frame_in_both_splits(copy):
    frames = np.empty((1, 1), dtype=object)
    frames[0, 0] = "c1s1_001051"
    scipy.io.savemat(copy / "frame_train.mat", {"img_index_train": frames})
    with pytest.raises(DatasetError, match="c1s1_001051 is in both frame_train.mat and"):
        load_prw(copy)
