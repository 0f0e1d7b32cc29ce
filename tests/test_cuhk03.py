"""CUHK03 (new protocol): the reader on the torchreid layout, the cuhk-03.mat conversion, and the
commands (check-data, prepare-cuhk03, train reid with the shipped config, evaluate-reid)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cuhk03_fixture import (
    IDENTITIES,
    crop_names,
    write_cuhk03,
    write_protocol,
    write_release_mat,
)
from PIL import Image

from personsearch.cli import build_parser, main
from personsearch.commands.evaluate_reid import _config
from personsearch.data.cuhk03 import load_cuhk03, protocol_report, write_cuhk03_images
from personsearch.data.registry import load_crop_dataset
from personsearch.errors import ConfigError, DatasetError


@pytest.fixture
def root(tmp_path):
    return write_cuhk03(tmp_path / "cuhk03")


def test_splits_follow_the_protocol_file(root):
    dataset = load_cuhk03(root, "labeled")
    assert dataset.name == "cuhk03-labeled" and dataset.root == root
    train_ids = {label for _, _, label, split in IDENTITIES if split == "train"}
    assert {c.pid for c in dataset.train} == train_ids and len(dataset.train) == 12
    # one query per test identity and view, the other crop of each view in the gallery
    assert sorted((c.pid, c.camera) for c in dataset.query) == [(4, 1), (4, 2), (5, 1), (5, 2)]
    assert [c.path.name for c in dataset.query][:2] == ["2_002_1_01.png", "2_002_2_06.png"]
    assert all(c.path.parent == root / "images_labeled" for c in dataset.gallery)
    detected = load_crop_dataset("cuhk03", root, variant="detected")
    assert detected.name == "cuhk03-detected"
    assert detected.query[0].path == root / "images_detected" / "2_002_1_01.png"
    assert load_crop_dataset("cuhk03", root).name == "cuhk03-labeled"  # the default variant
    lines, problems = protocol_report(dataset, "labeled")
    assert "3 training / 2 test identities (the release: 767 / 700)" in lines[0]
    assert "camera pairs in the file names: [1, 2]" in lines[0]
    assert problems == [
        "not the release's new protocol: train 12 images (release 7368), "
        "query 4 images (release 1400), gallery 4 images (release 5328)"
    ]


def test_bad_variant_and_missing_files(root, tmp_path):
    with pytest.raises(ConfigError, match="CUHK03 variant 'label': choose labeled or detected"):
        load_cuhk03(root, "label")
    with pytest.raises(ConfigError, match="variant applies to cuhk03"):
        load_crop_dataset("market1501", root, variant="labeled")
    # the protocol file missing, the folder one level too high
    with pytest.raises(
        DatasetError,
        match=r"cuhk03_new_protocol_config_labeled.mat not found "
        r"under .*use that as the root",
    ):
        load_cuhk03(tmp_path)
    # an image folder missing: the message says how to make it
    (root / "images_detected" / "1_001_1_01.png").unlink()
    with pytest.raises(
        DatasetError,
        match=r"images_detected/1_001_1_01.png not found: "
        r"cuhk03_new_protocol_config_detected.mat lists 1 files",
    ):
        load_cuhk03(root, "detected")
    for path in (root / "images_detected").iterdir():
        path.unlink()
    (root / "images_detected").rmdir()
    with pytest.raises(
        DatasetError,
        match=r"images_detected not found.*cuhk-03.mat there and "
        "run prepare-cuhk03",
    ):
        load_cuhk03(root, "detected")
    (root / "cuhk03_release").mkdir()
    (root / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"")
    with pytest.raises(
        DatasetError,
        match=r"write them once from .*cuhk-03.mat with "
        r"`personsearch prepare-cuhk03 --root ",
    ):
        load_cuhk03(root, "detected")


def _protocol(root, **changes):
    files = [name for pair, pid, _, _ in IDENTITIES for name, _ in crop_names(pair, pid)]
    values = {
        "files": files,
        "labels": [1] * len(files),
        "cams": [1, 2, 1, 2] * len(IDENTITIES),
        "train": [1, 2],
        "query": [3],
        "gallery": [4, 5],
    }
    extra = changes.pop("extra", {})
    values.update(changes)
    write_protocol(root / "cuhk03_new_protocol_config_labeled.mat", **values, **extra)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"query": [3, 21]},
            r"query_idx\[2\] = 21 is out of range: indices are 1-based into "
            r"filelist, 1..20 \(1 such indices\)",
        ),
        ({"gallery": [0, 4]}, r"gallery_idx\[1\] = 0 is out of range"),
        ({"train": [1.5]}, r"train_idx\[1\] = 1.5 is not an integer"),
        ({"train": []}, "train_idx is empty"),
        ({"labels": [1] * 19}, "labels has 19 entries but filelist has 20"),
        ({"labels": [0] * 20}, r"labels\[1\] = 0 for 1_001_1_01.png: identities must be >= 1"),
        ({"files": ["../x.png"] * 20}, r"filelist\[1\] = '../x.png' is not a plain file name"),
    ],
)
def test_malformed_protocol_files(root, changes, message):
    _protocol(root, **changes)
    with pytest.raises(DatasetError, match=message):
        load_cuhk03(root)


def test_protocol_file_without_a_variable_or_damaged(root):
    from scipy.io import savemat

    path = root / "cuhk03_new_protocol_config_labeled.mat"
    savemat(path, {"filelist": np.array([["1_001_1_01.png"]], dtype=object)})
    with pytest.raises(
        DatasetError,
        match=r"holds no variable 'labels' \(variables found: "
        "'filelist'\\)",
    ):
        load_cuhk03(root)
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DatasetError, match="truncated or not a .mat file"):
        load_cuhk03(root)


def test_report_flags_a_protocol_that_trains_on_test_identities(root):
    files = [name for pair, pid, _, _ in IDENTITIES for name, _ in crop_names(pair, pid)]
    # identity 1 trained on and queried
    _protocol(
        root, labels=[1] * 4 + [2] * 16, cams=[1, 2, 1, 2] * 5, train=[1], query=[2], gallery=[2, 5]
    )
    dataset = load_cuhk03(root)
    _, problems = protocol_report(dataset)
    assert "1 identities are both trained on and tested, e.g. 1" in problems
    assert "1 images are both queries and gallery crops, e.g. 1_001_1_02.png" in problems
    assert f"1 files' names give another view than camId, e.g. {files[1]} with camId 2" in problems


# ---------------------------------------------------------------------------------------------
# cuhk-03.mat (MATLAB v7.3, HDF5) -> PNG folders


def test_conversion_writes_the_release_images(tmp_path):
    pytest.importorskip("h5py")
    mat = tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat"
    images = write_release_mat(mat)
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    counts = write_cuhk03_images(mat, tmp_path / "cuhk03")
    assert counts == {"labeled": 11, "detected": 11}
    folder = tmp_path / "cuhk03" / "images_labeled"
    names = sorted(p.name for p in folder.iterdir())
    assert names[:5] == [
        "1_001_1_01.png",
        "1_001_1_02.png",
        "1_001_2_06.png",
        "1_001_2_07.png",
        "1_001_2_08.png",
    ]
    assert "1_002_2_10.png" in names and "2_001_1_03.png" in names and len(names) == 11
    # pixels back in H x W x 3 order, exactly
    expected = images["labeled"][1][0][4]  # pair 2, identity 1, column 5
    with Image.open(folder / "2_001_1_05.png") as image:
        assert image.size == (7, 12)
        np.testing.assert_array_equal(np.asarray(image), expected)
    # a second run keeps what is there
    stamp = (folder / "1_001_1_01.png").stat().st_mtime_ns
    assert write_cuhk03_images(mat, tmp_path / "cuhk03", ["labeled"]) == {"labeled": 11}
    assert (folder / "1_001_1_01.png").stat().st_mtime_ns == stamp


def test_conversion_errors(tmp_path):
    pytest.importorskip("h5py")
    mat = tmp_path / "cuhk-03.mat"
    with pytest.raises(DatasetError, match="cuhk-03.mat not found: expected the release's"):
        write_cuhk03_images(mat, tmp_path)
    write_release_mat(mat, variants=("labeled",))
    with pytest.raises(DatasetError, match=r"holds no 'detected' cell \(variables: labeled\)"):
        write_cuhk03_images(mat, tmp_path, ["detected"])
    bad = {"labeled": [[[np.zeros((5, 4), dtype=np.uint8)] + [None] * 9]]}
    write_release_mat(mat, images=bad)
    with pytest.raises(
        DatasetError,
        match=r"labeled, camera pair 1, identity 1, image 1: "
        r"expected a 3 x W x H uint8 image, found uint8 of shape \(4, 5\)",
    ):
        write_cuhk03_images(mat, tmp_path, ["labeled"])
    write_release_mat(mat, images={"labeled": [[[None] * 10]]})
    with pytest.raises(DatasetError, match="camera pair 1, identity 1: no image in any column"):
        write_cuhk03_images(mat, tmp_path, ["labeled"])
    mat.write_bytes(mat.read_bytes()[:700])
    with pytest.raises(DatasetError, match="not an HDF5 .MATLAB v7.3. file, or truncated"):
        write_cuhk03_images(mat, tmp_path)


# ---------------------------------------------------------------------------------------------
# the commands


def test_check_data_prints_counts_per_variant(root, capsys):
    assert main(["check-data", "--dataset", "cuhk03", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"cuhk03-labeled at {root}"
    assert "  train: 12 crops, 3 identities, cameras [1, 2]" in lines
    assert "  query: 4 crops, 2 identities, cameras [1, 2]" in lines
    assert "  gallery: 4 crops, 2 identities, cameras [1, 2]" in lines
    assert any("3 training / 2 test identities" in line for line in lines)
    assert "  images: 20 read (sizes 24 x 48 px)" in lines and lines[-1] == "OK"
    assert "warning: cuhk03-labeled: not the release's new protocol" in captured.err
    assert (
        main(
            [
                "check-data",
                "--dataset",
                "cuhk03",
                "--root",
                str(root),
                "--variant",
                "detected",
                "--no-images",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"cuhk03-detected at {root}")
    # a damaged crop is named
    (root / "images_detected" / "1_001_2_06.png").write_bytes(b"not a png")
    assert (
        main(["check-data", "--dataset", "cuhk03", "--root", str(root), "--variant", "detected"])
        == 1
    )
    assert "1_001_2_06.png" in capsys.readouterr().err
    assert (
        main(
            ["check-data", "--dataset", "market1501", "--root", str(root), "--variant", "detected"]
        )
        == 1
    )
    assert "a variant applies to cuhk03 only" in capsys.readouterr().err


def test_prepare_cuhk03_then_the_reader(tmp_path, capsys):
    pytest.importorskip("h5py")
    root = tmp_path / "cuhk03"
    write_release_mat(root / "cuhk03_release" / "cuhk-03.mat")
    assert main(["prepare-cuhk03", "--root", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{root / 'images_labeled'}: 11 images" in out
    assert f"{root / 'images_detected'}: 11 images" in out
    # the protocol files list the converted names
    names = sorted(p.name for p in (root / "images_labeled").iterdir())
    write_protocol(
        root / "cuhk03_new_protocol_config_labeled.mat",
        names,
        [1] * 5 + [2] * 6,
        [int(n.split("_")[2]) for n in names],
        [1, 2, 3, 4, 5],
        [6, 10],
        [7, 8, 9, 11],
    )
    dataset = load_cuhk03(root)
    assert len(dataset.train) == 5 and {c.pid for c in dataset.query} == {2}
    assert main(["prepare-cuhk03", "--root", str(tmp_path / "none")]) == 1
    assert "cuhk-03.mat not found" in capsys.readouterr().err


#: the shipped config, shrunk to seconds on a CPU (the network stays CLSA on ResNet-50)
SMOKE = [
    "data.crop_height=32",
    "data.crop_width=16",
    "model.pretrained=false",
    "model.feature_dim=16",
    "optim.batch_size=4",
    "optim.epochs=1",
    "optim.milestones=[1]",
    "run.workers=0",
    "run.progress=false",
    "run.log_period=1",
    "run.eval_batch_size=8",
]


def test_smoke_run_of_the_shipped_config(root, tmp_path, capsys):
    """`train reid --config cuhk03-reid` on the tiny folder, then evaluate-reid per variant."""
    run = tmp_path / "run"
    args = [
        "train",
        "reid",
        "--config",
        "cuhk03-reid",
        "--out",
        str(run),
        f"data.root={root}",
        *SMOKE,
    ]
    assert main(args) == 0
    assert "final evaluation: mAP=" in capsys.readouterr().out
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert 0 <= final["mAP"] <= 1 and final["valid_queries"] == 4
    assert "variant: labeled" in (run / "config.yaml").read_text()
    assert main(["evaluate-reid", "--run", str(run), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"re-id on cuhk03 labeled ({root}): 4 queries, 4 gallery crops")
    labeled = json.loads((run / "eval-reid-cuhk03-labeled.json").read_text())
    assert labeled["mAP"] == pytest.approx(final["mAP"]) and labeled["variant"] == "labeled"
    assert (
        main(
            [
                "evaluate-reid",
                "--run",
                str(run),
                "--workers",
                "0",
                "--variant",
                "detected",
                "--json",
            ]
        )
        == 0
    )
    detected = json.loads(capsys.readouterr().out)
    assert detected["variant"] == "detected" and detected["queries"] == 4
    assert (run / "eval-reid-cuhk03-detected.json").is_file()
    # a CUHK03 run scored on another dataset drops the variant
    parser = build_parser()
    other = _config(
        parser.parse_args(
            ["evaluate-reid", "--run", str(run), "--dataset", "market1501", "--root", str(tmp_path)]
        )
    )
    assert (other.data.dataset, other.data.variant) == ("market1501", "")
    assert (
        main(
            [
                "train",
                "reid",
                "--config",
                "cuhk03-reid",
                "--out",
                str(tmp_path / "r2"),
                f"data.root={root}",
                "data.variant=detect",
                *SMOKE,
            ]
        )
        == 1
    )
    assert (
        "data.variant='detect': CUHK03's variants are labeled and detected"
        in capsys.readouterr().err
    )


def test_the_variant_is_part_of_a_run_s_fingerprint():
    from personsearch.config import load_config

    labeled = load_config("cuhk03-reid").fingerprint()
    assert load_config("cuhk03-reid", ["data.variant="]).fingerprint() == labeled
    assert load_config("cuhk03-reid", ["data.variant=detected"]).fingerprint() != labeled
    market = load_config("market1501-reid")
    assert market.fingerprint() == load_config("market1501-reid", ["data.variant="]).fingerprint()
