"""`personsearch check-data` through the CLI: statistics on good folders, one-line errors on bad."""

from __future__ import annotations

import numpy as np
import scipy.io
from cuhk_fixture import DEFAULT_IMAGES, write_cuhk_sysu
from market_fixture import write_market1501
from real_data import REAL_DATA, needs_real

from personsearch.cli import main
from personsearch.data import validation

PRW_MINI = REAL_DATA / "prw-mini"
needs_prw_mini = needs_real("prw-mini")


def _run(capsys, *argv):
    code = main(["check-data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@needs_prw_mini
def test_prw_mini_statistics(capsys):
    code, out, err = _run(capsys, "--dataset", "prw", "--root", PRW_MINI)
    assert code == 0, err
    assert "train: 4 images, 10 boxes (9 labelled), 3 identities" in out
    assert "test: 12 images, 51 boxes (46 labelled), 16 identities" in out
    assert "box height 93-683 px, width 28-319 px" in out
    assert "protocol prw: 11 queries" in out and "protocol prw/cross-camera: 11 queries" in out
    assert "images: 16 read, every box inside its image (sizes 1920 x 1080 px)" in out
    assert out.rstrip().endswith("OK")
    # with one camera pair only, some queries have no cross-camera target: a warning, not an error
    assert "warning: protocol prw/cross-camera: 6 queries have no gallery image" in err


def test_fake_cuhk_sysu_statistics_and_no_images(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "CUHK-SYSU")
    code, out, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    assert code == 0, err
    assert "train: 4 images, 7 boxes (4 labelled), 2 identities" in out
    assert "protocol cuhk-sysu/TestG50: 2 queries, 3 listed images per query" in out
    assert "protocol cuhk-sysu/full: 2 queries" in out
    assert "Train.mat: 2 identities, the same as the training images' labels" in out
    assert "images: 8 read" in out and "warning" not in err

    (fake.root / "Image" / "SSM" / "s2.jpg").unlink()
    code, out, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root, "--no-images")
    _assert_one_line_error(code, err, "image not found:", "s2.jpg")


def test_protocol_inconsistency_is_a_warning(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c", gallery_sizes=(50, 100))  # both required
    path = fake.root / "annotation" / "test" / "train_test" / "TestG100.mat"
    protocol = scipy.io.loadmat(path)["TestG100"]
    protocol[0, 0]["Query"][0, 0]["idlocate"] = np.array([[80, 10, 20, 60]], dtype=np.uint8)
    scipy.io.savemat(path, {"TestG100": protocol})
    code, out, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    assert code == 0
    assert (
        "warning: protocol cuhk-sysu/TestG100: query 1 (person 10 in s5.jpg): the image has "
        "no box of that person there" in err
    )


def test_wrong_root(tmp_path, capsys):
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", tmp_path)
    _assert_one_line_error(
        code, err, "annotation/Images.mat not found under", "the unpacked CUHK-SYSU folder"
    )
    code, _, err = _run(capsys, "--dataset", "prw", "--root", tmp_path / "missing")
    _assert_one_line_error(code, err, "is not a folder", "PRW folder")


def test_corrupt_image_is_named(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c")
    (fake.root / "Image" / "SSM" / "s3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (fake.root / "Image" / "SSM" / "s6.jpg").write_bytes(b"")
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    _assert_one_line_error(code, err, "cannot read image header", "s3.jpg", "(and 1 more problems)")


def test_box_outside_the_image(tmp_path, capsys):
    images = dict(DEFAULT_IMAGES)
    images["s4.jpg"] = [(None, (40, 20, 30, 90)), (None, (140, 20, 60, 90))]  # x2 200 > 160
    fake = write_cuhk_sysu(tmp_path / "c", images=images)
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    _assert_one_line_error(
        code, err, "s4.jpg: box 2 [x1 y1 x2 y2 = 140 20 200 110] extends outside the 160x120 image"
    )
    # annotations alone are fine: the image size is only known from the image
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root, "--no-images")
    assert code == 0, err


def test_small_overhang_is_tolerated(tmp_path, capsys):
    images = dict(DEFAULT_IMAGES)
    images["s4.jpg"] = [(None, (140, 20, 25, 90))]  # 5 px past the right border
    fake = write_cuhk_sysu(tmp_path / "c", images=images)
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    assert code == 0, err


def test_truncated_annotation(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c", write_images=False)
    path = fake.root / "annotation" / "Person.mat"
    path.write_bytes(path.read_bytes()[:100])
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root, "--no-images")
    _assert_one_line_error(code, err, "Person.mat (truncated or not a .mat file?)")


def test_missing_protocols(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c", gallery_sizes=(), write_images=False)
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root, "--no-images")
    _assert_one_line_error(code, err, "no protocol file (TestG50.mat ... TestG4000.mat) found")


def test_market1501(tmp_path, capsys):
    root = write_market1501(tmp_path / "m")
    code, out, err = _run(capsys, "--dataset", "market1501", "--root", root)
    assert code == 0, err
    assert "train: 3 crops, 2 identities, cameras [1, 2, 3]" in out
    assert "gallery: 4 crops, 2 identities, cameras [1, 2, 6], 1 distractors" in out
    assert "images: 9 read (sizes 64 x 128 px)" in out
    (root / "query" / "0007_c1s1_001234_01.jpg").write_bytes(b"broken")
    code, _, err = _run(capsys, "--dataset", "market1501", "--root", root)
    _assert_one_line_error(code, err, "0007_c1s1_001234_01.jpg")


def test_progress_bar_for_many_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(validation, "PROGRESS_MIN_IMAGES", 1)
    fake = write_cuhk_sysu(tmp_path / "c")
    code, _, err = _run(capsys, "--dataset", "cuhk-sysu", "--root", fake.root)
    assert code == 0 and "checking images" in err


def test_the_checked_datasets_are_the_registry_s():
    from personsearch.data.registry import CLASSIFY_DATASETS, CROP_DATASETS, SCENE_DATASETS

    assert set(validation.DATASETS) == set(SCENE_DATASETS + CROP_DATASETS + CLASSIFY_DATASETS)


def test_the_report_without_printing(tmp_path):
    fake = write_cuhk_sysu(tmp_path / "c")
    report = validation.check_dataset("cuhk-sysu", fake.root)
    assert report.lines[0] == f"cuhk-sysu at {fake.root}"
    assert "  train: 4 images, 7 boxes (4 labelled), 2 identities" in report.lines
    assert report.lines[-1].startswith("  images: 8 read") and report.warnings == []
