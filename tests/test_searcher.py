"""The end-to-end searcher on synthetic scenes: planted person found, incremental and resumable
indexing equal to one-go indexing, corrupt images skipped, bad probe boxes refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from search_scenes import SceneImage, make_gallery, make_probe

from personsearch.errors import PersonSearchError
from personsearch.search.detectors import GroundTruthBoxes, WholeImageDetector, pixel_digest
from personsearch.search.embedders import ColorHistogramEmbedder
from personsearch.search.index import GalleryIndex, GalleryIndexError
from personsearch.search.searcher import PersonSearcher, validate_box


class CountingEmbedder(ColorHistogramEmbedder):
    """Colour histograms that count crops, and fail on purpose after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.crops = 0
        self.fail_after = fail_after

    def embed_crops(self, crops):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash in the embedder")
        self.calls += 1
        self.crops += len(crops)
        return super().embed_crops(crops)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[SceneImage]]:
    folder = tmp_path_factory.mktemp("gallery")
    return folder, make_gallery(folder, n_images=12, seed=0)


@pytest.fixture(scope="module")
def detector(gallery) -> GroundTruthBoxes:
    return GroundTruthBoxes.from_files({image.path: image.boxes for image in gallery[1]})


def content(index_dir: Path) -> dict[tuple[str, tuple], np.ndarray]:
    """{(image file name, box): feature} of an index: what must match between two builds."""
    with GalleryIndex.open(index_dir) as index:
        vectors = index.store.vectors()
        return {
            (Path(path).name, box): vectors[row]
            for row, (path, box, _) in enumerate(index.store.rows())
        }


def assert_same_content(a: Path, b: Path) -> None:
    left, right = content(a), content(b)
    assert left.keys() == right.keys()
    for key, vector in left.items():
        np.testing.assert_array_equal(vector, right[key])


def build(index_dir: Path, folder: Path, detector, embedder=None, **kwargs) -> PersonSearcher:
    searcher = PersonSearcher.open(
        index_dir, detector, embedder or ColorHistogramEmbedder(), **kwargs
    )
    searcher.index_folder(folder, progress=False)
    return searcher


def test_planted_person_ranks_first(tmp_path, gallery, detector):
    folder, images = gallery
    probe_box = make_probe(tmp_path / "probe.png")
    planted = {
        (str(im.path.resolve()), tuple(im.boxes[im.planted].tolist()))
        for im in images
        if im.planted is not None
    }
    with build(tmp_path / "idx", folder, detector) as searcher:
        assert searcher.index.store.num_boxes == sum(len(im.boxes) for im in images)
        hits = searcher.search(tmp_path / "probe.png", box=probe_box, top_k=10)
    assert len(planted) == 4 and len(hits) == 10
    assert {(h.image_path, h.box) for h in hits[:4]} == planted
    assert hits[3].similarity > hits[4].similarity + 0.3
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    assert hits[0].det_score == 1.0 and hits[0].camera in (1, 2)  # from c<camera>s1_ names


def test_probe_in_the_gallery_excludes_its_own_image(tmp_path, gallery, detector):
    folder, images = gallery
    probe = next(im for im in images if im.planted is not None)
    with build(tmp_path / "idx", folder, detector) as searcher:
        box = probe.boxes[probe.planted]
        hits = searcher.search(probe.path, box=box, top_k=3)
        assert all(h.image_path != str(probe.path.resolve()) for h in hits)
        with_own = searcher.search(probe.path, box=box, top_k=1, exclude_probe_image=False)
        assert with_own[0].image_path == str(probe.path.resolve())
        assert with_own[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_probe_as_a_crop_without_box(tmp_path, gallery, detector):
    folder, _ = gallery
    probe_box = make_probe(tmp_path / "probe.png")
    x1, y1, x2, y2 = probe_box.astype(int)
    from PIL import Image

    Image.open(tmp_path / "probe.png").crop((x1, y1, x2, y2)).save(tmp_path / "crop.png")
    with build(tmp_path / "idx", folder, detector) as searcher:
        with_box = searcher.search(tmp_path / "probe.png", box=probe_box, top_k=4)
        as_crop = searcher.search(tmp_path / "crop.png", top_k=4)
    assert [h.row for h in as_crop] == [h.row for h in with_box]


def test_incremental_add_embeds_only_new_images_and_equals_one_go(tmp_path, gallery, detector):
    folder, images = gallery
    build(tmp_path / "one-go", folder, detector).close()

    growing = tmp_path / "growing"
    growing.mkdir()
    for image in images[:6]:
        shutil.copy(image.path, growing)
    embedder = CountingEmbedder()
    build(tmp_path / "incremental", growing, detector, embedder).close()
    first_crops = embedder.crops
    assert first_crops == sum(len(im.boxes) for im in images[:6])
    for image in images[6:]:
        shutil.copy(image.path, growing)
    searcher = build(tmp_path / "incremental", growing, detector, embedder)
    report = searcher.index_folder(growing, progress=False)  # a third run finds nothing new
    searcher.close()
    assert embedder.crops - first_crops == sum(len(im.boxes) for im in images[6:])
    assert report.skipped == 12 and report.added == 0
    assert_same_content(tmp_path / "one-go", tmp_path / "incremental")


def test_crash_mid_indexing_then_resume_equals_one_go(tmp_path, gallery, detector):
    folder, images = gallery
    build(tmp_path / "one-go", folder, detector).close()

    crashing = CountingEmbedder(fail_after=2)
    searcher = PersonSearcher.open(tmp_path / "resumed", detector, crashing, batch_images=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        searcher.index_folder(folder, progress=False)
    searcher.close()  # what the death of a crashed process does to its lock
    with GalleryIndex.open(tmp_path / "resumed") as partial:
        assert partial.store.num_images == 6  # two committed batches of three images
        committed_boxes = partial.store.num_boxes
    embedder = CountingEmbedder()
    build(tmp_path / "resumed", folder, detector, embedder, batch_images=3).close()
    assert embedder.crops == sum(len(im.boxes) for im in images) - committed_boxes
    assert_same_content(tmp_path / "one-go", tmp_path / "resumed")


KILLED_INDEXER = textwrap.dedent(
    """
    import json, time
    from pathlib import Path
    from personsearch.search.detectors import GroundTruthBoxes
    from personsearch.search.embedders import ColorHistogramEmbedder
    from personsearch.search.searcher import PersonSearcher

    class Slow(ColorHistogramEmbedder):
        def embed_crops(self, crops):
            time.sleep(0.15)
            return super().embed_crops(crops)

    boxes = json.loads(Path({boxes!r}).read_text())
    detector = GroundTruthBoxes.from_files(boxes)
    searcher = PersonSearcher.open({index!r}, detector, Slow(), batch_images=1)
    searcher.index_folder({folder!r}, progress=False)
    print("finished", flush=True)
    """
)


def test_killed_indexer_resumes_to_the_same_index(tmp_path, gallery, detector):
    folder, images = gallery
    build(tmp_path / "one-go", folder, detector).close()
    index_dir = tmp_path / "killed"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({str(im.path): im.boxes.tolist() for im in images}))
    script = KILLED_INDEXER.format(boxes=str(boxes), folder=str(folder), index=str(index_dir))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        committed = 0
        while committed < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            db = index_dir / "index.sqlite"
            if db.exists():
                with sqlite3.connect(db) as conn:
                    try:
                        committed = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                    except sqlite3.OperationalError:  # tables not created yet
                        committed = 0
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the indexer finished before it was killed"
    with GalleryIndex.open(index_dir) as partial:
        assert 3 <= partial.store.num_images < 12
    build(index_dir, folder, detector).close()
    assert_same_content(tmp_path / "one-go", index_dir)


def test_corrupt_image_is_reported_and_skipped(tmp_path, gallery, detector):
    folder, images = gallery
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (mixed / "notes.txt").write_text("not an image, not even looked at")
    truncated = mixed / "truncated.png"
    truncated.write_bytes(images[0].path.read_bytes()[:200])
    with PersonSearcher.open(tmp_path / "idx", detector, ColorHistogramEmbedder()) as searcher:
        report = searcher.index_folder(mixed, progress=False)
        assert report.found == 14 and report.added == 12
        assert sorted(Path(p).name for p, _ in report.failed) == ["broken.jpg", "truncated.png"]
        assert all("cannot decode image" in error for _, error in report.failed)
        assert searcher.index.store.num_boxes == sum(len(im.boxes) for im in images)
        assert len(searcher.index.store.failed_images()) == 2
        again = searcher.index_folder(mixed, progress=False)  # failures are retried, still fail
        assert again.added == 0 and again.skipped == 12 and len(again.failed) == 2


@pytest.mark.parametrize(
    "box, message",
    [
        ((200, 10, 260, 100), "outside"),
        ((-30, -30, -5, -5), "outside"),
        ((10, 10, 10, 50), "no positive size"),
        ((50, 60, 40, 100), "no positive size"),
        ((1, 2, 3), "4 finite numbers"),
        ((0, 0, float("nan"), 5), "4 finite numbers"),
    ],
)
def test_bad_probe_box_is_refused(tmp_path, gallery, detector, box, message):
    folder, _ = gallery
    make_probe(tmp_path / "probe.png")  # 240 x 180
    with (
        build(tmp_path / "idx", folder, detector) as searcher,
        pytest.raises(PersonSearchError, match=message),
    ):
        searcher.search(tmp_path / "probe.png", box=box)


def test_validate_box_tolerates_rounding_and_clips():
    np.testing.assert_array_equal(validate_box((-0.5, 0, 240.6, 180), 240, 180), [0, 0, 240, 180])
    with pytest.raises(PersonSearchError, match=r"240 x 180 pixels.*0 <= x1 < x2 <= 240"):
        validate_box((0, 0, 250, 100), 240, 180)


def test_another_embedder_or_detector_is_refused(tmp_path, gallery, detector):
    folder, _ = gallery
    build(tmp_path / "idx", folder, detector).close()

    class OtherEmbedder(ColorHistogramEmbedder):
        fingerprint = "reid-resnet50-abc123"

    with pytest.raises(GalleryIndexError, match="'color-hist-v1'.*'reid-resnet50-abc123'"):
        PersonSearcher.open(tmp_path / "idx", detector, OtherEmbedder())
    with (
        PersonSearcher.open(tmp_path / "idx", WholeImageDetector(), ColorHistogramEmbedder()) as s,
        pytest.raises(GalleryIndexError, match="detector 'ground-truth'.*'whole-image'"),
    ):
        s.index_folder(folder, progress=False)


def test_colour_histogram_embedder_properties():
    embedder = ColorHistogramEmbedder()
    rng = np.random.default_rng(0)
    crops = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(90, 30), (7, 5), (300, 120)]
    ]
    features = embedder.embed_crops(crops)
    assert features.shape == (3, embedder.dim) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    assert embedder.embed_crops([]).shape == (0, embedder.dim)
    # size-invariant: the same figure drawn at two scales matches better than another figure
    from search_scenes import draw_person

    small = draw_person(20, 60, np.random.default_rng(1), planted=True)
    large = draw_person(50, 140, np.random.default_rng(2), planted=True)
    other = draw_person(50, 140, np.random.default_rng(3), planted=False)
    a, b, c = embedder.embed_crops([small, large, other])
    assert a @ b > 0.9 > a @ c


def test_ground_truth_detector_knows_images_by_pixels(gallery, detector):
    _, images = gallery
    from personsearch.data.images import read_rgb

    boxes, scores = detector.detect(read_rgb(images[1].path))
    np.testing.assert_array_equal(boxes, images[1].boxes)
    assert scores.tolist() == [1.0] * len(boxes)
    unknown = np.zeros((10, 10, 3), np.uint8)
    assert detector.detect(unknown)[0].shape == (0, 4)
    assert pixel_digest(unknown) != pixel_digest(np.zeros((10, 10, 3), np.int16))


def test_hog_detector_when_opencv_is_installed(gallery):
    from personsearch.search.detectors import HogPeopleDetector, hog_available

    if not hog_available():
        with pytest.raises(PersonSearchError, match="needs OpenCV 4"):
            HogPeopleDetector()
        pytest.skip("OpenCV with HOGDescriptor is not installed")
    from personsearch.data.images import read_rgb

    scene = np.kron(read_rgb(gallery[1][0].path), np.ones((3, 3, 1), np.uint8))  # 720 x 540
    boxes, scores = HogPeopleDetector().detect(scene)
    assert boxes.shape == (len(scores), 4) and boxes.dtype == np.float32
    assert (boxes[:, 2:] > boxes[:, :2]).all()
