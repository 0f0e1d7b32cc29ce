"""The detector as a task: train through the shared trainer, export/reload, evaluate, export detections.

Runs on the tiny fake CUHK-SYSU folder of `cuhk_fixture` (8 images of 160 x 120) with MobileNetV2
at a small input size, so every command finishes in seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cuhk_fixture import write_cuhk_sysu

from personsearch import cli
from personsearch.config import Config, load_config, save_config
from personsearch.data.scenes import Scene
from personsearch.engine.detector_eval import detect_scenes
from personsearch.engine.detector_task import detector_config, load_scenes
from personsearch.errors import CheckpointError, ConfigError
from personsearch.evaluation.scene_detection import SceneDetections, detection_metrics
from personsearch.models.detector import build_detector
from personsearch.models.saving import load_detector, save_detector

SMALL_MODEL = [
    "model.pretrained=false",
    "model.min_size=128",
    "model.max_size=224",
    "model.rpn_pre_nms_top_n_train=300",
    "model.rpn_pre_nms_top_n_test=300",
    "model.rpn_post_nms_top_n_test=64",
    "model.box_batch_size_per_image=32",
]


@pytest.fixture(scope="module")
def cuhk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuhk")
    write_cuhk_sysu(root)
    return root


def small_config(root: Path, run: Path, *extra: str) -> Config:
    return load_config(
        "synthetic-detector",
        [
            "data.dataset=cuhk-sysu",
            f"data.root={root}",
            f"run.out={run}",
            "run.workers=0",
            "run.progress=false",
            *SMALL_MODEL,
            *extra,
        ],
    )


def fake_run(root: Path, run: Path) -> Config:
    """A run folder as training leaves it (config.yaml, model.pt), with random weights."""
    config = small_config(root, run)
    save_config(config, run / "config.yaml")
    torch.manual_seed(0)
    save_detector(run / "model.pt", build_detector(detector_config(config)), config)
    return config


def test_model_file_round_trip_gives_the_same_detections(cuhk_root: Path, tmp_path: Path) -> None:
    config = small_config(cuhk_root, tmp_path)
    torch.manual_seed(0)
    model = build_detector(detector_config(config)).eval()
    model.score_thresh = 0.0
    save_detector(tmp_path / "model.pt", model, config)
    loaded, meta = load_detector(tmp_path, "cpu")
    loaded.score_thresh = 0.0
    assert meta["task"] == "detector" and meta["model_config"]["backbone"] == "mobilenet_v2"
    image = torch.rand(3, 120, 160)
    with torch.no_grad():
        expected, got = model([image])[0], loaded([image])[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])


def test_foreign_model_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path)
    torch.save({"format_version": 1, "task": "reid", "state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a detector"):
        load_detector(tmp_path)


def test_bad_model_section_is_a_config_error(cuhk_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key model.poolng; valid keys in model: "):
        small_config(cuhk_root, tmp_path, "model.poolng=roi_pool")  # when the config is built
    with pytest.raises(ConfigError, match="data.dataset='market1501'"):
        load_scenes("market1501", cuhk_root)


def test_detect_scenes_groups_by_scene_and_restores_the_model(
    cuhk_root: Path, tmp_path: Path
) -> None:
    config = small_config(cuhk_root, tmp_path)
    model = build_detector(detector_config(config))
    model.train()
    scenes = load_scenes("cuhk-sysu", cuhk_root).test
    detections = detect_scenes(model, scenes, score_thresh=0.0)
    assert model.training and model.score_thresh == 0.5
    assert detections.image_names == tuple(s.name for s in scenes)
    assert len(detections.det_scores) > 0
    assert np.all(np.diff(detections.det_image) >= 0)
    boxes = detections.det_boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()

    path = detections.save(tmp_path / "dets.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"image_names", "det_image", "det_boxes", "det_scores"}
        assert archive["image_names"].tolist() == list(detections.image_names)


def test_perfect_detections_score_full_recall_and_ap() -> None:
    scenes = [
        Scene("a.jpg", Path("a.jpg"), np.array([[0, 0, 10, 30], [20, 0, 30, 30]]), [1, -1]),
        Scene("b.jpg", Path("b.jpg"), np.zeros((0, 4)), []),
        Scene("c.jpg", Path("c.jpg"), np.array([[5, 5, 15, 40]]), [2]),
    ]
    perfect = SceneDetections(
        ("a.jpg", "b.jpg", "c.jpg"),
        np.array([0, 0, 2, 2]),
        np.array([[0, 0, 10, 30], [20, 0, 30, 30], [5, 5, 15, 40], [50, 50, 60, 90]], np.float32),
        np.array([0.9, 0.8, 0.7, 0.3], np.float32),  # the false alarm falls below 0.5
    )
    metrics = detection_metrics(scenes, perfect, det_thresh=0.5)
    assert metrics["recall"] == pytest.approx(100) and metrics["ap"] == pytest.approx(100)
    assert metrics["ap_all"] == pytest.approx(100)  # the false alarm ranks after every hit
    assert metrics["detections_per_image"] == pytest.approx(1.0)


def test_evaluate_detector_and_detect_commands(cuhk_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fake_run(cuhk_root, run)
    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "evaluate-detector",
                "--run",
                str(run),
                "--out",
                str(out),
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"recall", "ap", "recall_all", "ap_all"} <= set(metrics)
    assert metrics["test_scenes"] == 4 and metrics["dataset"] == "cuhk-sysu"
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "detections.npz").is_file()

    dets = tmp_path / "train-dets.npz"
    assert (
        cli.main(
            [
                "detect",
                "--run",
                str(run),
                "--out",
                str(dets),
                "--split",
                "train",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with np.load(dets, allow_pickle=False) as archive:
        assert len(archive["image_names"]) == 4

    assert cli.main(["detect", "--run", str(run), "--out", str(tmp_path / "x.txt")]) == 1


def test_train_detector_command_trains_exports_and_resumes(cuhk_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "detector",
        "--config",
        "synthetic-detector",
        "--out",
        str(run),
        "data.dataset=cuhk-sysu",
        f"data.root={cuhk_root}",
        "run.workers=0",
        "run.progress=false",
        "run.log_period=1",
        "optim.warmup_iterations=0",
        "optim.milestones=[1]",
        *SMALL_MODEL,
    ]
    assert cli.main([*args, "optim.iterations=2"]) == 0
    for name in ("config.yaml", "model.pt", "metrics.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2]
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(
        train[0]
    )
    assert any(r["split"] == "eval" and "ap" in r for r in records)
    load_detector(run)

    assert cli.main([*args, "optim.iterations=3"]) == 1  # the folder holds a run: needs --resume
    assert cli.main([*args, "optim.iterations=3", "--resume"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in records) == 3


COCO_FAST = "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_a_coco_start_keeps_the_person_rows_and_round_trips(
    cuhk_root: Path, tmp_path: Path
) -> None:
    from personsearch.models.coco import build_coco_network
    from personsearch.models.detector import DetectorConfig

    config = small_config(
        cuhk_root,
        tmp_path,
        f"model.coco_start={COCO_FAST}",
        "model.coco_weights=random",
        "model.min_size=160",
        "model.max_size=240",
    )
    torch.manual_seed(0)
    model = build_detector(detector_config(config))
    torch.manual_seed(0)
    coco, _ = build_coco_network(COCO_FAST, "random")
    predictor, original = model.roi_heads.box_predictor, coco.roi_heads.box_predictor
    assert predictor.cls_score.out_features == 2 and predictor.bbox_pred.out_features == 8
    # background and person rows of COCO's 91-way head, in that order
    torch.testing.assert_close(predictor.cls_score.weight, original.cls_score.weight[[0, 1]])
    torch.testing.assert_close(predictor.bbox_pred.weight[4:], original.bbox_pred.weight[4:8])
    body = dict(model.backbone.body.named_children())
    assert not any(p.requires_grad for p in body["0"].parameters())  # the first block
    assert any(p.requires_grad for p in body[list(body)[-1]].parameters())
    # one training step: the person-search losses come out finite
    model.train()
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 110.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 120, 160)], [target])
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
    } and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    model.score_thresh = 0.0
    save_detector(tmp_path / "model.pt", model, config)
    loaded, meta = load_detector(tmp_path, "cpu")
    assert meta["model_config"]["coco_start"] == COCO_FAST
    loaded.score_thresh = 0.0
    image = torch.rand(3, 120, 160)
    with torch.no_grad():
        expected, got = model([image])[0], loaded([image])[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    with pytest.raises(ConfigError, match="coco_start='retinanet"):
        DetectorConfig(coco_start="retinanet_resnet50_fpn_v2")
    with pytest.raises(ConfigError, match="coco_weights is set"):
        DetectorConfig(coco_weights="x.pth")
