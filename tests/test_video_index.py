"""Video galleries end to end: indexing videos (resumable, failures recorded), one hit per track,
the store's video columns (and old indexes), and the server's frames and video files."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from personsearch.cli import main  # noqa: E402
from personsearch.data.synthetic_video import (  # noqa: E402
    VideoWorldSettings,
    generate_video_world,
    ground_truth_arrays,
    read_ground_truth,
)
from personsearch.search import pipeline  # noqa: E402
from personsearch.search.embedders import BandColourEmbedder  # noqa: E402
from personsearch.search.index import GalleryIndex  # noqa: E402
from personsearch.search.searcher import PersonSearcher  # noqa: E402
from personsearch.search.store.journal import CRASH_LIMIT  # noqa: E402
from personsearch.search.video_indexing import VideoSampling  # noqa: E402

SETTINGS = VideoWorldSettings(
    cameras=2, identities=3, duration_s=8, fps=5, width=320, height=180, visit_s=(2.0, 5.0)
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small world in motion: two cameras' 8 s videos at 5 fps, with per-frame truth."""
    return generate_video_world(tmp_path_factory.mktemp("world") / "w", SETTINGS)


class TruthDetector:
    """The world's true boxes of one video, frame by frame in decoding order (every frame must
    be read: the detector counts the frames it is given)."""

    fingerprint = "truth"

    def __init__(self, truth: dict[str, np.ndarray], start: int = 0, die_at: int | None = None):
        self.truth, self.frame, self.die_at = truth, start, die_at

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.frame == self.die_at:
            raise KeyboardInterrupt  # as a kill: nothing after the last commit survives
        here = self.truth["frame"] == self.frame
        self.frame += 1
        return self.truth["boxes"][here], np.full(int(here.sum()), 0.9, np.float32)


def _gallery_of(world: Path, folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(world / "videos" / name, folder / name)
    return folder


def _rows(index_dir: Path) -> list[tuple]:
    with sqlite3.connect(index_dir / "index.sqlite") as conn:
        query = "SELECT x1, y1, x2, y2, det_score, frame, time_s, track FROM boxes ORDER BY id"
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("written_by", ["this version", "version 2"])
def test_a_killed_run_resumes_inside_a_video_with_the_same_tracks_and_nothing_twice(
    world, tmp_path, written_by
):
    truth = ground_truth_arrays(read_ground_truth(world), "videos/cam0.mp4")
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4")
    every = VideoSampling(None)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with PersonSearcher.open(whole, TruthDetector(truth), BandColourEmbedder()) as searcher:
        report = searcher.index_folder(gallery, progress=False, sampling=every)
    assert (report.videos, report.added, report.frames) == (1, 1, 40)
    assert report.boxes == len(truth["frame"])

    with PersonSearcher.open(killed, TruthDetector(truth, die_at=25), BandColourEmbedder()) as s:
        with pytest.raises(KeyboardInterrupt):
            s.index_folder(gallery, progress=False, sampling=every)
        (progress,) = s.index.store.video_progress().values()
    assert (progress.last_frame, progress.frames_sampled, progress.complete) == (15, 16, False)
    assert progress.next_sample_s is not None  # so the rerun seeks to frame 15
    if written_by == "version 2":  # no sampler state: the rerun decodes from the start
        _downgrade_to_version_2(killed)
        with GalleryIndex.open(killed) as old:  # read as it is
            (old_progress,) = old.store.video_progress().values()
        assert old_progress.next_sample_s is None and old_progress.last_frame == 15
    # the rerun starts after frame 15 (its detector is told so) and asks for another sampling:
    # a video indexed part-way keeps its own
    detector = TruthDetector(truth, start=16)
    with PersonSearcher.open(killed, detector, BandColourEmbedder()) as searcher:
        report = searcher.index_folder(gallery, progress=False, sampling=VideoSampling(1.0))
        (progress,) = searcher.index.store.video_progress().values()
    assert report.resumed == [str((gallery / "cam0.mp4").resolve())]
    assert (report.frames, progress.frames_sampled, progress.complete) == (24, 40, True)
    assert _rows(killed) == _rows(whole)  # same boxes, frames, times and track ids

    # done: a third run skips it
    with PersonSearcher.open(killed, TruthDetector(truth), BandColourEmbedder()) as searcher:
        report = searcher.index_folder(gallery, progress=False)
    assert (report.added, report.skipped, report.frames) == (0, 1, 0)


def test_one_hit_per_track_is_each_tracks_best_frame_with_its_span(world, tmp_path):
    truth = ground_truth_arrays(read_ground_truth(world), "videos/cam0.mp4")
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4")
    with PersonSearcher.open(tmp_path / "i", TruthDetector(truth), BandColourEmbedder()) as s:
        s.index_folder(gallery, progress=False, sampling=VideoSampling(None))
        probe = world / "queries" / "0000.jpg"
        every = s.search(probe, top_k=1000, per_track=False)
        tracks = s.search(probe, top_k=1000)
        top2 = s.search(probe, top_k=2)
    assert len(every) == len(truth["frame"]) and all(h.is_video for h in every)
    keys = {h.track for h in every}
    assert len(tracks) == len(keys) >= 2  # one hit per track, every track
    for hit in tracks:
        own = [h for h in every if h.track == hit.track]
        assert hit.similarity == pytest.approx(max(h.similarity for h in own))
        times = [h.time_s for h in own]
        assert (hit.track_start_s, hit.track_end_s, hit.track_frames) == (
            pytest.approx(min(times)),
            pytest.approx(max(times)),
            len(own),
        )
    assert [h.row for h in top2] == [h.row for h in tracks[:2]]  # top_k counts tracks
    assert [h.similarity for h in tracks] == sorted((h.similarity for h in tracks), reverse=True)


def _write_avi(path: Path, frames: int = 60, fps: int = 10) -> Path:
    """An AVI (its header counts the frames, so a cut file is known to be cut)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for k in range(frames):
            image = np.full((120, 160, 3), (k * 4) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_bad_videos_get_one_line_each_and_a_cut_video_keeps_its_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)  # one box per frame
    gallery = tmp_path / "g"
    gallery.mkdir()
    whole = _write_avi(gallery / "whole.avi")
    data = whole.read_bytes()
    (gallery / "cut.avi").write_bytes(data[: len(data) // 2])
    (gallery / "empty.mp4").write_bytes(b"")
    (gallery / "text.mp4").write_text("this is not a video\n" * 20)
    (gallery / "audio.mkv").write_bytes(_audio_only(tmp_path / "a.mkv").read_bytes())
    index = tmp_path / "i"
    args = ["index", "--gallery", str(gallery), "--out", str(index), "--no-progress", "--json"]
    args += ["--fps", "5"]
    assert main(args) == 0
    # (capsys is not used: the summary is read back from the index, where it must be recorded)
    with GalleryIndex.open(index) as opened:
        store = opened.store
        failed = dict(store.failed_images())
        progress = {Path(k).name: v for k, v in store.video_progress().items()}
    names = {Path(k).name: v for k, v in failed.items()}
    assert set(names) == {"cut.avi", "empty.mp4", "text.mp4", "audio.mkv"}
    assert "no video stream" in names["audio.mkv"]
    assert "truncated" in names["cut.avi"] and "indexed up to frame" in names["cut.avi"]
    assert progress["whole.avi"].frames_sampled == 30 and progress["whole.avi"].error is None
    cut = progress["cut.avi"]
    assert cut.complete and 0 < cut.frames_sampled < 30  # the frames before the cut stay
    # a rerun retries the unreadable files, not the cut one (unchanged since)
    assert main(args) == 0
    with GalleryIndex.open(index) as opened:
        assert {Path(k).name: v for k, v in opened.store.video_progress().items()}["cut.avi"] == cut


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=8000)
        stream.layout = "mono"
        samples = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_video_the_process_dies_on_is_retried_then_stopped_with_its_frames(world, tmp_path):
    truth = ground_truth_arrays(read_ground_truth(world), "videos/cam0.mp4")
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4")
    key = str((gallery / "cam0.mp4").resolve())
    index = tmp_path / "i"
    dying = TruthDetector(truth, die_at=20)
    with (
        PersonSearcher.open(index, dying, BandColourEmbedder()) as s,
        pytest.raises(KeyboardInterrupt),
    ):
        s.index_folder(gallery, progress=False, sampling=VideoSampling(None))
    # a native crash leaves the journal's note behind (an exception removes it): as if the
    # process had died CRASH_LIMIT times in a row on the same chunk
    note = {"path": key, "deaths": CRASH_LIMIT - 1}
    (index / "in-progress.json").write_text(json.dumps(note))
    with PersonSearcher.open(index, TruthDetector(truth, start=16), BandColourEmbedder()) as s:
        report = s.index_folder(gallery, progress=False)
        (progress,) = s.index.store.video_progress().values()
    assert progress.complete and progress.frames_sampled == 16 and "died" in progress.error
    assert report.skipped == 1 and report.frames == 0


def test_mixed_folder_through_the_cli_json_and_every_frame(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)  # one box per frame
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4", "cam1.mp4")
    shutil.copy(world / "queries" / "0001.jpg", gallery / "still.jpg")
    index = tmp_path / "i"
    assert main(["index", "--gallery", str(gallery), "--out", str(index), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 images and 2 videos" in out and "32 video frames sampled" in out  # 2 x 8 s x 2 fps
    probe = str(world / "queries" / "0000.jpg")
    search = ["search", "--index", str(index), "--probe", probe, "--top-k", "50", "--json"]
    assert main(search) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    videos = [h for h in hits if "video" in h]
    # the whole-frame "detector" sees one person per frame: one track per video, one hit each
    assert len(videos) == 2 and {Path(h["video"]).name for h in videos} == {"cam0.mp4", "cam1.mp4"}
    for hit in videos:
        assert hit["track"] == 0 and hit["track_frames"] == 16
        assert hit["track_start_s"] == 0 and 7.0 <= hit["track_end_s"] < 8.0
        assert hit["track_start_s"] <= hit["time_s"] <= hit["track_end_s"]
    assert len([h for h in hits if "video" not in h]) == 1
    assert main([*search, "--every-frame"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len([h for h in hits if "video" in h]) == 32
    assert main(search[:-1]) == 0  # the table names the time
    assert "cam0.mp4 at 0:0" in capsys.readouterr().out


def test_a_version_1_index_is_read_as_it_is_and_upgraded_when_written(tmp_path):
    from search_scenes import make_gallery

    from personsearch.search.detectors import GroundTruthBoxes
    from personsearch.search.embedders import ColorHistogramEmbedder

    images = make_gallery(tmp_path / "scenes", n_images=4, seed=0)
    detector = GroundTruthBoxes.from_files({im.path: im.boxes for im in images})
    index = tmp_path / "i"
    embedder = ColorHistogramEmbedder()
    with PersonSearcher.open(index, detector, embedder) as searcher:
        searcher.index_paths([im.path for im in images[:2]], progress=False)
        before = searcher.search(images[3].path, box=images[3].boxes[0], top_k=5)
    _downgrade_to_version_1(index)
    with GalleryIndex.open(index) as old:
        assert old.store.meta["version"] == "1"
        assert old.store.video_progress() == {}
        hits = old.search_one(
            PersonSearcher(None, embedder, old).embed_probe(images[3].path, images[3].boxes[0]), 5
        )
    assert [(h.row, h.similarity) for h in hits] == [(h.row, h.similarity) for h in before]
    assert all(h.frame is None for h in hits)
    with PersonSearcher.open(index, detector, embedder) as searcher:
        assert searcher.index.store.meta["version"] == "3"
        report = searcher.index_paths([im.path for im in images], progress=False)
        assert (report.added, report.skipped) == (2, 2)
    rows = _rows(index)
    assert len(rows) == sum(len(im.boxes) for im in images)
    assert all(r[5:] == (None, None, None) for r in rows)


def _downgrade_to_version_2(index: Path) -> None:
    """Make an index what version 2 wrote: videos without the sampler's state."""
    with sqlite3.connect(index / "index.sqlite") as conn:
        conn.execute("ALTER TABLE videos DROP COLUMN next_sample_s")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'version'")


def _downgrade_to_version_1(index: Path) -> None:
    """Make an index what version 1 wrote: no video columns, no videos table."""
    with sqlite3.connect(index / "index.sqlite") as conn:
        conn.execute("DROP INDEX IF EXISTS boxes_track")
        for column in ("frame", "time_s", "track"):
            conn.execute(f"ALTER TABLE boxes DROP COLUMN {column}")
        conn.execute("DROP TABLE videos")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'version'")


def test_search_writes_a_page_with_video_frames(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4")
    index = tmp_path / "i"
    assert main(["index", "--gallery", str(gallery), "--out", str(index), "--no-progress"]) == 0
    page = tmp_path / "r.html"
    probe = str(world / "queries" / "0000.jpg")
    assert main(["search", "--index", str(index), "--probe", probe, "--out", str(page)]) == 0
    text = page.read_text()
    assert "cam0.mp4 at 0:" in text and "missing" not in text


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    """A server over an index of one video and one still image (one box per frame)."""
    pytest.importorskip("fastapi", reason="the web extras (fastapi) are not installed")
    pytest.importorskip("multipart", reason="the web extras (python-multipart) are not installed")
    from fastapi.testclient import TestClient
    from serve_fixture import build_video_gallery

    from personsearch.serve.app import create_app

    served = build_video_gallery(tmp_path_factory.mktemp("served"))
    with TestClient(create_app(served.index_dir), base_url="http://127.0.0.1") as client:
        images = {i["name"]: i for i in client.get("/api/images").json()["images"]}
        yield client, images, served.gallery


def test_the_server_lists_videos_and_serves_their_frames_and_boxes(video_server):
    client, images, gallery = video_server
    video, still = images["cam0.mp4"], images["still.jpg"]
    assert (video["kind"], still["kind"]) == ("video", "image")
    assert client.get("/api/stats").json()["videos"] == 1
    assert video["duration_s"] == pytest.approx(7.6) and video["persons"] == 16
    detail = client.get(f"/api/images/{video['id']}", params={"t": 3.1}).json()
    assert detail["time_s"] == pytest.approx(3.0) and len(detail["boxes"]) == 1
    frame = client.get(f"/api/images/{video['id']}/frame", params={"t": 3.0})
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    from PIL import Image

    from personsearch.data.video import read_frame_at

    shown = np.asarray(Image.open(io.BytesIO(frame.content)), dtype=np.float64)
    decoded = read_frame_at(gallery / "cam0.mp4", 3.0).image.astype(np.float64)
    assert shown.shape == decoded.shape and np.abs(shown - decoded).mean() < 3  # JPEG's loss
    small = client.get(f"/api/images/{video['id']}/frame", params={"t": 3.0, "size": 160})
    assert Image.open(io.BytesIO(small.content)).size == (160, 90)
    assert client.get(f"/api/images/{video['id']}/thumbnail").status_code == 200
    assert client.get(f"/api/images/{still['id']}/frame").status_code == 404
    assert client.get(f"/api/images/{video['id']}/frame", params={"t": "nan"}).status_code == 422
    assert client.get(f"/api/images/{video['id']}/frame", params={"t": -1}).status_code == 422


def test_the_server_plays_only_indexed_videos_with_range_requests(video_server):
    client, images, gallery = video_server
    video, still = images["cam0.mp4"], images["still.jpg"]
    data = (gallery / "cam0.mp4").read_bytes()
    whole = client.get(f"/api/images/{video['id']}/video")
    assert whole.status_code == 200 and whole.content == data
    assert (
        whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    )
    part = client.get(f"/api/images/{video['id']}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(f"/api/images/{still['id']}/video").status_code == 404
    assert client.get("/api/images/999/video").status_code == 404
    for path in ("/api/images/../../etc/passwd/video", "/api/images/cam0.mp4/video"):
        assert client.get(path).status_code in (404, 422)


def test_the_servers_search_gives_video_places_one_hit_per_track(video_server, world):
    client, images, _ = video_server
    video = images["cam0.mp4"]
    probe = (world / "queries" / "0000.jpg").read_bytes()
    files = {"file": ("p.jpg", probe, "image/jpeg")}
    result = client.post("/api/search/upload", files=files, data={"top_k": "50"}).json()
    places = [h["video"] for h in result["results"] if h["image"]["kind"] == "video"]
    assert len(places) == 1 and places[0]["track"] == 0 and places[0]["track_frames"] == 16
    assert places[0]["track_start_s"] <= places[0]["time_s"] <= places[0]["track_end_s"]
    data = {"top_k": "50", "every_frame": "true"}
    every = client.post("/api/search/upload", files=files, data=data).json()["results"]
    assert len([h for h in every if h["video"] is not None]) == 16
    # from a frame of the indexed video: its time is needed, and its own persons are left out
    body = {"image_id": video["id"], "top_k": 5}
    assert client.post("/api/search/indexed", json=body).status_code == 400
    found = client.post("/api/search/indexed", json={**body, "time_s": 2.0}).json()
    assert found["results"] and all(h["image"]["kind"] == "image" for h in found["results"])


def test_a_token_guarded_server_plays_a_video_through_a_ticket_only(world, video_server):
    from fastapi.testclient import TestClient

    from personsearch.serve.app import create_app
    from personsearch.serve.tickets import VideoTickets

    _, images, gallery = video_server
    video, still = images["cam0.mp4"], images["still.jpg"]
    index = gallery.parent / "i"  # build_video_gallery's layout
    token = {"Authorization": "Bearer a-long-enough-token"}
    app = create_app(index, token="a-long-enough-token")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get(f"/api/images/{video['id']}/video").status_code == 401
        assert client.post(f"/api/images/{video['id']}/video-ticket").status_code == 401
        ticket = client.post(f"/api/images/{video['id']}/video-ticket", headers=token).json()
        assert "token" not in ticket["url"]
        played = client.get(ticket["url"], headers={"Range": "bytes=0-9"})
        assert (
            played.status_code == 206 and played.content == (gallery / "cam0.mp4").read_bytes()[:10]
        )
        # the ticket opens that one video only, and only with its own signature
        other = ticket["url"].replace(f"/videos/{video['id']}?", f"/videos/{still['id']}?")
        assert client.get(other).status_code == 403
        forged = ticket["url"][:-4] + ("0000" if not ticket["url"].endswith("0000") else "1111")
        assert client.get(forged).status_code == 403
        assert (
            client.post(f"/api/images/{still['id']}/video-ticket", headers=token).status_code == 404
        )
    tickets = VideoTickets(ttl_s=10)
    url, expires = tickets.issue(5, now=1000.0)
    sig = url.rsplit("sig=", 1)[1]
    assert tickets.valid(5, expires, sig, now=1005.0)
    assert not tickets.valid(5, expires, sig, now=1011.0)  # expired
    assert not tickets.valid(6, expires, sig, now=1005.0)
    assert not VideoTickets().valid(5, expires, sig, now=1005.0)  # another server's secret


def test_the_real_crowd_video_through_index_and_search(real_data, tmp_path, capsys):
    """The real 1280 x 720 crowd video (AVI, H.264) indexed at 1 fps by the CLI with the real
    YOLOX-nano and ImageNet features; a person cut from one indexed frame finds that very frame
    first, as the best frame of a track that spans it."""
    from PIL import Image

    from personsearch.data.video import read_frame_at, read_video_frames

    source = real_data("video/crowd-1280x720.avi")
    model = real_data("models/yolox-nano-coco")
    gallery = tmp_path / "footage"
    gallery.mkdir()
    (gallery / "crowd.avi").symlink_to(source)
    (tmp_path / "yolox.yaml").write_text(
        f"model: {model / 'yolox_nano.onnx'}\nlayout: yolo\nyolo_rows_first: true\n"
        "yolo_objectness: true\nresize: letterbox\nletterbox_align: top_left\n"
        "input_height: 416\ninput_width: 416\nchannel_order: bgr\npixel_scale: 1.0\n"
        "score_thresh: 0.3\n"
    )
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.yaml").write_text(
        "detector: ../yolox.yaml\nreid: imagenet\ndet_thresh: 0.3\n"
    )
    index = tmp_path / "i"
    common = ["--pipeline", str(pipe)]
    args = ["index", "--gallery", str(gallery), "--out", str(index), "--fps", "1", "--json"]
    assert main([*args, "--no-progress", *common]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["videos"] == 1 and summary["video_frames"] == 14 and summary["failed"] == []
    assert summary["persons"] >= 14 * 10  # a crowd: ten or more people a frame
    # the frame the server and the picture show at a time is the frame the indexer read (AVI is
    # timed by frame count: decoded from the start, no seek)
    (indexed,) = [f for f in read_video_frames(source, fps=1.0) if f.index == 125]
    assert np.array_equal(read_frame_at(source, indexed.time_s).image, indexed.image)
    with GalleryIndex.open(index) as opened:
        rows = opened.store.box_metadata(range(opened.store.num_boxes))
    at_five = [m for m in rows.values() if m["frame"] == 125 and m["track"] >= 0]
    person = max(at_five, key=lambda m: m["box"][3] - m["box"][1])  # the largest
    x1, y1, x2, y2 = (int(round(v)) for v in person["box"])
    probe = tmp_path / "probe.png"
    Image.fromarray(indexed.image[y1:y2, x1:x2]).save(probe)
    assert main(["search", "--index", str(index), "--probe", str(probe), "--json", *common]) == 0
    first = json.loads(capsys.readouterr().out)["hits"][0]
    assert (first["frame"], first["track"]) == (125, person["track"])
    assert first["track_start_s"] <= 5.0 <= first["track_end_s"] and first["track_frames"] >= 2


def test_decoding_ahead_keeps_order_hands_on_errors_and_stops_when_the_consumer_does():
    import threading

    from personsearch.search.video_scan import decoded_ahead

    assert list(decoded_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield from range(3)
        raise ValueError("cut short")

    got = []
    with pytest.raises(ValueError, match="cut short"):
        for item in decoded_ahead(failing()):
            got.append(item)
    assert got == [0, 1, 2]  # the frames before the fault, then the fault

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()  # the source (a video's container) is closed when the consumer stops

    ahead = decoded_ahead(endless(), depth=2)
    assert [next(ahead) for _ in range(5)] == [0, 1, 2, 3, 4]
    ahead.close()
    assert closed.wait(5)
    assert not any(t.name == "video-decode" for t in threading.enumerate())


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_one_hit_per_track_on_approximate_indexes(world, tmp_path, kind):
    truth = ground_truth_arrays(read_ground_truth(world), "videos/cam0.mp4")
    gallery = _gallery_of(world, tmp_path / "g", "cam0.mp4")
    index = tmp_path / "i"
    with PersonSearcher.open(
        index, TruthDetector(truth), BandColourEmbedder(), index_kind=kind
    ) as searcher:
        searcher.index_folder(gallery, progress=False, sampling=VideoSampling(None))
        probe = world / "queries" / "0000.jpg"
        tracks = searcher.search(probe, top_k=100)
        every = searcher.search(probe, top_k=1000, per_track=False)
    assert len({h.track for h in tracks}) == len(tracks) == len({h.track for h in every})
    best = {}
    for hit in every:
        best[hit.track] = max(best.get(hit.track, -2.0), hit.similarity)
    assert all(h.similarity == pytest.approx(best[h.track]) for h in tracks)
