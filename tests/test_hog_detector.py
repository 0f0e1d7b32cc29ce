"""Searching real photos with no training: OpenCV's HOG people detector finds the annotated
persons of a real PRW frame, ImageNet features re-find PRW persons across frames, and
`personsearch index` runs on a folder of real frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from real_data import REAL_DATA, needs_real

from personsearch.search.detectors import HogPeopleDetector, hog_available
from personsearch.search.searcher import crop_box

PRW = REAL_DATA / "prw-mini"
needs_prw = needs_real("prw-mini/frames")
needs_hog = pytest.mark.skipif(not hog_available(), reason="OpenCV 4 (cv2.HOGDescriptor) missing")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1 y1 x2 y2 boxes."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def prw_scenes():
    from personsearch.data.prw import load_prw

    dataset = load_prw(PRW)
    return {scene.name: scene for scene in (*dataset.train, *dataset.test)}


@needs_prw
@needs_hog
def test_hog_finds_a_person_in_a_real_prw_frame():
    from personsearch.data.images import read_rgb

    scene = prw_scenes()["c1s1_002326.jpg"]
    boxes, scores = HogPeopleDetector().detect(read_rgb(scene.path))
    assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4)
    assert len(boxes) >= 1
    overlaps = iou(boxes, scene.boxes)
    assert overlaps.max() >= 0.5, f"best IoU with a ground-truth person {overlaps.max():.2f}"


@needs_prw
@needs_hog
def test_trimming_hog_windows_to_the_person_finds_more_annotated_persons():
    from personsearch.data.images import read_rgb
    from personsearch.search.detectors import trim_hog_windows

    # the six most crowded sample frames: on all 16, 33 of 61 persons found trimmed, 10 untrimmed
    frames = (
        "c3s1_001626.jpg",
        "c1s1_014901.jpg",
        "c1s1_014601.jpg",
        "c1s1_002376.jpg",
        "c1s1_002326.jpg",
        "c1s1_014776.jpg",
    )
    scenes = prw_scenes()
    windows_detector, trimming_detector = HogPeopleDetector(trim=False), HogPeopleDetector()
    found = {"windows": 0, "trimmed": 0}
    for name in frames:
        scene, image = scenes[name], read_rgb(scenes[name].path)
        windows, _ = windows_detector.detect(image)
        trimmed = trim_hog_windows(windows, image.shape[:2])
        if name == frames[0]:  # the detector's own trimming is this function
            np.testing.assert_array_equal(trimming_detector.detect(image)[0], trimmed)
        assert (trimmed[:, 2:] > trimmed[:, :2]).all() and (trimmed >= 0).all()
        assert (trimmed[:, 2] <= image.shape[1]).all() and (trimmed[:, 3] <= image.shape[0]).all()
        for key, boxes in (("windows", windows), ("trimmed", trimmed)):
            found[key] += int((iou(scene.boxes, boxes).max(axis=1) >= 0.5).sum())
    # measured on these frames: 21 of 23 persons trimmed, 4 as OpenCV's windows
    assert found["trimmed"] >= 15 and found["trimmed"] >= 3 * found["windows"], found
    assert windows_detector.fingerprint != trimming_detector.fingerprint


@needs_prw
def test_imagenet_features_refind_prw_persons_across_frames():
    from personsearch.data.images import read_rgb
    from personsearch.errors import WeightsUnavailableError
    from personsearch.search.torch_embedders import ImageNetEmbedder

    try:
        embedder = ImageNetEmbedder()  # MobileNetV2: weights that load offline
    except WeightsUnavailableError as error:
        pytest.skip(str(error))
    crops, pids, frames = [], [], []
    for scene in prw_scenes().values():
        image = read_rgb(scene.path)
        for box, pid in zip(scene.boxes, scene.pids, strict=True):
            if pid >= 0:
                crops.append(crop_box(image, box))
                pids.append(int(pid))
                frames.append(scene.name)
    features = embedder.embed_crops(crops)
    assert features.shape == (len(crops), 1280)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_crops(crops[:2]), features[:2], atol=1e-5)

    pids, frames = np.array(pids), np.array(frames)
    similarity = features @ features.T
    found = tried = 0
    for i in range(len(crops)):
        other_frames = frames != frames[i]
        if not (other_frames & (pids == pids[i])).any():
            continue  # the person appears in no other frame
        best = int(np.argmax(np.where(other_frames, similarity[i], -np.inf)))
        found += int(pids[best] == pids[i])
        tried += 1
    # about 1 in 18 by chance (18 identities); the measured rank-1 is 40 of 50
    assert tried >= 40 and found / tried >= 0.6


@needs_prw
@needs_hog
def test_index_command_runs_on_real_frames(tmp_path, capsys):
    from personsearch.cli import main

    gallery = tmp_path / "photos"
    gallery.mkdir()
    for name in ("c1s1_002326.jpg", "c1s1_002351.jpg"):
        shutil.copy(PRW / "frames" / name, gallery / name)
    assert (
        main(["index", "--gallery", str(gallery), "--out", str(tmp_path / "idx"), "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 indexed" in out
    persons = int(out.split("2 indexed (")[1].split(" persons")[0])
    assert persons >= 2  # HOG found people, not one whole-image box per photo
