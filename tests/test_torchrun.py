"""`torchrun --nproc_per_node=2 -m personsearch train reid ...` on the CPU (gloo), then --resume
on two processes and on one.

The launcher is the real one, as the docs show it (`--standalone` picks a free port on this
machine, so parallel test runs do not collide). A tiny re-id config on the tiny synthetic world:
each launch takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from personsearch.cli import main

TINY = [
    "data.crop_height=32",
    "data.crop_width=16",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.feature_dim=16",
    "optim.batch_size=16",
    "optim.milestones=[1]",
    "run.workers=0",
    "run.progress=false",
    "run.log_period=2",
    "run.device=cpu",
]


def torchrun() -> list[str]:
    """The torchrun script next to this Python, else its module (the same launcher)."""
    script = Path(sys.executable).parent / "torchrun"
    if script.is_file():
        return [str(script)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def launch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*torchrun(), "--standalone", "--nproc_per_node=2", "-m", "personsearch", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from personsearch.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate_world(root, "tiny", seed=0, workers=0)
    return root


def test_torchrun_trains_reid_on_two_processes_and_resumes(world: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = runs / "ddp-reid"
    first = launch(
        tmp_path,
        "train",
        "reid",
        "--config",
        "synthetic-reid",
        "--out",
        str(run),
        f"data.root={world}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "optim.epochs=1",
        *TINY,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp-reid"]  # both ranks share one run folder
    assert {"config.yaml", "metrics.json", "metrics.jsonl", "model.pt", "checkpoints"} <= {
        p.name for p in run.iterdir()
    }
    assert first.stdout.count("run folder:") == 1  # only rank 0 reports
    config = (run / "config.yaml").read_text()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    per_epoch = state["iters_per_epoch"]
    assert state["iteration"] == per_epoch

    # the run's own config.yaml, one more epoch, on two processes again
    second = launch(tmp_path, "train", "reid", "--resume", "--out", str(run), "optim.epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 2 * per_epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["iteration"] for r in records if r["split"] == "train"]
    assert train == sorted(set(train)) and train[-1] == 2 * per_epoch  # logged once, by rank 0
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["iteration"] == 2 * per_epoch and 0 <= final["mAP"] <= 1
    assert [p.name for p in runs.iterdir()] == ["ddp-reid"]
    assert config != (run / "config.yaml").read_text()  # the resumed run saved its new length

    # the global batch defines the schedule, so one process can continue what two started
    assert main(["train", "reid", "--resume", "--out", str(run), "optim.epochs=3"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 3 * per_epoch and state["iters_per_epoch"] == per_epoch
