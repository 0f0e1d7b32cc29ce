"""The ByteTrack-style tracker, the tracking measures, and the synthetic world in motion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personsearch.errors import ConfigError
from personsearch.evaluation.tracking import match_detections, track_quality, tracks_kept
from personsearch.search.tracking import Tracker, TrackerSettings, track_all


def _walk(start_x: float, speed: float, times: np.ndarray, y: float = 100.0) -> np.ndarray:
    """Boxes of a 40 x 100 person walking along x at `speed` pixels per second."""
    x = start_x + speed * times
    return np.stack([x, np.full_like(x, y), x + 40, np.full_like(x, y + 100)], axis=1)


def _feed(
    tracker: Tracker,
    times: np.ndarray,
    people: list[np.ndarray],
    looks: list[np.ndarray] | None = None,
) -> np.ndarray:
    ids = []
    for step, time_s in enumerate(times):
        boxes = np.stack([p[step] for p in people])
        features = None if looks is None else np.stack(looks)
        ids.append(tracker.update(float(time_s), boxes, np.full(len(people), 0.9), features))
    return np.stack(ids)  # (frames, people)


def test_two_people_crossing_keep_their_tracks_at_full_frame_rate():
    times = np.arange(0, 4, 0.1)
    ids = _feed(Tracker(), times, [_walk(0, 100, times), _walk(400, -100, times, y=110)])
    assert (ids[:, 0] == ids[0, 0]).all() and (ids[:, 1] == ids[0, 1]).all()
    assert ids[0, 0] != ids[0, 1]


def test_looks_bridge_what_iou_cannot_at_a_low_sampling_rate():
    # 1 frame per second at 3 body heights per second: faster than the distance stage allows,
    # and consecutive boxes of a 40 px wide person never overlap.
    times = np.arange(0, 4, 1.0)
    people = [_walk(0, 300, times), _walk(900, -300, times, y=300)]
    blind = _feed(Tracker(), times, people)
    assert len(np.unique(blind[:, 0])) > 1  # IoU alone fragments the walk
    looks = [np.eye(8)[0], np.eye(8)[1]]
    seeing = _feed(
        Tracker(TrackerSettings(min_similarity=0.3, rejoin_similarity=0.6)), times, people, looks
    )
    assert len(np.unique(seeing[:, 0])) == 1 and len(np.unique(seeing[:, 1])) == 1
    assert seeing[0, 0] != seeing[0, 1]


def test_a_different_looking_person_in_the_same_place_is_not_the_same_track():
    tracker = Tracker(TrackerSettings(min_similarity=0.3))
    box = np.array([[100.0, 100, 140, 200]])
    first = tracker.update(0.0, box, [0.9], np.eye(4)[:1])
    second = tracker.update(0.1, box, [0.9], np.eye(4)[1:2])
    assert first[0] != second[0]


def test_a_track_survives_a_short_gap_and_ends_after_max_lost():
    tracker = Tracker(TrackerSettings(max_lost_s=1.0))
    box = np.array([[100.0, 100, 140, 200]])
    a = tracker.update(0.0, box, [0.9])
    tracker.update(0.5, np.zeros((0, 4)), [])
    b = tracker.update(0.9, box, [0.9])  # 0.9 s unseen: the same track
    tracker.update(1.5, np.zeros((0, 4)), [])
    c = tracker.update(2.5, box, [0.9])  # 1.6 s unseen: a new one
    assert a[0] == b[0] and c[0] != a[0]


def test_low_score_detections_extend_tracks_but_start_none():
    tracker = Tracker()
    box = np.array([[100.0, 100, 140, 200]])
    assert tracker.update(0.0, box, [0.3])[0] == -1  # too weak to start a track
    first = tracker.update(0.1, box, [0.9])[0]
    assert tracker.update(0.2, box + 2, [0.3])[0] == first  # ByteTrack's second stage


def test_a_killed_run_resumes_with_the_same_track_ids():
    times = np.arange(0, 3, 0.2)
    people = [_walk(0, 60, times), _walk(300, -60, times, y=130)]
    looks = [np.eye(4)[0], np.eye(4)[1]]
    whole = _feed(Tracker(), times, people, looks)
    first = Tracker()
    head = _feed(first, times[:7], [p[:7] for p in people], looks)
    resumed = Tracker.from_state(json.loads(json.dumps(first.state_dict())))
    tail = _feed(resumed, times[7:], [p[7:] for p in people], looks)
    np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


def test_track_all_matches_frame_by_frame_updates_in_any_row_order():
    times = np.arange(0, 2, 0.1)
    people = [_walk(0, 100, times), _walk(400, -100, times, y=110)]
    frame = np.repeat(np.arange(len(times)), 2)
    boxes = np.stack(people, axis=1).reshape(-1, 4)
    shuffle = np.random.default_rng(0).permutation(len(frame))
    ids = track_all(
        np.repeat(times, 2)[shuffle], frame[shuffle], boxes[shuffle], np.full(len(frame), 0.9)
    )
    expected = _feed(Tracker(), times, people).reshape(-1)[shuffle]
    # The same tracks; which person gets id 0 may follow the row order within a frame.
    pairs = set(zip(ids.tolist(), expected.tolist(), strict=True))
    assert len(pairs) == len(set(ids.tolist())) == len(set(expected.tolist())) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"high_score": 1.5},
        {"low_score": 0.7, "high_score": 0.5},
        {"max_lost_s": 0},
        {"min_iou": float("nan")},
    ],
)
def test_bad_settings_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TrackerSettings(**bad)


def test_bad_frames_are_refused():
    tracker = Tracker()
    with pytest.raises(ValueError, match="non-finite"):
        tracker.update(0.0, np.array([[0, 0, np.nan, 10]]), [0.9])
    tracker.update(1.0, np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="time order"):
        tracker.update(0.5, np.zeros((0, 4)), [])
    with pytest.raises(ConfigError, match="malformed"):
        Tracker.from_state({"tracks": []})


def test_track_quality_on_a_hand_made_case():
    # Identity 7 is seen in frames 0-3: tracks 0, 0, 1, 1 (one switch, two fragments);
    # identity 8 in frames 0-3 as track 2 throughout; one false detection (pid -1) on track 2.
    frame = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4])
    track = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2])
    pid = np.array([7, 7, 7, 7, 8, 8, 8, 8, -1])
    quality = track_quality(frame, track, pid, gt_boxes_total=8)
    assert quality["id_switches"] == 1
    assert quality["fragments"] == 1.5
    assert quality["purity"] == 1.0
    # best pairing: 7 -> track 0 (2 shared), 8 -> track 2 (4 shared): IDTP 6
    assert quality["idf1"] == pytest.approx(2 * 6 / (8 + 9))
    assert quality["identities_found"] == 2
    assert tracks_kept({7}, {7, 8}) == 0.5


def test_match_detections_is_one_to_one_per_frame():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    det_boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]], dtype=float)
    pid = match_detections(
        np.array([0, 0, 0]), det_boxes, np.array([0, 0]), gt_boxes, np.array([5, 6])
    )
    assert sorted(pid.tolist()) == [-1, 5, 6]


def test_the_world_in_motion_is_deterministic_and_its_truth_matches_its_videos(tmp_path):
    from personsearch.data.synthetic_video import (
        VideoWorldSettings,
        generate_video_world,
        ground_truth_arrays,
        read_ground_truth,
    )
    from personsearch.data.video import read_video_frames

    settings = VideoWorldSettings(
        cameras=2, identities=3, duration_s=4, fps=5, width=320, height=180, visit_s=(2.0, 3.5)
    )
    first = read_ground_truth(generate_video_world(tmp_path / "a", settings))
    second = read_ground_truth(generate_video_world(tmp_path / "b", settings))
    assert first == second
    assert not list(tmp_path.glob(".*partial*"))
    for name, video in first["videos"].items():
        frames = list(read_video_frames(tmp_path / "a" / name, fps=None))
        assert len(frames) == len(video["frames"]) == 20
        assert frames[5].time_s == pytest.approx(1.0, abs=1e-3)
        assert frames[0].image.shape == (180, 320, 3)
    # Every identity is in at least two cameras' videos: what a cross-camera search must find.
    seen = {}
    for name in first["videos"]:
        for pid in np.unique(ground_truth_arrays(first, name)["pid"]):
            seen.setdefault(int(pid), set()).add(name)
    assert seen and all(len(cameras) >= 2 for cameras in seen.values())
    # Tracking the true boxes (jittered a little), with noisy per-identity looks standing in for
    # re-id features (cosine about 0.6 within an identity, 0 across), gives clean tracks.
    rng = np.random.default_rng(0)
    looks = rng.normal(size=(3, 32))
    for name in first["videos"]:
        truth = ground_truth_arrays(first, name)
        rows = len(truth["frame"])
        features = looks[truth["pid"]] + rng.normal(scale=0.8, size=(rows, 32))
        tracks = track_all(
            truth["time_s"],
            truth["frame"],
            truth["boxes"] + rng.normal(0, 1.5, (rows, 4)),
            np.full(rows, 0.9),
            features,
        )
        quality = track_quality(truth["frame"], tracks, truth["pid"], rows)
        assert quality["id_switches"] <= 2 and quality["idf1"] > 0.9, (name, quality)


def test_video_world_settings_are_checked():
    from personsearch.data.synthetic_video import VideoWorldSettings

    with pytest.raises(ConfigError, match="cameras"):
        VideoWorldSettings(cameras=1)
    with pytest.raises(ConfigError, match="visit_s"):
        VideoWorldSettings(duration_s=3, visit_s=(2.0, 5.0))


def test_one_hit_per_track_keeps_each_tracks_best_frame():
    from personsearch.search.tracking import one_hit_per_track

    scores = np.array([0.2, 0.9, 0.5, 0.8, 0.1, 0.7])
    keys = np.array([1, 1, 2, -1, 2, -1])
    assert one_hit_per_track(scores, keys).tolist() == [1, 3, 5, 2]
    with pytest.raises(ValueError, match="track keys"):
        one_hit_per_track(scores, keys[:2])


def test_track_search_ap_counts_a_fragmented_trajectory_once():
    from personsearch.evaluation.tracking import track_search_ap

    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([True, True, False, True])
    assert track_search_ap(scores, relevant, 3) == pytest.approx((1 + 1 + 3 / 4) / 3)
    # tracks 0 and 1 are one trajectory (a person cut in two): the second is a false hit
    trajectory = np.array([hash(t) for t in [("v", 7), ("v", 7), ("v", 8), ("w", 7)]])
    assert track_search_ap(scores, relevant, 2, trajectory) == pytest.approx((1 + 2 / 4) / 2)


class _TruthDetector:
    """Returns the world's true boxes for the frame with the given index (a stand-in detector)."""

    fingerprint = "truth"

    def __init__(self, truth: dict[str, np.ndarray]):
        self.truth, self.frame = truth, 0

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        here = self.truth["frame"] == self.frame
        self.frame += 1
        return self.truth["boxes"][here], np.full(int(here.sum()), 0.9)


def test_scan_video_resumes_after_a_kill_with_the_same_tracks(tmp_path):
    from personsearch.data.synthetic_video import (
        VideoWorldSettings,
        generate_video_world,
        ground_truth_arrays,
        read_ground_truth,
    )
    from personsearch.search.embedders import BandColourEmbedder
    from personsearch.search.video_scan import scan_video

    settings = VideoWorldSettings(
        cameras=2, identities=3, duration_s=4, fps=5, width=320, height=180, visit_s=(2.0, 3.5)
    )
    root = generate_video_world(tmp_path / "w", settings)
    truth = ground_truth_arrays(read_ground_truth(root), "videos/cam0.mp4")
    video = root / "videos" / "cam0.mp4"
    timings: dict[str, float] = {}
    whole = list(
        scan_video(video, _TruthDetector(truth), BandColourEmbedder(), fps=None, timings=timings)
    )
    assert [f.index for f in whole] == list(range(20))
    assert sum(len(f.boxes) for f in whole) == len(truth["frame"])
    assert set(timings) == {"decode", "detect", "embed", "track"}
    # A run killed after frame 9: its tracker state was saved with frame 9's detections.
    tracker = Tracker()
    head = []
    for frame in scan_video(
        video, _TruthDetector(truth), BandColourEmbedder(), fps=None, tracker=tracker
    ):
        head.append(frame)
        if frame.index == 9:
            break
    state = json.loads(json.dumps(tracker.state_dict()))
    detector = _TruthDetector(truth)
    detector.frame = 10
    tail = list(
        scan_video(
            video,
            detector,
            BandColourEmbedder(),
            fps=None,
            tracker=Tracker.from_state(state),
            resume=head[-1].resume_point(),
        )
    )
    assert [f.index for f in head + tail] == list(range(20))
    for a, b in zip(head + tail, whole, strict=True):
        np.testing.assert_array_equal(a.tracks, b.tracks)


def test_real_crowd_video_scanned_with_the_real_yolox(real_data, tmp_path):
    """The real 1280 x 720 crowd video at 2 fps through the real YOLOX-nano: about 20 people per
    frame, linked into tracks that last (no ground truth: the tracks' lengths are the check)."""
    import collections

    from personsearch.search.embedders import BandColourEmbedder
    from personsearch.search.onnx_detector import load_onnx_detector
    from personsearch.search.video_scan import scan_video

    video = real_data("video/crowd-1280x720.avi")
    model = real_data("models/yolox-nano-coco")
    config = tmp_path / "yolox.yaml"
    config.write_text(
        f"model: {model / 'yolox_nano.onnx'}\nlayout: yolo\nyolo_rows_first: true\n"
        "yolo_objectness: true\nresize: letterbox\nletterbox_align: top_left\n"
        "input_height: 416\ninput_width: 416\nchannel_order: bgr\npixel_scale: 1.0\n"
        "score_thresh: 0.3\n"
    )
    frames = list(scan_video(video, load_onnx_detector(config), BandColourEmbedder(), fps=2.0))
    assert len(frames) == 28
    assert all(len(f.boxes) >= 10 for f in frames)
    lengths = collections.Counter(int(t) for f in frames for t in f.tracks if t >= 0)
    detections = sum(len(f.boxes) for f in frames)
    assert len(lengths) <= 0.15 * detections  # most detections continue a track
    assert max(lengths.values()) >= 20  # someone followed through most of the 14 s
