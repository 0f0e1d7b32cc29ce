"""End to end: `personsearch train reid` on the tiny synthetic world, resume, reload model.pt."""

from __future__ import annotations

import json

import pytest
import torch

from personsearch.cli import main
from personsearch.models.saving import load_reid_model

TINY = [
    "data.crop_height=32",
    "data.crop_width=16",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.feature_dim=16",
    "optim.batch_size=16",
    "optim.epochs=1",
    "optim.milestones=[1]",
    "run.workers=0",
    "run.progress=false",
    "run.log_period=2",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from personsearch.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate_world(root, "tiny", seed=0, workers=0)
    return root


def test_train_reid_on_the_synthetic_world(world, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "reid",
        "--config",
        "synthetic-reid",
        "--out",
        str(run),
        f"data.root={world}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *TINY,
    ]
    assert main(args) == 0
    assert {"config.yaml", "metrics.json", "metrics.jsonl", "model.pt", "events"} <= {
        p.name for p in run.iterdir()
    }
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["split"] == "train" and records[0]["total"] > 0
    # a second start without --resume refuses to overwrite the run
    assert main(args) == 1
    assert "pass --resume" in capsys.readouterr().err
    # --resume from the run folder alone, one more epoch
    assert main(["train", "reid", "--resume", "--out", str(run), "optim.epochs=2"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 2 * state["iters_per_epoch"]
    model, meta = load_reid_model(run)
    assert meta["crop_size"] == [32, 16] and not model.training
    embeddings = model(torch.randn(2, 3, 32, 16))
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    # the end-of-training evaluation, and the same on demand from the run folder
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert 0 <= final["mAP"] <= 1 and final["iteration"] == state["iteration"]
    assert main(["evaluate-reid", "--run", str(run), "--workers", "0"]) == 0
    metrics = json.loads((run / "eval-reid-synthetic.json").read_text())
    assert metrics["mAP"] == pytest.approx(final["mAP"]) and metrics["queries"] > 0
