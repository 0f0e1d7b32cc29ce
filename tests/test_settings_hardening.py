"""Settings that would waste or lose work, and small correctness points (docs/bad-input.md,
"Settings and outputs"): every class of bad setting is refused before the first step with one
ConfigError naming the key and the value; training writes its checkpoint and model file before
the final evaluation; detections are kept at `score >= threshold` everywhere; a run's pipeline
uses the checkpoint it was given."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_reid import ColourCrops, TinyReid

from personsearch.cli import main
from personsearch.config import Config, DataConfig, OptimConfig, RunConfig, load_config
from personsearch.engine.checkpoint import load_checkpoint, save_checkpoint
from personsearch.engine.distributed import DistInfo
from personsearch.engine.trainer import Trainer, build_train_loader, seed_everything
from personsearch.errors import ConfigError, PersonSearchError


def _one_line_error(capsys, code: int, *fragments: str) -> str:
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ settings, before any step

# (override, what the one-line error must name): one row per class of bad setting
BAD_SETTINGS = [
    ("optim.batch_size=0", "optim.batch_size=0"),
    ("optim.batch_size=-8", "optim.batch_size=-8"),
    ("run.eval_batch_size=0", "run.eval_batch_size=0"),
    ("run.eval_batch_size=-1", "run.eval_batch_size=-1"),
    ("run.workers=-1", "run.workers=-1"),
    ("optim.lr=0", "optim.lr=0.0"),
    ("optim.momentum=-0.1", "optim.momentum=-0.1"),
    ("optim.momentum=1.0", "optim.momentum=1.0"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001"),
    ("optim.gamma=0", "optim.gamma=0.0"),
    ("optim.gamma=1.5", "optim.gamma=1.5"),
    ("optim.warmup_iterations=-5", "optim.warmup_iterations=-5"),
    ("optim.warmup_factor=1.5", "optim.warmup_factor=1.5"),
    ("optim.warmup_factor=-0.1", "optim.warmup_factor=-0.1"),
    ("optim.milestones=[0]", "optim.milestones=[0]"),
    ("optim.milestones=[99]", "optim.milestones=[99] must lie in 1..4"),
    ("optim.milestones=[3,2]", "optim.milestones=[3, 2] must be increasing"),
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0"),
    ("optim.nesterov=true optim.momentum=0", "optim.nesterov=true needs optim.momentum > 0"),
    ("data.det_iou=1.5", "data.det_iou=1.5"),
    ("data.random_erasing=2", "data.random_erasing=2.0"),
    ("data.color_jitter=-1", "data.color_jitter=-1.0"),
    ("run.checkpoint_period=0", "run.checkpoint_period=0"),
    ("run.log_period=0", "run.log_period=0"),
    ("run.eval_period=-1", "run.eval_period=-1"),
    ("run.seed=-1", "run.seed=-1"),
    # NaN and inf anywhere numeric, as YAML writes them, the model section included
    ("optim.lr=.nan", "optim.lr=nan"),
    ("optim.momentum=.inf", "optim.momentum=inf"),
    ("optim.weight_decay=-.inf", "optim.weight_decay=-inf"),
    ("optim.gamma=.nan", "optim.gamma=nan"),
    ("optim.warmup_factor=.nan", "optim.warmup_factor=nan"),
    ("optim.grad_clip=.inf", "optim.grad_clip=inf"),
    ("data.det_iou=.nan", "data.det_iou=nan"),
    ("data.lowres_prob=.nan", "data.lowres_prob"),
    ("data.lowres_scale=[.nan,0.5]", "data.lowres_scale[0]=nan"),
    ("model.kl_weight=.nan", "model.kl_weight=nan"),
    ("model.temperature=.inf", "model.temperature=inf"),
    ("model.mst_scales=[1.0,.nan]", "model.mst_scales[1]=nan"),
]


@pytest.mark.parametrize(("override", "named"), BAD_SETTINGS)
def test_bad_setting_is_one_config_error_before_anything_runs(tmp_path, capsys, override, named):
    out = tmp_path / "run"
    world = tmp_path / "world"
    code = main(
        [
            "train",
            "reid",
            "--config",
            "synthetic-reid",
            "--out",
            str(out),
            f"data.root={world}",
            *override.split(),
        ]
    )
    _one_line_error(capsys, code, named)
    assert not out.exists() and not world.exists()  # no run folder, no world generated


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=.nan",
        "run.eval_batch_size=0",
        "model.score_thresh=.nan",
        "optim.warmup_iterations=601",
    ],
)
def test_detector_settings_too(tmp_path, capsys, override):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "detector",
            "--config",
            "synthetic-detector",
            "--out",
            str(out),
            f"data.root={tmp_path / 'world'}",
            override,
        ]
    )
    _one_line_error(capsys, code, override.split("=")[0])
    assert not out.exists()


def test_nan_in_a_config_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "task: reid\ndata:\n  root: x\noptim:\n  epochs: 2\n  milestones: [1]\n"
        "  weight_decay: .nan\n"
    )
    with pytest.raises(ConfigError, match=r"optim\.weight_decay=nan is not a finite number"):
        load_config(path)


def test_a_config_built_in_python_is_validated_when_built(tmp_path):
    # a config is checked when it is built (configs are frozen), before any task sees it
    with pytest.raises(ConfigError, match="optim.gamma=nan"):
        Config(
            task="reid",
            data=DataConfig(root=str(tmp_path / "w")),
            optim=OptimConfig(epochs=2, milestones=[1], gamma=float("nan")),
            run=RunConfig(out=str(tmp_path / "run")),
        )
    with pytest.raises(ConfigError, match="run.eval_batch_size=0"):
        Config(
            task="detector",
            data=DataConfig(root=str(tmp_path / "w")),
            optim=OptimConfig(epochs=2, milestones=[1]),
            run=RunConfig(out=str(tmp_path / "run"), eval_batch_size=0),
        )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ nothing trained is lost


def _tiny_config(tmp_path, **run) -> Config:
    settings = {"out": str(tmp_path / "run"), "workers": 0, "progress": False, "log_period": 1}
    settings.update(run)
    return Config(
        task="reid",
        data=DataConfig(crop_height=16, crop_width=8),
        model={"feature_dim": 8},
        optim=OptimConfig(lr=0.05, batch_size=8, epochs=2, milestones=[1], amp=False),
        run=RunConfig(**settings),
    )


def _trainer(config, evaluate=None, export=None) -> Trainer:
    seed_everything(config.run.seed)
    loader = build_train_loader(ColourCrops(), config, DistInfo())
    return Trainer(TinyReid(), loader, config, evaluate=evaluate, export=export)


def test_a_failing_final_evaluation_keeps_the_checkpoint_and_the_model_file(tmp_path):
    events: list[str] = []

    def export(module):
        events.append("export")
        torch.save(module.state_dict(), tmp_path / "run" / "model.pt")

    def broken(module):
        events.append("evaluate")
        raise RuntimeError("out of memory while evaluating")

    config = _tiny_config(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        _trainer(config, broken, export).train()
    assert events == ["export", "evaluate"]  # the model file came first
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", config.fingerprint())
    assert last["iteration"] == 8  # 2 epochs of 4 iterations: the whole schedule
    assert (tmp_path / "run" / "model.pt").is_file()

    # resuming the finished run only redoes what was lost: the model file and the evaluation
    events.clear()
    trainer = _trainer(config, lambda module: events.append("evaluate") or {"mAP": 1.0}, export)
    trainer.resume(tmp_path / "run" / "checkpoints" / "last.pt")
    summary = trainer.train()
    assert events == ["export", "evaluate"] and trainer.iteration == 8
    assert summary["final"]["mAP"] == 1.0 and summary["final"]["iteration"] == 8


def test_periodic_evaluations_still_come_before_their_checkpoint(tmp_path):
    """A periodic evaluation runs before the checkpoint of its iteration (which then holds the
    RNG state after it), the final one after the checkpoint and the model file."""
    order: list[tuple[str, int]] = []
    trainer_ref: list[Trainer] = []

    def evaluate(module):
        path = tmp_path / "run" / "checkpoints" / "last.pt"
        saved = load_checkpoint(path)["iteration"] if path.is_file() else 0
        order.append(("evaluate", saved))
        return {"mAP": float(trainer_ref[0].iteration)}

    config = _tiny_config(tmp_path, eval_period=1)
    trainer = _trainer(config, evaluate, lambda module: order.append(("export", 0)))
    trainer_ref.append(trainer)
    summary = trainer.train()
    # epoch 1 (iteration 4): evaluated before its checkpoint; the end: checkpoint, model, eval
    assert order == [("evaluate", 0), ("export", 0), ("evaluate", 8)]
    assert [record["iteration"] for record in summary["eval"]] == [4, 8]


def test_warm_up_longer_than_an_epoch_schedule_is_refused_before_the_first_step(tmp_path):
    config = _tiny_config(tmp_path)
    # 2 epochs of 4 iterations
    config = dataclasses.replace(
        config, optim=dataclasses.replace(config.optim, warmup_iterations=9)
    )
    with pytest.raises(
        ConfigError,
        match=r"optim.warmup_iterations=9 is longer than the whole "
        r"schedule \(8 iterations",
    ):
        _trainer(config)


def test_unwritable_checkpoint_is_a_checkpoint_error(tmp_path):
    from personsearch.errors import CheckpointError

    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(
            tmp_path / "file" / "last.pt",
            {"model": {}, "optimizer": {}, "scheduler": {}, "iteration": 0, "fingerprint": "x"},
        )


# ------------------------------------------------------------------ ONNX and pipeline settings


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mean", [0.4, ".nan", 0.4], "mean must be 3 finite numbers"),
        ("mean", [".inf", 0.4, 0.4], "mean must be 3 finite numbers"),
        ("std", [0.2, 0.2, ".nan"], "std must be 3 finite numbers"),
        ("std", [0.2, "-.inf", 0.2], "std must be 3 finite numbers"),
        ("pixel_scale", ".nan", "pixel_scale must be a positive finite number"),
        ("pixel_scale", ".inf", "pixel_scale must be a positive finite number"),
        ("pixel_scale", "0", "pixel_scale must be a positive finite number"),
    ],
)
def test_onnx_embedder_yaml_with_nan_or_inf_is_refused(tmp_path, key, value, message):
    from personsearch.search.onnx_embedder import read_embedder_config

    shown = f"[{', '.join(map(str, value))}]" if isinstance(value, list) else value
    path = tmp_path / "model.yaml"
    path.write_text(f"model: m.onnx\ninput_height: 64\ninput_width: 32\n{key}: {shown}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        read_embedder_config(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "-0.1", "1.5", "abc", "true"])
def test_pipeline_det_thresh_must_be_a_score(tmp_path, value):
    from personsearch.search.pipeline import load_pipeline

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(
        f"detector: whole-image\nreid: imagenet\ndet_thresh: {value}\n"
    )
    with pytest.raises(ConfigError, match=r"det_thresh=.* must be a number in \[0, 1\]"):
        load_pipeline(folder)


# ------------------------------------------------------------------ >= threshold everywhere


class _Proposals(torch.nn.Module):
    """An RPN stand-in proposing one fixed box (fractions of the resized image)."""

    def forward(self, images, features, targets=None):  # type: ignore[no-untyped-def]
        return [
            torch.tensor([[0.25, 0.1, 0.5, 0.9]]) * torch.tensor([w, h, w, h])
            for h, w in images.image_sizes
        ], {}


class _EvenOdds(torch.nn.Module):
    """A box predictor scoring every region exactly 0.5 (softmax of equal logits)."""

    def forward(self, x):  # type: ignore[no-untyped-def]
        return torch.zeros(len(x), 2), torch.zeros(len(x), 8)


def test_detector_keeps_a_score_equal_to_its_threshold():
    from personsearch.models.detector import DetectorConfig, build_detector

    detector = build_detector(
        DetectorConfig(backbone="mobilenet_v2", pretrained=False, min_size=128, max_size=224)
    ).eval()
    detector.rpn = _Proposals()  # type: ignore[assignment]
    detector.roi_heads.box_predictor = _EvenOdds()
    image = torch.rand(3, 128, 160)
    with torch.no_grad():
        assert detector.score_thresh == 0.5
        (kept,) = detector([image])
        assert kept["scores"].tolist() == [0.5]  # >= 0.5: kept (torchvision's > dropped it)
        detector.score_thresh = float(np.nextafter(np.float32(0.5), np.float32(1)))
        (dropped,) = detector([image])
        assert len(dropped["scores"]) == 0
        detector.score_thresh = 0.0
        assert detector.score_thresh == 0.0 and len(detector([image])[0]["scores"]) == 1


def test_every_detection_filter_keeps_scores_at_the_threshold(tmp_path):
    from personsearch.data.crops import load_detections
    from personsearch.search.torch_detector import TorchDetector

    class Scores(torch.nn.Module):
        def forward(self, images):  # type: ignore[no-untyped-def]
            return [
                {
                    "boxes": torch.tensor([[0.0, 0, 10, 20], [1, 1, 9, 19]]),
                    "scores": torch.tensor([0.5, 0.4999]),
                }
            ]

    detector = TorchDetector(Scores(), "x", score_thresh=0.5, device="cpu")
    boxes, scores = detector.detect(np.zeros((30, 20, 3), np.uint8))
    assert scores.tolist() == [0.5]
    np.savez(
        tmp_path / "d.npz",
        image_names=np.array(["a.jpg"]),
        det_image=np.array([0, 0]),
        det_boxes=np.array([[0.0, 0, 10, 20], [1, 1, 9, 19]]),
        det_scores=np.array([0.5, 0.4999], np.float32),
    )
    assert len(load_detections(tmp_path / "d.npz", 0.5)["a.jpg"]) == 1


def test_iou_of_zero_size_boxes_is_zero_without_a_warning():
    from personsearch.boxes import box_iou

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the annotation matcher's call (data/cuhk_sysu.py)
        overlaps = box_iou(
            np.array([[5.0, 5, 0, 0], [0, 0, 10, 10]]),
            np.array([5.0, 5, 0, 0]),
            fmt="xywh",
            clip_areas=False,
        )[:, 0]
    assert overlaps.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ pipeline_from_run's checkpoint


@pytest.fixture
def reid_run(tmp_path) -> tuple[Path, torch.nn.Module, torch.nn.Module, dict]:
    """A re-id run folder whose model.pt and checkpoints/last.pt hold different weights."""
    from personsearch.models.reid import build_reid_model
    from personsearch.models.saving import save_reid_model

    run = tmp_path / "reid-run"
    config = load_config(
        "synthetic-reid",
        [
            "data.crop_height=64",
            "data.crop_width=32",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "model.feature_dim=16",
            f"run.out={run}",
        ],
    )
    settings = dataclasses.replace(config.model, num_classes=3)
    torch.manual_seed(0)
    final = build_reid_model(settings).eval()
    torch.manual_seed(1)
    last = build_reid_model(settings).eval()
    save_reid_model(run / "model.pt", final, config, pids=[1, 2, 3])
    save_checkpoint(
        run / "checkpoints" / "last.pt",
        {
            "model": last.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "iteration": 7,
            "fingerprint": config.fingerprint(),
            "config": config.to_dict(),
        },
    )
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    return run, final, last, config.to_dict()


def _embed(model: torch.nn.Module, crops: list[np.ndarray]) -> np.ndarray:
    from personsearch.search.torch_embedders import TorchReidEmbedder

    return TorchReidEmbedder(model, (64, 32), "ref", device="cpu").embed_crops(crops)


def test_pipeline_from_run_uses_the_checkpoint_it_is_given(reid_run, monkeypatch):
    from personsearch.search import pipeline
    from personsearch.search.pipeline import pipeline_from_run

    monkeypatch.setattr(pipeline, "hog_available", lambda: False)
    run, final, last, config = reid_run
    crops = [
        np.random.default_rng(i).integers(0, 255, (90, 40, 3), dtype=np.uint8) for i in range(3)
    ]
    from_last = pipeline_from_run(run, config, run / "checkpoints" / "last.pt").embedder
    from_final = pipeline_from_run(run, config, run / "model.pt").embedder
    np.testing.assert_allclose(from_last.embed_crops(crops), _embed(last, crops), atol=1e-5)
    np.testing.assert_allclose(from_final.embed_crops(crops), _embed(final, crops), atol=1e-5)
    assert from_last.fingerprint != from_final.fingerprint

    # load_pipeline on a run that has not written model.pt yet: its last checkpoint
    (run / "model.pt").unlink()
    loaded = pipeline.load_pipeline(run).embedder
    np.testing.assert_allclose(loaded.embed_crops(crops), _embed(last, crops), atol=1e-5)


def test_a_detector_checkpoint_is_not_taken_for_a_reid_model(reid_run):
    from personsearch.models.saving import load_reid_model

    run, _, last, config = reid_run
    save_checkpoint(
        run / "other.pt",
        {
            "model": last.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "iteration": 1,
            "fingerprint": "x",
            "config": {**config, "task": "detector"},
        },
    )
    with pytest.raises(PersonSearchError, match="not a re-id run"):
        load_reid_model(run / "other.pt")
