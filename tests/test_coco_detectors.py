"""torchvision's COCO detectors as person detectors: the real code path with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from personsearch.errors import ConfigError
from personsearch.models.coco import COCO_DETECTORS, COCO_PERSON, coco_box_ap, weights_cache_path
from personsearch.models.pretrained import WeightsUnavailableError
from personsearch.search.coco_detectors import CocoDetector

FAST = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the quickest to build and run on a CPU


def person_leaning(detector: CocoDetector) -> CocoDetector:
    """Random weights rarely call anything a person: bias the classifier so that some boxes are
    persons and some are not, and the person filter has something to do."""
    layer = detector.network.roi_heads.box_predictor.cls_score
    bias = layer.bias
    with torch.no_grad():
        layer.weight.normal_(0, 0.5)  # scores that differ from box to box
        bias[COCO_PERSON] += 4.0
        bias[3] += 4.0  # "car": must be dropped
    return detector


def test_only_person_boxes_above_the_threshold_come_back() -> None:
    torch.manual_seed(0)
    image = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    detector = person_leaning(CocoDetector(FAST, weights="random", score_thresh=0.0))
    with torch.no_grad():
        raw = detector.network([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    people = raw["labels"] == COCO_PERSON
    assert people.any() and (~people).any()  # the network itself returns both
    boxes, scores = detector.detect(image)
    np.testing.assert_allclose(boxes, raw["boxes"][people].numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores, raw["scores"][people].numpy(), rtol=1e-5)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    detector.score_thresh = float(np.median(scores))
    _, kept = detector.detect(image)
    assert len(kept) < len(scores) and (kept >= detector.score_thresh).all()
    # a batch gives what single images give
    ((batch_boxes, _),) = detector.detect_batch([image])
    np.testing.assert_allclose(batch_boxes, detector.detect(image)[0], rtol=1e-5)


def test_every_listed_detector_is_a_torchvision_coco_model() -> None:
    for name in COCO_DETECTORS:
        assert weights_cache_path(name).suffix == ".pth"
        assert 20 < coco_box_ap(name) < 60


def test_bad_names_weights_and_settings_are_named(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown torchvision COCO detector 'yolo9'.*known: "):
        CocoDetector("yolo9", weights="random")
    with pytest.raises(ConfigError, match=r"score_thresh must be a number in \[0, 1\]"):
        CocoDetector(FAST, weights="random", score_thresh=1.5)
    # weights of another architecture
    other = tmp_path / "ssd.pth"
    torch.save(
        CocoDetector("ssdlite320_mobilenet_v3_large", weights="random").network.state_dict(), other
    )
    with pytest.raises(ConfigError, match="does not hold the weights of " + FAST):
        CocoDetector(FAST, weights=other)
    with pytest.raises(WeightsUnavailableError, match="weights file not found"):
        CocoDetector(FAST, weights=tmp_path / "missing.pth")
    # offline, nothing cached: the URL, the cache path and the local-file alternative
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        CocoDetector(FAST)
    message = str(error.value)
    assert "https://download.pytorch.org/models/" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "weights=" in message


def test_a_cached_weights_file_is_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(1)
    state = CocoDetector(FAST, weights="random").network.state_dict()
    cached = weights_cache_path(FAST)
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    detector = CocoDetector(FAST)
    assert detector.weights_source.startswith("torchvision:")
    loaded = detector.network.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    image = np.zeros((64, 64, 3), np.uint8)
    boxes, scores = detector.detect(image)
    assert boxes.shape[1] == 4 and len(scores) == len(boxes)
    with pytest.raises(ValueError, match="H x W x 3"):
        detector.detect(np.zeros((5, 5), np.uint8))


def test_exported_onnx_gives_the_torch_boxes(tmp_path: Path) -> None:
    """export onnx --torchvision: the ONNX person detector returns the PyTorch detector's boxes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from personsearch.search.onnx_detector import load_onnx_detector

    torch.manual_seed(0)
    detector = CocoDetector(FAST, weights="random")
    # Untrained BatchNorm statistics make every region's features alike, and tied scores make
    # NMS keep an arbitrary set: calibrate them on a few images so that scores differ.
    detector.network.backbone.train()
    with torch.no_grad():
        detector.network.roi_heads.box_predictor.cls_score.bias[COCO_PERSON] += 10.0
        for _ in range(4):
            detector.network.backbone(torch.rand(2, 3, 320, 320))
    weights = tmp_path / "calibrated.pth"
    torch.save(detector.network.state_dict(), weights)
    from personsearch.cli import main

    out = tmp_path / "frcnn.onnx"
    assert (
        main(
            [
                "export",
                "onnx",
                "--torchvision",
                FAST,
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--score-thresh",
                "0.0",
            ]
        )
        == 0
    )
    yy, xx = np.mgrid[0:1:300j, 0:1:400j]
    image = (255 * np.stack([xx, yy, 0.5 + 0.5 * np.sin(7 * xx)], axis=2)).astype(np.uint8)
    image[40:200, 100:160] = 255
    torch_boxes, torch_scores = CocoDetector(FAST, weights=weights, score_thresh=0.0).detect(image)
    boxes, scores = load_onnx_detector(out.with_name(out.name + ".yaml")).detect(image)
    assert len(torch_boxes) > 5
    top = 5  # the best-scored boxes: far from the thresholds where float noise may swap one
    np.testing.assert_allclose(scores[:top], torch_scores[:top], atol=1e-4)
    np.testing.assert_allclose(boxes[:top], torch_boxes[:top], atol=0.05)
