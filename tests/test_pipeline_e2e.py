"""Trained-model pipelines end to end: pipeline.yaml, `evaluate --pipeline`, index + search with it.

The models are untrained (random weights exported as a run would export them): what is checked
is the plumbing, that a run folder's models detect, embed, index, search and evaluate through
the same code users run, and that the numbers agree between the paths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from personsearch.cli import main
from personsearch.config import load_config
from personsearch.errors import PersonSearchError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from personsearch.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate_world(root, "tiny", seed=0, workers=0)
    return root


@pytest.fixture(scope="module")
def reid_run(tmp_path_factory):
    from personsearch.models.reid import build_reid_model
    from personsearch.models.saving import save_reid_model

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("reid-run")
    config = load_config("synthetic-reid", ["data.crop_height=64", "data.crop_width=32"])
    model = build_reid_model(
        {
            "head": "clsa",
            "backbone": "resnet18",
            "pretrained": False,
            "feature_dim": 32,
            "num_classes": 5,
        }
    ).eval()
    save_reid_model(run / "model.pt", model, config, pids=[1, 2, 3, 4, 5])
    (run / "config.yaml").write_text("task: reid\n")
    return run


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    from personsearch.models.detector import DetectorConfig, build_detector
    from personsearch.models.saving import save_detector

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("detector-run")
    config = load_config("synthetic-detector")
    model = build_detector(
        DetectorConfig(
            backbone="mobilenet_v2", pretrained=False, min_size=160, max_size=256, score_thresh=0.0
        )
    ).eval()
    save_detector(run / "model.pt", model, config)
    return run


def test_gt_boxes_evaluation_matches_between_paths(world, reid_run, tmp_path, capsys):
    from personsearch.search.pipeline import write_pipeline_spec

    folder = tmp_path / "pipeline"
    write_pipeline_spec(folder, "whole-image", reid_run)
    results = tmp_path / "results.npz"
    args = [
        "evaluate",
        "--dataset",
        "cuhk-sysu",
        "--root",
        str(world),
        "--pipeline",
        str(folder),
        "--gt-boxes",
        "--results",
        str(results),
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 < summary["mAP"] <= 1 and summary["num_queries"] > 0
    # the written file scores the same on its own, and gt boxes give one detection per person
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "cuhk-sysu",
                "--root",
                str(world),
                "--results",
                str(results),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(summary["mAP"], abs=1e-12)
    from personsearch.data.cuhk_sysu import load_cuhk_sysu

    with np.load(results) as arrays:
        assert len(arrays["det_boxes"]) == sum(len(s.boxes) for s in load_cuhk_sysu(world).test)
        norms = np.linalg.norm(arrays["det_feats"], axis=1)
    np.testing.assert_allclose(norms, 1, atol=1e-5)


def test_detector_pipeline_indexes_and_searches(world, reid_run, detector_run, tmp_path, capsys):
    from personsearch.data.cuhk_sysu import load_cuhk_sysu
    from personsearch.search.pipeline import load_pipeline, write_pipeline_spec
    from personsearch.search.torch_detector import TorchDetector

    folder = tmp_path / "pipeline"
    write_pipeline_spec(folder, detector_run, reid_run, det_thresh=0.0)
    pipeline = load_pipeline(folder)
    assert isinstance(pipeline.detector, TorchDetector)
    scenes = load_cuhk_sysu(world).test[:3]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for scene in scenes:
        (gallery / scene.name).symlink_to(scene.path)
    index = tmp_path / "index"
    assert (
        main(["index", "--gallery", str(gallery), "--out", str(index), "--pipeline", str(folder)])
        == 0
    )
    probe = scenes[0]
    box = ",".join(str(int(v)) for v in probe.boxes[0])
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--index",
                str(index),
                "--pipeline",
                str(folder),
                "--probe",
                str(probe.path),
                "--box",
                box,
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()
    # boxes are in the input image's pixels whatever the model resizes to
    from personsearch.data.images import read_rgb

    image = read_rgb(probe.path)
    boxes, scores = pipeline.detector.detect(image)
    assert len(boxes) == len(scores)
    if len(boxes):
        assert (
            boxes[:, 2].max() <= image.shape[1] + 1e-3
            and boxes[:, 3].max() <= image.shape[0] + 1e-3
        )


def test_pipeline_spec_errors(tmp_path, reid_run):
    from personsearch.search.pipeline import load_pipeline, write_pipeline_spec

    folder = tmp_path / "p"
    write_pipeline_spec(folder, tmp_path / "no-such-detector", reid_run)
    with pytest.raises(PersonSearchError, match="does not exist"):
        load_pipeline(folder)
    (folder / "pipeline.yaml").write_text("reid: x\n")
    with pytest.raises(PersonSearchError, match="must name detector"):
        load_pipeline(folder)


def test_pipeline_spec_with_imagenet_features(tmp_path):
    from personsearch.search.detectors import WholeImageDetector
    from personsearch.search.pipeline import load_pipeline, write_pipeline_spec
    from personsearch.search.torch_embedders import ImageNetEmbedder

    folder = tmp_path / "p"
    write_pipeline_spec(folder, "whole-image", "imagenet")
    pipeline = load_pipeline(folder)
    assert isinstance(pipeline.detector, WholeImageDetector)
    assert isinstance(pipeline.embedder, ImageNetEmbedder)
    feats = pipeline.embedder.embed_crops([np.full((60, 30, 3), 128, np.uint8)])
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)


def test_model_files_are_checked_for_their_task(reid_run, detector_run):
    from personsearch.errors import CheckpointError
    from personsearch.models.saving import load_detector, load_reid_model

    with pytest.raises(CheckpointError, match="holds a 'detector' model, not a reid model"):
        load_reid_model(detector_run)
    with pytest.raises(CheckpointError, match="holds a 'reid' model, not a detector model"):
        load_detector(reid_run)
