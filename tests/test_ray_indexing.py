"""Indexing with Ray Data on a local 2-worker Ray instance: the merged index equals the
single-machine one (rows, boxes, features, FAISS index, search results), shards come from both
workers, corrupt images are recorded as failed, and an IVF index is merged with FAISS. Tests
that need Ray skip cleanly without it; the refusals below run everywhere."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from search_scenes import make_gallery

from personsearch.cli import main
from personsearch.errors import PersonSearchError
from personsearch.search.detectors import GroundTruthBoxes
from personsearch.search.embedders import ColorHistogramEmbedder
from personsearch.search.index import GalleryIndex
from personsearch.search.ray_indexing import SHARDS_DIR, _probe, index_with_ray, pipeline_of
from personsearch.search.searcher import PersonSearcher
from personsearch.search.store import CACHE_DIR


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """30 scenes (~90 persons: enough for a 2-list IVF) and one corrupt image."""
    folder = tmp_path_factory.mktemp("gallery")
    images = make_gallery(folder, n_images=30, seed=3)
    (folder / "broken.png").write_bytes(b"this is not a png")
    detector = GroundTruthBoxes.from_files({image.path: image.boxes for image in images})
    return folder, detector


def single_machine(folder: Path, out: Path, detector, kind: str = "flat") -> GalleryIndex:
    with PersonSearcher.open(out, detector, ColorHistogramEmbedder(), index_kind=kind) as searcher:
        searcher.index_folder(folder, progress=False)
        searcher.index.prepare()
    return GalleryIndex.open(out)


def two_workers(folder: Path, out: Path, detector, kind: str):
    """Index the gallery with 2 Ray workers, 8 images a shard."""
    return index_with_ray(
        folder,
        out,
        pipeline=pipeline_of(detector, ColorHistogramEmbedder()),
        num_workers=2,
        index_kind=kind,
        shard_images=8,
        progress=False,
    )


def assert_same_index(
    merged_index: GalleryIndex, single_index: GalleryIndex, detector: str = "ground-truth"
) -> None:
    merged, single = merged_index.store, single_index.store
    assert merged.rows() == single.rows()  # same images, boxes and scores, in the same row order
    np.testing.assert_allclose(merged.vectors(), single.vectors(), atol=1e-5)
    assert merged.known_images() == single.known_images()
    assert merged.failed_images() == single.failed_images()
    assert merged.fingerprint == single.fingerprint and merged.meta["detector"] == detector


def test_flat_merge_equals_single_machine_and_uses_both_workers(tmp_path, ray_local, gallery):
    folder, detector = gallery
    out = tmp_path / "ray.index"
    report = index_with_ray(
        folder,
        out,
        pipeline=pipeline_of(detector, ColorHistogramEmbedder()),
        num_workers=2,
        shard_images=2,
        progress=False,
    )
    assert report.shards == 16 and len(report.workers) == 2  # both workers made shards
    assert report.added == 30 and report.found == 31
    assert [Path(path).name for path, _ in report.failed] == ["broken.png"]
    assert "cannot" in report.failed[0][1]
    assert "merged from 16 shards" in report.faiss
    assert not (out / SHARDS_DIR).exists()
    # the merged FAISS index is the cached one: nothing is rebuilt on the first search
    assert [p.name for p in (out / CACHE_DIR).iterdir()] == [f"flat-{report.boxes}.faiss"]

    merged = GalleryIndex.open(out)
    single = single_machine(folder, tmp_path / "single.index", detector)
    assert_same_index(merged, single)
    queries = single.store.vectors()[::7]
    assert merged.search(queries, 5) == single.search(queries, 5)


def test_ivf_is_trained_once_and_merged_from_worker_parts(tmp_path, ray_local, gallery):
    import faiss

    folder, detector = gallery
    out = tmp_path / "ray.index"
    report = two_workers(folder, out, detector, "ivf")
    assert report.shards == 4 and "ivf, merged" in report.faiss
    merged = GalleryIndex.open(out)
    single = single_machine(folder, tmp_path / "single.index", detector, kind="ivf")
    assert_same_index(merged, single)
    # same coarse quantizer and inverted lists, byte for byte, as the single-machine build
    (merged_file,) = (out / CACHE_DIR).iterdir()
    (single_file,) = (tmp_path / "single.index" / CACHE_DIR).iterdir()
    merged_ivf = faiss.read_index(str(merged_file))
    assert merged_ivf.nlist == 2 and merged_ivf.ntotal == report.boxes
    assert merged_file.read_bytes() == single_file.read_bytes()
    queries = single.store.vectors()
    assert merged.search(queries, 5, nprobe=1) == single.search(queries, 5, nprobe=1)


def test_cli_with_ray_workers_adds_to_an_index_and_equals_cli_without(
    tmp_path, ray_local, gallery, capsys
):
    from personsearch.search.pipeline import write_pipeline_spec

    # a torch model in every worker: ImageNet MobileNetV2 features of each whole image
    run = tmp_path / "pipeline"
    write_pipeline_spec(run, "whole-image", "imagenet")
    source, _ = gallery
    folder = tmp_path / "frames"
    folder.mkdir()
    names = sorted(p.name for p in source.iterdir() if p.name != "broken.png")[:16]
    for name in names[:8]:
        shutil.copy(source / name, folder)
    ray_index, plain_index = tmp_path / "ray.index", tmp_path / "plain.index"
    common = ["--gallery", str(folder), "--pipeline", str(run), "--no-progress"]
    assert main(["index", *common, "--out", str(ray_index)]) == 0  # begun on one machine
    for name in [*names[8:], "broken.png"]:  # more images arrive: Ray workers add only those
        shutil.copy(source / name, folder)
    argv = ["index", *common, "--out", str(ray_index), "--ray-workers", "2", "--shard-images", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "8 indexed (8 persons), 8 already in the index, 1 failed" in printed
    assert "3 shards from" in printed
    assert "failed: " in printed and "broken.png" in printed
    assert main(["index", *common, "--out", str(plain_index)]) == 0

    merged, plain = GalleryIndex.open(ray_index), GalleryIndex.open(plain_index)
    merged_store, plain_store = merged.store, plain.store
    assert merged_store.rows() == plain_store.rows()
    assert merged_store.known_images() == plain_store.known_images()
    np.testing.assert_allclose(merged_store.vectors(), plain_store.vectors(), atol=1e-5)
    assert merged_store.num_boxes > 0
    capsys.readouterr()
    probe = folder / names[0]
    printed = []
    for index in (ray_index, plain_index):  # the normal `personsearch search` reads both alike
        argv = ["search", "--index", str(index), "--pipeline", str(run), "--probe", str(probe)]
        assert main([*argv, "--top-k", "3"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and len(printed[0].splitlines()) == 4


def test_refusals_need_no_ray(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PersonSearchError, match="gallery folder not found"):
        index_with_ray(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(PersonSearchError, match="no images or videos under"):
        index_with_ray(empty, tmp_path / "out")
    make_gallery(tmp_path / "g", n_images=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(PersonSearchError, match=r"pip install 'personsearch\[ray\]'"):
        index_with_ray(tmp_path / "g", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before Ray is known to be there
    argv = ["index", "--gallery", str(tmp_path / "g"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--ray-address", "localhost:6379"]) == 1
    assert "--ray-address needs --ray-workers" in capsys.readouterr().err
    with pytest.raises(PersonSearchError, match="no Ray cluster answers at 127.0.0.1:1"):
        _probe("127.0.0.1:1")  # fails fast where Ray itself would retry for minutes


def test_a_failing_worker_stops_the_job_with_its_error(tmp_path, ray_local, gallery):
    folder, detector = gallery
    embedder = ColorHistogramEmbedder()
    embedder.dim = 7  # a broken model: it cannot make the 7-d features it claims
    with pytest.raises(PersonSearchError, match=r"a Ray worker failed: ValueError: cannot reshape"):
        index_with_ray(
            folder, tmp_path / "out", pipeline=pipeline_of(detector, embedder), progress=False
        )
    with GalleryIndex.open(tmp_path / "out") as index:  # nothing half-merged
        assert index.store.num_boxes == 0 and not (tmp_path / "out" / SHARDS_DIR).exists()


def test_a_failed_first_ray_run_leaves_no_index_folder(
    tmp_path, ray_local, gallery, monkeypatch, capsys
):
    import personsearch.search.ray_indexing as ray_indexing

    def fail(*args, **kwargs):
        raise PersonSearchError("a Ray worker failed: injected")

    monkeypatch.setattr(ray_indexing, "_index_shards", fail)
    out = tmp_path / "out"
    argv = [
        "index",
        "--gallery",
        str(gallery[0]),
        "--out",
        str(out),
        "--ray-workers",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 1
    assert "injected" in capsys.readouterr().err
    assert not out.exists()  # created by this run, empty: removed, as without Ray


def test_ivfpq_is_built_by_the_driver_and_searches_like_single_machine(
    tmp_path, ray_local, gallery
):
    folder, detector = gallery
    out = tmp_path / "ray.index"
    report = two_workers(folder, out, detector, "ivfpq")
    assert report.shards == 4 and report.faiss == "ivfpq, built by the driver"
    merged = GalleryIndex.open(out)
    single = single_machine(folder, tmp_path / "single.index", detector, kind="ivfpq")
    assert_same_index(merged, single)
    queries = single.store.vectors()[::5]
    assert merged.search(queries, 5) == single.search(queries, 5)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A folder of 3 cameras' videos (people walking through), 4 still scenes and a file named
    .mp4 that is not a video."""
    pytest.importorskip("av")
    from personsearch.data.synthetic_video import VideoWorldSettings, generate_video_world

    settings = VideoWorldSettings(
        cameras=3, identities=3, duration_s=6, fps=5, width=320, height=180, visit_s=(2.0, 4.0)
    )
    world = generate_video_world(tmp_path_factory.mktemp("world") / "w", settings)
    folder = tmp_path_factory.mktemp("footage")
    for video in sorted((world / "videos").glob("*.mp4")):
        shutil.copy(video, folder / video.name)
    make_gallery(folder / "stills", n_images=4, seed=5)
    (folder / "notes.mp4").write_bytes(b"not a video at all")
    return folder


def _video_rows(index: GalleryIndex) -> list[tuple]:
    query = (
        "SELECT i.path, b.x1, b.y1, b.x2, b.y2, b.det_score, b.frame, b.time_s, b.track "
        "FROM boxes b JOIN images i ON i.id = b.image_id ORDER BY b.id"
    )
    return index.store._conn.execute(query).fetchall()


def test_videos_are_one_shard_each_and_merge_into_the_single_machine_index(
    tmp_path, ray_local, footage
):
    from personsearch.search.detectors import WholeImageDetector
    from personsearch.search.video_indexing import VideoSampling

    detector, sampling = WholeImageDetector(), VideoSampling(3.0)
    with PersonSearcher.open(tmp_path / "single", detector, ColorHistogramEmbedder()) as searcher:
        expected = searcher.index_folder(footage, progress=False, sampling=sampling)
        searcher.index.prepare()
    report = index_with_ray(
        footage,
        tmp_path / "merged",
        pipeline=pipeline_of(detector, ColorHistogramEmbedder()),
        num_workers=2,
        shard_images=8,
        progress=False,
        sampling=sampling,
    )
    # one shard of the 4 stills, one per video file (the broken one fails in its worker)
    assert report.shards == 1 + 4 and (report.found, report.videos) == (8, 4)
    assert (report.added, report.boxes, report.frames) == (
        expected.added,
        expected.boxes,
        expected.frames,
    )
    assert report.frames == 3 * 18  # 6 s at 3 fps, three cameras
    assert [Path(p).name for p, _ in report.failed] == ["notes.mp4"]
    with (
        GalleryIndex.open(tmp_path / "merged") as merged,
        GalleryIndex.open(tmp_path / "single") as single,
    ):
        assert_same_index(merged, single, detector="whole-image")
        assert _video_rows(merged) == _video_rows(single)  # frames, times and track ids too
        assert merged.store.video_progress() == single.store.video_progress()
        assert merged.store.num_videos == 3
        queries = single.store.vectors()[::5]
        assert merged.search(queries, 8) == single.search(queries, 8)


def test_a_video_left_part_way_by_a_single_machine_run_is_resumed_by_the_driver(
    tmp_path, ray_local, footage
):
    from personsearch.search.detectors import WholeImageDetector
    from personsearch.search.video_indexing import VideoSampling

    class DiesAt:
        fingerprint = WholeImageDetector.fingerprint

        def __init__(self, frames: int) -> None:
            self.left = frames

        def detect(self, image):  # type: ignore[no-untyped-def]
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt  # a kill inside the video
            return WholeImageDetector().detect(image)

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(footage / "cam0.mp4", one / "cam0.mp4")
    index = tmp_path / "i"
    every = VideoSampling(None)  # 30 frames: the first chunk of 16 is committed before the kill
    with (
        PersonSearcher.open(index, DiesAt(20), ColorHistogramEmbedder()) as searcher,
        pytest.raises(KeyboardInterrupt),
    ):
        searcher.index_folder(one, progress=False, sampling=every)
    report = index_with_ray(
        one,
        index,
        pipeline=pipeline_of(WholeImageDetector(), ColorHistogramEmbedder()),
        num_workers=2,
        progress=False,
    )
    # no shard: the driver resumes it (with the sampling it was started with) after frame 15
    assert report.shards == 0 and len(report.resumed) == 1 and report.frames == 30 - 16
    with PersonSearcher.open(
        tmp_path / "whole", WholeImageDetector(), ColorHistogramEmbedder()
    ) as searcher:
        searcher.index_folder(one, progress=False, sampling=every)
    with GalleryIndex.open(index) as resumed, GalleryIndex.open(tmp_path / "whole") as whole:
        assert _video_rows(resumed) == _video_rows(whole)
