"""The synthetic person-search world: CUHK-SYSU structures, scales, protocols, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image
from real_data import REAL_DATA, skip_reason

from personsearch.cli import main
from personsearch.data import synthetic
from personsearch.data.synthetic import (
    BLURRY_HEIGHT,
    SHARP_HEIGHT,
    _degrade_person,
    capture_degradation,
    generate_world,
)
from personsearch.data.synthetic_mat import Cell, Struct, encode_fields, write_mat
from personsearch.data.synthetic_render import (
    COARSE_LOOKS,
    pattern_shades,
    render_person,
    sample_appearance,
    sample_pose,
)
from personsearch.errors import DatasetError

REAL_TESTG100 = REAL_DATA / "cuhk-sysu-protocol" / "TestG100.mat"
PROTOCOL = Path("annotation") / "test" / "train_test"


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def load(root: Path, relative: str | Path, key: str) -> np.ndarray:
    return sio.loadmat(root / relative)[key]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    stats = generate_world(root, "tiny", seed=0, workers=0)
    return root, stats


def test_layout_and_stats(world: tuple[Path, dict]) -> None:
    root, stats = world
    for relative in (
        "annotation/Images.mat",
        "annotation/pool.mat",
        "annotation/Person.mat",
        PROTOCOL / "Train.mat",
        PROTOCOL / "TestG50.mat",
        PROTOCOL / "TestG100.mat",
        "contact_sheet.png",
        "scale_histogram.png",
        "stats.json",
    ):
        assert (root / relative).is_file(), relative
    assert not (root / PROTOCOL / "TestG500.mat").exists()  # 120 test images cannot fill it
    images = sorted((root / "Image" / "SSM").glob("s*.jpg"))
    assert len(images) == stats["scenes"]["total"] == 200
    assert json.loads((root / "stats.json").read_text()) == stats
    assert stats["protocols"] == {"TestG50": 30, "TestG100": 30}
    assert not list(root.parent.glob("*.partial-*"))
    with Image.open(root / "contact_sheet.png") as sheet:
        assert sheet.width > 1000


def test_structures_match_the_real_protocol_file(world: tuple[Path, dict]) -> None:
    root, _ = world
    mine = load(root, PROTOCOL / "TestG100.mat", "TestG100")
    assert mine.shape == (1, 30)
    if not REAL_TESTG100.is_file():
        pytest.skip(skip_reason("cuhk-sysu-protocol/TestG100.mat"))
    real = sio.loadmat(REAL_TESTG100)["TestG100"]
    assert mine.dtype.names == real.dtype.names == ("Query", "Gallery")

    def signature(entry: np.void, column: int) -> list:
        return [
            (
                f,
                entry[f].dtype.kind,
                entry[f].dtype.itemsize if entry[f].dtype.kind != "U" else 0,
                entry[f].shape,
            )
            for f in entry.dtype.names
        ] + [column]

    for field, column in (("Query", 0), ("Gallery", 0), ("Gallery", -1)):
        a, b = mine[0, 0][field], real[0, 0][field]
        assert a.dtype.names == b.dtype.names
        assert signature(a[0, column], column) == signature(b[0, column], column)
    assert mine[0, 0]["Gallery"].shape == real[0, 0]["Gallery"].shape == (1, 100)


def test_boxes_are_inside_images_and_span_many_scales(world: tuple[Path, dict]) -> None:
    root, stats = world
    img = load(root, "annotation/Images.mat", "Img")
    assert img.shape == (1, 200) and img.dtype.names == ("imname", "nAppear", "box")
    heights, fractions, total = [], [], 0
    for entry in img[0]:
        name = str(entry["imname"][0])
        with Image.open(root / "Image" / "SSM" / name) as image:
            width, height = image.size
        boxes = np.concatenate([b["idlocate"] for b in entry["box"][0]]).astype(int)
        assert len(boxes) == int(entry["nAppear"][0, 0]) >= 1
        x, y, w, h = boxes.T
        assert (w > 0).all() and (h > 0).all() and (x >= 0).all() and (y >= 0).all()
        assert (x + w <= width).all() and (y + h <= height).all(), name
        heights.extend(h)
        fractions.extend(h / height)
        total += len(boxes)
    # people from 40 pixels up, log-uniform: a quarter of them at or under ~65 pixels
    assert 40 <= min(heights) < 50 and max(fractions) > 0.6
    assert np.percentile(heights, 25) < 70 < 100 < np.percentile(heights, 75) + 40
    assert total == stats["boxes"]["total"]


def test_identities_repeat_within_their_split_and_background_people_exist(world) -> None:
    root, stats = world
    pool = {str(a[0]) for a in load(root, "annotation/pool.mat", "pool").ravel()}
    persons = load(root, "annotation/Person.mat", "Person")[0]
    train = load(root, PROTOCOL / "Train.mat", "Train")
    assert train.shape == (40, 1) and len(persons) == 70
    train_names = set()
    for cell in train[:, 0]:
        record = cell[0, 0]
        scenes = [str(s["imname"][0]) for s in record[2][0]]  # the third field, as readers use it
        assert len(scenes) == len(set(scenes)) >= 2 and not set(scenes) & pool
        train_names.add(str(record["idname"][0]))
    for person in persons:
        scenes = [str(s["imname"][0]) for s in person["scene"][0]]
        assert len(scenes) == len(set(scenes)) == int(person["nAppear"][0, 0]) >= 2
        in_pool = {name in pool for name in scenes}
        assert in_pool == ({False} if str(person["idname"][0]) in train_names else {True})
    labelled = sum(int(p["nAppear"][0, 0]) for p in persons)
    assert labelled == stats["boxes"]["labelled"]
    assert stats["boxes"]["background"] > 0.3 * stats["boxes"]["total"]


def test_galleries_list_positives_first_and_never_the_query_image(world) -> None:
    root, _ = world
    pool = [str(a[0]) for a in load(root, "annotation/pool.mat", "pool").ravel()]
    where = {
        str(p["idname"][0]): {str(s["imname"][0]): s["idlocate"] for s in p["scene"][0]}
        for p in load(root, "annotation/Person.mat", "Person")[0]
    }
    g50 = load(root, PROTOCOL / "TestG50.mat", "TestG50")[0]
    for size, protocol in ((50, g50), (100, load(root, PROTOCOL / "TestG100.mat", "TestG100")[0])):
        for k, entry in enumerate(protocol):
            query = entry["Query"][0, 0]
            pid, own = str(query["idname"][0]), str(query["imname"][0])
            assert np.array_equal(query["idlocate"], where[pid][own])
            names = [str(g["imname"][0]) for g in entry["Gallery"][0]]
            holds = [g["idlocate"].size == 4 for g in entry["Gallery"][0]]
            assert len(names) == len(set(names)) == size and own not in names
            assert set(names) <= set(pool)
            positives = sum(holds)
            assert holds == [True] * positives + [False] * (size - positives)
            assert set(names[:positives]) == set(where[pid]) - {own}
            assert not set(names[positives:]) & set(where[pid])
            gallery50 = [str(g["imname"][0]) for g in g50[k]["Gallery"][0]]
            assert names[:50] == gallery50  # nested galleries, same queries


def test_small_people_lose_fine_detail() -> None:
    rng = np.random.default_rng(3)
    app = sample_appearance(rng)
    app = type(app)(
        **{
            **app.__dict__,
            "shirt_pattern": "hstripes",
            "pattern_period": 0.05,
            "jacket": None,
            "bag": "none",
            "logo": "none",
        }
    )
    pose = sample_pose(rng)
    big, small = render_person(app, pose, 300), render_person(app, pose, 30)
    assert big.height == 300 and small.height == 30 and big.mode == small.mode == "RGBA"

    def torso_stripe_energy(patch: Image.Image) -> float:
        # vertical colour changes along the torso's centre column, at a common resolution
        column = np.asarray(patch.resize((20, 100), Image.Resampling.BILINEAR), float)[
            25:45, 10, :3
        ]
        return float(np.abs(np.diff(column, axis=0)).mean())

    assert torso_stripe_energy(big) > 2 * torso_stripe_energy(small)


def test_cli_same_seed_in_parallel_is_byte_identical(world, tmp_path: Path, capsys) -> None:
    root, _ = world
    out = tmp_path / "again"
    assert (
        main(["synth", "--out", str(out), "--preset", "tiny", "--seed", "0", "--workers", "2"]) == 0
    )
    printed = capsys.readouterr().out
    assert str(out) in printed and "200" in printed and "box height" in printed
    assert file_hashes(out) == file_hashes(root)


def test_existing_folder_needs_force_and_other_seed_differs(world, tmp_path: Path, capsys) -> None:
    root, _ = world
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["synth", "--out", str(out), "--preset", "tiny", "--seed", "1", "--workers", "0"]
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no partial or old folders
    ours, theirs = file_hashes(out), file_hashes(root)
    assert ours.keys() == theirs.keys()
    differing = [name for name in ours if ours[name] != theirs[name]]
    assert "annotation/Images.mat" in differing and len(differing) > 190


def test_failed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_render_all", fail)
    with pytest.raises(RuntimeError):
        generate_world(tmp_path / "world", "tiny", seed=0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_world(tmp_path / "file", "tiny")


def test_mat_writer_round_trip(tmp_path: Path) -> None:
    fields = ("imname", "idlocate", "ishard")
    rows = [
        ("s1.jpg", np.array([[1, 2, 300, 4]], np.uint16), np.array([[1]], np.uint8)),
        encode_fields(fields, ("s22.jpg", np.zeros((1, 0)), np.zeros((1, 0)))),
    ]
    value = Cell([Struct(fields, rows), "abcde", np.array([[2.5, 3.0]])])
    write_mat(tmp_path / "mine.mat", "x", value, "MATLAB 5.0 MAT-file, test")
    loaded = sio.loadmat(tmp_path / "mine.mat")
    assert loaded["__header__"].startswith(b"MATLAB 5.0 MAT-file, test")
    x = loaded["x"]
    assert x.shape == (3, 1) and x.dtype == object
    gallery = x[0, 0]
    assert gallery.shape == (1, 2) and gallery.dtype.names == fields
    assert gallery[0, 0]["idlocate"].dtype == np.uint16 and gallery[0, 0]["idlocate"].tolist() == [
        [1, 2, 300, 4]
    ]
    assert gallery[0, 0]["ishard"].dtype == np.uint8
    assert (
        gallery[0, 1]["idlocate"].shape == (1, 0) and str(gallery[0, 1]["imname"][0]) == "s22.jpg"
    )
    assert str(x[1, 0][0]) == "abcde" and x[2, 0].tolist() == [[2.5, 3.0]]


def test_reader_round_trip(world: tuple[Path, dict]) -> None:
    cuhk = pytest.importorskip("personsearch.data.cuhk_sysu")
    root, stats = world
    dataset = cuhk.load_cuhk_sysu(root)
    assert (len(dataset.train), len(dataset.test)) == (80, 120)
    assert len(dataset.identities("train")) == stats["identities"]["train"] == 40
    assert len(dataset.identities("test")) == stats["identities"]["test"] == 30
    scenes = dataset.train + dataset.test
    assert sum(len(s.boxes) for s in scenes) == stats["boxes"]["total"]
    assert sum(int(s.labeled.sum()) for s in scenes) == stats["boxes"]["labelled"]
    for size in (50, 100):
        protocol = cuhk.load_cuhk_sysu_protocol(root, size)
        assert len(protocol.queries) == 30 and len(protocol.images) == 120
        assert all(len(q.gallery) == size and q.holds_person.any() for q in protocol.queries)


def test_coarse_colour_is_shared_and_patterns_keep_the_mean_colour() -> None:
    """Many identities share each coarse look; a pattern's two shades average to the shirt."""
    looks = [
        sample_appearance(np.random.default_rng(np.random.SeedSequence(0, spawn_key=(1, pid)))).look
        for pid in range(1, 241)
    ]
    counts = np.bincount(looks, minlength=len(COARSE_LOOKS))
    assert (counts >= 8).all()  # 240 identities: every look worn by many of them
    for seed in range(40):
        app = sample_appearance(np.random.default_rng(seed))
        dark, light = pattern_shades(app)
        mean = (np.asarray(dark, float) + np.asarray(light, float)) / 2
        # the light shade clips at 255 for white shirts: there the mean moves by up to ~50 levels,
        # less than one sighting's lighting changes it (x 0.72 to 1.2)
        assert np.abs(mean - np.asarray(app.shirt, float)).max() <= 50


def test_capture_effects_grow_as_people_get_smaller() -> None:
    assert capture_degradation(400) == capture_degradation(SHARP_HEIGHT) == 0.0
    assert capture_degradation(BLURRY_HEIGHT) == capture_degradation(20) == 1.0
    heights = np.linspace(BLURRY_HEIGHT, SHARP_HEIGHT, 8)
    assert np.all(np.diff([capture_degradation(h) for h in heights]) < 0)


def test_small_people_are_degraded_only_through_their_own_mask() -> None:
    """_degrade_person changes a small person's pixels and leaves the background untouched."""
    rng = np.random.default_rng(5)
    app = sample_appearance(rng)
    app = type(app)(**{**app.__dict__, "shirt_pattern": "vstripes", "pattern_period": 0.06})
    patch = render_person(app, sample_pose(rng), 44)
    background = Image.new("RGB", (120, 80), (90, 140, 60))
    background.paste(patch, (40, 20), patch)
    before = np.asarray(background).copy()
    _degrade_person(
        np.random.default_rng(1), background, (40, 20, 40 + patch.width, 64), patch.getchannel("A")
    )
    after = np.asarray(background)
    alpha = np.zeros(before.shape[:2], bool)
    alpha[20:64, 40 : 40 + patch.width] = np.asarray(patch.getchannel("A")) > 0
    assert np.array_equal(after[~alpha], before[~alpha])
    assert np.abs(after[alpha].astype(int) - before[alpha]).mean() > 3
