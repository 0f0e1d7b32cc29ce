"""CUHK-SYSU reader: the real TestG100.mat protocol file, and a fake release built in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from cuhk_fixture import (
    DEFAULT_IMAGES,
    DEFAULT_POOL,
    REAL_TESTG100,
    write_cuhk_sysu,
    write_real_testg100_root,
)
from real_data import skip_reason

from personsearch.data.cuhk_sysu import (
    available_gallery_sizes,
    load_cuhk_sysu,
    load_cuhk_sysu_protocol,
    parse_gallery_size,
    read_train_identities,
)
from personsearch.data.registry import load_scene_dataset, load_search_protocol
from personsearch.data.scenes import UNLABELED
from personsearch.errors import ConfigError, DatasetError

# ---------------------------------------------------------------------------------------------
# the real protocol file


@pytest.fixture(scope="module")
def real_protocol(tmp_path_factory):
    """TestG100 read through the reader (see cuhk_fixture.write_real_testg100_root)."""
    if not REAL_TESTG100.is_file():
        pytest.skip(skip_reason("cuhk-sysu-protocol/TestG100.mat"))
    return load_cuhk_sysu_protocol(
        write_real_testg100_root(tmp_path_factory.mktemp("cuhk-real")), 100
    )


def test_real_testg100_structure(real_protocol):
    protocol = real_protocol
    assert protocol.name == "cuhk-sysu/TestG100" and protocol.unlisted == "none"
    assert len(protocol.images) == 6978 and len(protocol.queries) == 2900
    assert all(len(q.gallery) == 100 for q in protocol.queries)
    first = protocol.queries[0]
    assert (first.image, first.pid, first.camera) == ("s15538.jpg", 10581, -1)
    np.testing.assert_array_equal(first.box, [488, 90, 576, 340])
    assert protocol.images[first.gallery[0]] == "s15535.jpg"
    np.testing.assert_array_equal(first.gt_boxes[0], [430, 121, 523, 387])
    holders = [q.holds_person for q in protocol.queries]
    # entries that hold the person come first, then only empty (NaN) rows
    assert all(not h[h.sum() :].any() and h[: h.sum()].all() for h in holders)
    assert sum(int(h.sum()) for h in holders) == 5447
    assert min(h.sum() for h in holders) == 1 and max(h.sum() for h in holders) == 13
    assert all(
        q.box.dtype == np.float32 and (q.box[2:] > q.box[:2]).all() for q in protocol.queries
    )


def test_real_testg100_quirks_are_kept_as_listed(real_protocol):
    protocol = real_protocol
    index = protocol.image_index()
    duplicated = [
        k for k, q in enumerate(protocol.queries) if len(np.unique(q.gallery)) < len(q.gallery)
    ]
    assert duplicated == [1250, 1633, 1997, 2561]
    query = protocol.queries[1633]
    twice = np.flatnonzero(query.gallery == index["s11888.jpg"])
    np.testing.assert_array_equal(twice, [0, 2])  # once with each of two different boxes
    np.testing.assert_array_equal(
        query.gt_boxes[twice], [[140, 429, 160, 484], [100, 435, 120, 489]]
    )
    same_box = protocol.queries[1250]
    np.testing.assert_array_equal(same_box.gt_boxes[0], same_box.gt_boxes[1])

    own = [k for k, q in enumerate(protocol.queries) if index[q.image] in q.gallery]
    assert own == [493, 2132]
    assert [protocol.queries[k].image for k in own] == ["s14430.jpg", "s888.jpg"]
    listed_own = protocol.queries[2132]
    position = int(np.flatnonzero(listed_own.gallery == index["s888.jpg"])[0])
    assert position == 2
    np.testing.assert_array_equal(listed_own.gt_boxes[position], listed_own.box)


# ---------------------------------------------------------------------------------------------
# a fake release with the real structures


@pytest.fixture
def fake(tmp_path):
    return write_cuhk_sysu(tmp_path / "CUHK-SYSU", write_images=False)


def test_scenes_splits_boxes_and_identities(fake):
    dataset = load_cuhk_sysu(fake.root)
    assert [s.name for s in dataset.train] == ["s1.jpg", "s2.jpg", "s3.jpg", "s4.jpg"]
    assert [s.name for s in dataset.test] == list(DEFAULT_POOL)
    assert dataset.test[0].path == fake.root / "Image" / "SSM" / "s5.jpg"
    s1 = dataset.train[0]
    # the zero-width box is dropped; x y w h became x1 y1 x2 y2
    np.testing.assert_array_equal(s1.boxes, [[10, 10, 40, 90], [60, 20, 85, 90]])
    assert s1.pids.tolist() == [1, UNLABELED] and s1.boxes.dtype == np.float32
    assert dataset.train[1].pids.tolist() == [1, 2]
    assert dataset.test[1].pids.tolist() == [10, 11]
    assert dataset.identities("train").tolist() == [1, 2]
    assert dataset.identities("test").tolist() == [10, 11]
    assert all(s.camera == -1 and s.size is None for s in dataset.train + dataset.test)
    assert [pid for pid, _ in read_train_identities(fake.root)] == [1, 2]


def test_column_struct_arrays_read_the_same(tmp_path, fake):
    column = write_cuhk_sysu(tmp_path / "column", column_structs=True, write_images=False)
    rows, cols = load_cuhk_sysu(fake.root), load_cuhk_sysu(column.root)
    for a, b in zip(rows.train + rows.test, cols.train + cols.test, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.pids, b.pids)


def test_protocol_galleries_stored_as_cells_of_structs(fake):
    path = fake.root / "annotation" / "test" / "train_test" / "TestG50.mat"
    protocol = scipy.io.loadmat(path)["TestG50"]
    expected = load_cuhk_sysu_protocol(fake.root, 50)
    for record in protocol.reshape(-1):
        gallery = record["Gallery"]
        cell = np.empty((gallery.size, 1), dtype=object)
        for j in range(gallery.size):
            cell[j, 0] = gallery[:, j : j + 1]
        record["Gallery"] = cell
    scipy.io.savemat(path, {"TestG50": protocol.T})  # a column of records, too
    for a, b in zip(expected.queries, load_cuhk_sysu_protocol(fake.root, 50).queries, strict=True):
        np.testing.assert_array_equal(a.gallery, b.gallery)
        np.testing.assert_array_equal(a.gt_boxes, b.gt_boxes)
        np.testing.assert_array_equal(a.box, b.box)


def test_labels_tolerate_a_one_pixel_difference(tmp_path):
    images = dict(DEFAULT_IMAGES)
    root = tmp_path / "c"
    write_cuhk_sysu(root, images=images, write_images=False)
    person = scipy.io.loadmat(root / "annotation" / "Person.mat")
    scene = person["Person"][0, 0]["scene"]
    scene[0, 0]["idlocate"] = np.array([[11.0, 10, 30, 81]])  # person 1 in s1, off by a pixel
    scipy.io.savemat(root / "annotation" / "Person.mat", {"Person": person["Person"]})
    assert load_cuhk_sysu(root).train[0].pids.tolist() == [1, UNLABELED]


def test_protocols_listed_and_full(fake):
    g50 = load_cuhk_sysu_protocol(fake.root, 50)
    assert g50.name == "cuhk-sysu/TestG50" and g50.images == DEFAULT_POOL
    first = g50.queries[0]
    assert (first.image, first.pid) == ("s5.jpg", 10)
    assert first.gallery.tolist() == [1, 2, 3]  # s6, s7 hold the person; s8 does not
    np.testing.assert_array_equal(first.gt_boxes[:2], [[50, 12, 81, 100], [20, 15, 49, 106]])
    assert np.isnan(first.gt_boxes[2]).all() and first.holds_person.tolist() == [True, True, False]
    full = load_cuhk_sysu_protocol(fake.root, "full")
    assert full.name == "cuhk-sysu/full" and full.unlisted == "all"
    for a, b in zip(g50.queries, full.queries, strict=True):
        np.testing.assert_array_equal(a.gallery, b.gallery)
    assert available_gallery_sizes(fake.root) == [50, 100, "full"]
    via_registry = load_search_protocol("cuhk-sysu", fake.root, gallery_size="100")
    assert via_registry.name == "cuhk-sysu/TestG100"
    assert len(load_scene_dataset("cuhk-sysu", fake.root).test) == 4


def test_gallery_size_must_be_known(fake):
    assert parse_gallery_size("FULL") == "full" and parse_gallery_size("500") == 500
    for bad in (75, "75", "all", True):
        with pytest.raises(ConfigError, match="gallery size must be one of 50, 100"):
            parse_gallery_size(bad)
    with pytest.raises(DatasetError, match="TestG500.mat not found under"):
        load_cuhk_sysu_protocol(fake.root, 500)
    with pytest.raises(ConfigError, match="PRW only"):
        load_search_protocol("cuhk-sysu", fake.root, cross_camera=True)
    with pytest.raises(ConfigError, match="unknown dataset 'cuhk'"):
        load_scene_dataset("cuhk", fake.root)


# ---------------------------------------------------------------------------------------------
# bad input


def test_wrong_root_says_what_it_should_hold(fake):
    with pytest.raises(
        DatasetError,
        match=r"annotation/Images.mat not found under .*: is .* the "
        r"unpacked CUHK-SYSU folder .*use that as the root",
    ):
        load_cuhk_sysu(fake.root.parent)


def test_missing_truncated_and_wrong_key_files_are_named(fake):
    annotation = fake.root / "annotation"
    (annotation / "Person.mat").unlink()
    with pytest.raises(DatasetError, match="annotation/Person.mat not found under"):
        load_cuhk_sysu(fake.root)
    images = annotation / "Images.mat"
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"Images.mat \(truncated or not a \.mat file\?\)"):
        load_cuhk_sysu(fake.root)
    scipy.io.savemat(annotation / "pool.mat", {"test_images": np.zeros(3)})
    with pytest.raises(DatasetError, match=r"pool.mat holds no variable 'pool'"):
        load_cuhk_sysu_protocol(fake.root, 50)


def test_inconsistent_annotations_are_errors(tmp_path):
    root = tmp_path / "c"
    write_cuhk_sysu(root, write_images=False)
    person_path = root / "annotation" / "Person.mat"
    person = scipy.io.loadmat(person_path)["Person"]
    person[0, 0]["scene"][0, 0]["idlocate"] = np.array([[120.0, 60, 30, 50]])
    scipy.io.savemat(person_path, {"Person": person})
    with pytest.raises(
        DatasetError,
        match=r"Person.mat: box \[120, 60, 30, 50\] of person p00001 "
        r"in s1.jpg matches no box of Images.mat",
    ):
        load_cuhk_sysu(root)

    person[0, 0]["scene"][0, 0]["idlocate"] = np.array([[10.0, 10, 30]])
    scipy.io.savemat(person_path, {"Person": person})
    with pytest.raises(
        DatasetError,
        match=r"Person\(1\).scene\(1\).idlocate: expected a box "
        r"\[x y w h\], found 3 numbers",
    ):
        load_cuhk_sysu(root)

    person[0, 0]["idname"] = np.array(["person1"])
    scipy.io.savemat(person_path, {"Person": person})
    with pytest.raises(DatasetError, match="'person1' is not of the form pNNNNN"):
        load_cuhk_sysu(root)

    pool = np.empty((1, 1), dtype=object)
    pool[0, 0] = "s99.jpg"
    scipy.io.savemat(root / "annotation" / "pool.mat", {"pool": pool})
    with pytest.raises(
        DatasetError, match="pool.mat lists 1 images that .*Images.mat does not hold, e.g. s99.jpg"
    ):
        load_cuhk_sysu(root)
    with pytest.raises(
        DatasetError,
        match=r"TestG50\(1\).Gallery lists s6.jpg, which pool.mat "
        "does not hold",
    ):
        load_cuhk_sysu_protocol(root, 50)
