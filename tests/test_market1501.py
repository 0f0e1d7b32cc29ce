"""Market-1501 reader on a tiny folder with the release's naming."""

from __future__ import annotations

import pytest
from market_fixture import write_market1501

from personsearch.data.market1501 import load_market1501, parse_crop_name
from personsearch.data.registry import load_crop_dataset
from personsearch.errors import ConfigError, DatasetError


def test_splits_junk_and_distractors(tmp_path):
    root = write_market1501(tmp_path / "Market-1501-v15.09.15")
    dataset = load_market1501(root)
    assert dataset.name == "market1501" and dataset.root == root
    # junk (-1) dropped everywhere; sorted by file name
    assert [(c.pid, c.camera) for c in dataset.train] == [(2, 1), (2, 2), (7, 3)]
    assert [(c.pid, c.camera) for c in dataset.query] == [(2, 3), (7, 1)]
    # the distractor (pid 0) stays in the gallery as a negative
    assert [(c.pid, c.camera) for c in dataset.gallery] == [(0, 1), (2, 2), (7, 1), (7, 6)]
    assert dataset.gallery[0].path == root / "bounding_box_test" / "0000_c1s1_000151_01.jpg"
    assert len(load_crop_dataset("market1501", root).gallery) == 4
    with pytest.raises(ConfigError, match="unknown dataset 'market'"):
        load_crop_dataset("market", root)


def test_name_parsing(tmp_path):
    crop = parse_crop_name(tmp_path / "1501_c6s4_001877_03.jpg")
    assert (crop.pid, crop.camera) == (1501, 6)
    assert parse_crop_name(tmp_path / "-1_c2s1_000026_01.jpg").pid == -1
    for bad in ("0002_c1_000451_03.jpg", "p0002_c1s1_000451_03.jpg", "0002_c1s1_000451_03.png"):
        with pytest.raises(DatasetError, match=f"{bad}: file name is not of the form PPPP_cCsS"):
            parse_crop_name(tmp_path / bad)


def test_bad_folders(tmp_path):
    root = write_market1501(tmp_path / "m")
    (root / "query" / "query_0001.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="query_0001.jpg: file name is not of the form"):
        load_market1501(root)
    with pytest.raises(
        DatasetError,
        match=r"bounding_box_train not found under .*: is .* the "
        r"unpacked Market-1501 folder.*use that as the root",
    ):
        load_market1501(tmp_path)
    empty = write_market1501(
        tmp_path / "e",
        {
            "bounding_box_train": [],
            "query": ["0002_c3s1_000551_01.jpg"],
            "bounding_box_test": ["0002_c2s1_000801_02.jpg"],
        },
    )
    with pytest.raises(DatasetError, match="bounding_box_train holds no .jpg crops"):
        load_market1501(empty)
