"""Teacher diagnostics: the top level's softened distribution (entropy, its maximum, top
probability) and per-level accuracy, from the training forward's own logits, logged by the
trainer to metrics.jsonl, metrics.json and TensorBoard."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from personsearch.config import Config, DataConfig, OptimConfig, RunConfig
from personsearch.engine.distributed import DistInfo
from personsearch.engine.trainer import Trainer, build_train_loader, seed_everything
from personsearch.models.losses import softened_distribution_stats, top1_accuracy
from personsearch.models.reid import HEADS, ReidConfig, ReidModel

CLASSES = 4


def test_uniform_and_peaked_distributions() -> None:
    flat = softened_distribution_stats(torch.zeros(3, 10), temperature=3.0)
    assert flat["entropy"].item() == pytest.approx(math.log(10), abs=1e-6)
    assert flat["max_entropy"].item() == pytest.approx(math.log(10), abs=1e-6)
    assert flat["max_prob"].item() == pytest.approx(0.1, abs=1e-6)
    peaked = softened_distribution_stats(torch.tensor([[300.0, 0.0, 0.0]]), temperature=3.0)
    assert peaked["entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert peaked["max_prob"].item() == pytest.approx(1.0)
    # the temperature softens: the same logits have more entropy at T = 3 than at T = 1
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 4
    assert (
        softened_distribution_stats(logits, 3.0)["entropy"]
        > softened_distribution_stats(logits, 1.0)["entropy"]
    )
    assert top1_accuracy(torch.eye(3), torch.tensor([0, 1, 0])).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("head", HEADS)
def test_every_head_reports_the_teacher_at_its_temperature(head: str) -> None:
    torch.manual_seed(0)
    model = ReidModel(
        ReidConfig(
            num_classes=CLASSES,
            head=head,
            backbone="resnet18",
            pretrained=False,
            feature_dim=8,
            temperature=2.0,
        )
    ).train()
    images, labels = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 3])
    losses = model(images, labels)
    metrics = model.training_metrics()
    assert set(metrics) == {
        "teacher/entropy",
        "teacher/max_entropy",
        "teacher/max_prob",
        *(f"accuracy/{name}" for name in model.level_names),
    }
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())
    assert metrics["teacher/max_entropy"].item() == pytest.approx(math.log(CLASSES))
    assert 0 < metrics["teacher/entropy"] <= metrics["teacher/max_entropy"] + 1e-6
    # the same numbers as the logits of that forward (train-mode BatchNorm: same batch statistics)
    torch.manual_seed(0)
    logits = model.classify(model.level_features(images))
    expected = softened_distribution_stats(logits[-1], 2.0)
    torch.testing.assert_close(metrics["teacher/entropy"], expected["entropy"])
    assert sum(losses.values()).requires_grad  # the losses are untouched by the diagnostics


class Crops(Dataset):
    """Random 64 x 32 crops of 4 classes (colour shift per class), keyed as EpochSampler does."""

    def __init__(self, size: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.labels = np.arange(size) % CLASSES
        base = rng.normal(size=(CLASSES, 3, 1, 1)).astype(np.float32)
        noise = rng.normal(scale=0.5, size=(size, 3, 64, 32)).astype(np.float32)
        self.images = torch.from_numpy(base[self.labels] + noise)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index, _, _ = key
        return self.images[index], int(self.labels[index])


def test_a_tiny_run_logs_them_everywhere(tmp_path) -> None:
    config = Config(
        task="reid",
        data=DataConfig(crop_height=64, crop_width=32),
        optim=OptimConfig(lr=0.01, batch_size=8, epochs=2, milestones=[2], amp=False),
        run=RunConfig(out=str(tmp_path / "run"), workers=0, progress=False, log_period=2),
    )
    seed_everything(0)
    model = ReidModel(
        ReidConfig(num_classes=CLASSES, backbone="resnet18", pretrained=False, feature_dim=8)
    )
    loader = build_train_loader(Crops(), config, DistInfo())
    Trainer(model, loader, config).train()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4]
    for record in train:
        assert set(record["teacher"]) == {"entropy", "max_entropy", "max_prob"}
        assert set(record["accuracy"]) == {"res3", "res4", "res5"}
        assert record["teacher"]["max_entropy"] == pytest.approx(math.log(CLASSES))
        assert record["speed"]["images_per_s"] > 0 and "peak_mem_mb" not in record["speed"]
    summary = json.loads((run / "metrics.json").read_text())
    assert [p["iteration"] for p in summary["teacher"]] == [2, 4]
    assert summary["teacher_final"] == summary["teacher"][-1]
    assert summary["teacher_final"]["entropy"] == pytest.approx(train[-1]["teacher"]["entropy"])
    assert summary["accuracy"][-1]["res5"] == pytest.approx(train[-1]["accuracy"]["res5"])
    assert summary["train_last"]["teacher"] == train[-1]["teacher"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "events"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/total",
        "train/teacher/entropy",
        "train/teacher/max_entropy",
        "train/teacher/max_prob",
        "train/accuracy/res3",
        "train/accuracy/res5",
        "train/speed/images_per_s",
    } <= tags
    entropy = [e.value for e in events.Scalars("train/teacher/entropy")]
    assert entropy == pytest.approx([r["teacher"]["entropy"] for r in train], rel=1e-6)
