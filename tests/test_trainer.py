"""The trainer on a tiny model: loss goes down, resume is exact, outputs land in the run folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_reid import ColourCrops, TinyReid

from personsearch.config import Config, DataConfig, OptimConfig, RunConfig
from personsearch.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from personsearch.engine.trainer import (
    Hook,
    StepWarmup,
    Trainer,
    build_train_loader,
    seed_everything,
)
from personsearch.errors import CheckpointError


def make_config(tmp_path, name="run", **optim):
    settings = {"lr": 0.05, "batch_size": 8, "epochs": 4, "milestones": [2], "amp": False}
    settings.update(optim)
    return Config(
        task="reid",
        name=name,
        data=DataConfig(crop_height=16, crop_width=8),
        model={"feature_dim": 8},  # unused by TinyReid: a model section as written
        optim=OptimConfig(**settings),
        run=RunConfig(out=str(tmp_path / name), workers=0, progress=False, log_period=1),
    )


def with_run(config, **run):
    """The config with run settings changed (configs are frozen)."""
    return dataclasses.replace(config, run=dataclasses.replace(config.run, **run))


def make_trainer(config, evaluate=None, hooks=()):
    seed_everything(config.run.seed)
    loader = build_train_loader(ColourCrops(), config, _dist())
    return Trainer(TinyReid(), loader, config, evaluate=evaluate, extra_hooks=hooks)


def _dist():
    from personsearch.engine.distributed import DistInfo

    return DistInfo()


class StopAt(Hook):
    """Simulates a killed run: raises after iteration `at` (after that step's checkpoint)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer):
        if trainer.iteration == self.at:
            raise KeyboardInterrupt


def mean_loss(model, dataset):
    model.eval()
    images = dataset.images
    labels = torch.as_tensor(dataset.labels)
    with torch.no_grad():
        logits = model.classifier(model.embed(images))
    model.train()
    return F.cross_entropy(logits, labels).item()


def test_tiny_training_lowers_the_loss(tmp_path):
    config = make_config(tmp_path, epochs=6, milestones=[4])
    trainer = make_trainer(config)
    before = mean_loss(trainer.module, ColourCrops())
    trainer.train()
    after = mean_loss(trainer.module, ColourCrops())
    assert trainer.iteration == 6 * 4
    assert after < 0.7 * before, (before, after)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 24 and train[0]["lr"] == 0.05 and train[-1]["lr"] == pytest.approx(0.005)
    assert np.mean([r["total"] for r in train[-4:]]) < np.mean([r["total"] for r in train[:4]])


@pytest.mark.parametrize(
    ("schedule", "stop_at"),
    [
        ({"epochs": 4, "milestones": [2]}, 8),  # stops at an epoch boundary (epoch checkpoints)
        ({"iterations": 14, "milestones": [6]}, 5),  # stops mid-epoch, checkpoint every 3 iters
    ],
)
def test_resume_continues_exactly(tmp_path, schedule, stop_at):
    period = {"checkpoint_period": 3} if "iterations" in schedule else {}
    straight = make_trainer(with_run(make_config(tmp_path, "straight", **schedule), **period))
    straight.train()

    config = with_run(make_config(tmp_path, "resumed", **schedule), **period)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(config, hooks=[StopAt(stop_at)]).train()
    torch.manual_seed(1234)  # a new process: RNG state differs until the checkpoint restores it
    resumed = make_trainer(config)
    resumed.resume(tmp_path / "resumed" / "checkpoints" / "last.pt")
    saved_at = stop_at - stop_at % (3 if "iterations" in schedule else 4)
    assert resumed.iteration == saved_at
    resumed.train()

    assert resumed.iteration == straight.iteration
    for (name, a), b in zip(
        straight.module.state_dict().items(), resumed.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    # the log of the interrupted run is cut back to the checkpoint: one record per iteration
    records = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["iteration"] for r in records if r["split"] == "train"] == list(
        range(1, straight.iteration + 1)
    )


def test_run_folder_outputs_and_evaluation_periods(tmp_path):
    calls = []

    def evaluate(model):
        assert not model.training
        calls.append(1)
        return {"mAP": 50.0 + len(calls)}

    config = with_run(
        make_config(tmp_path, epochs=4, milestones=[2]), eval_period=2, keep_checkpoints=True
    )
    trainer = make_trainer(config, evaluate=evaluate)
    summary = trainer.train()
    run = tmp_path / "run"
    assert len(calls) == 2  # after epochs 2 and 4 (the end)
    assert summary["final"]["mAP"] == 52.0 and summary["final"]["iteration"] == 16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["mAP"] == 52.0 and metrics["iteration"] == 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_1.pt",
        "epoch_2.pt",
        "epoch_3.pt",
        "epoch_4.pt",
        "last.pt",
    ]
    assert any((run / "events").iterdir())
    state = load_checkpoint(run / "checkpoints" / "epoch_2.pt", config.fingerprint())
    assert state["iteration"] == 8


def test_checkpoint_errors(tmp_path):
    config = make_config(tmp_path)
    trainer = make_trainer(config)
    path = tmp_path / "ck.pt"
    trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(path, fingerprint="0000")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)
    other = make_config(tmp_path, batch_size=16)  # fewer iterations per epoch
    trainer.save_checkpoint(path)
    seed_everything(0)
    loader = build_train_loader(ColourCrops(), other, _dist())
    with pytest.raises(CheckpointError, match="iterations per epoch"):
        Trainer(TinyReid(), loader, other).resume(path)


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    import random

    seed_everything(5)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(
        tmp_path / "r.pt",
        {
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "iteration": 0,
            "fingerprint": "x",
            "rng": state,
        },
    )
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_step_schedule_with_warmup():
    factor = StepWarmup([10, 20], gamma=0.1, warmup=4, warmup_factor=0.2)
    assert factor(0) == pytest.approx(0.2) and factor(2) == pytest.approx(0.6)
    assert factor(4) == 1 and factor(10) == pytest.approx(0.1) and factor(25) == pytest.approx(0.01)
