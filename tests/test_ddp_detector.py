"""Two-process DDP on CPU (gloo) of `personsearch train detector`, through the CLI itself.

Each spawned process is one rank, as torchrun would start it (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment), and runs `cli.main(["train", "detector", ...])` on the tiny
fake CUHK-SYSU folder of `cuhk_fixture` (4 training images of 160 x 120) with MobileNetV2 at a
small input size. The trainer class the detector task uses is swapped, inside the worker only,
for a subclass that records what each rank trained on and wrote; everything else is the real path.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from cuhk_fixture import write_cuhk_sysu

WORLD = 2
ITERATIONS = 4  # 4 training images, global batch 2: two epochs of two steps
SMALL_MODEL = [
    "model.pretrained=false",
    "model.min_size=128",
    "model.max_size=224",
    "model.rpn_pre_nms_top_n_train=300",
    "model.rpn_pre_nms_top_n_test=300",
    "model.rpn_post_nms_top_n_test=64",
    "model.box_batch_size_per_image=32",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, root: str, run: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from personsearch import cli
    from personsearch.engine import detector_task
    from personsearch.engine.trainer import Trainer

    seen: list[tuple[int, int]] = []  # (epoch, scene index) of every training image
    losses: list[float] = []
    saved: list[str] = []
    trainers: list[Trainer] = []

    class RecordingTrainer(Trainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            trainers.append(self)

        def run_step(self, batch) -> None:
            _, targets = batch
            seen.extend((self.epoch, int(t["image_index"])) for t in targets)
            super().run_step(batch)
            losses.append(float(self.last_losses["total"]))

        def save_checkpoint(self, path) -> None:
            saved.append(Path(path).name)
            super().save_checkpoint(path)

    detector_task.Trainer = RecordingTrainer  # the task looks the class up when it runs
    status = cli.main(
        [
            "train",
            "detector",
            "--config",
            "synthetic-detector",
            "--out",
            run,
            "data.dataset=cuhk-sysu",
            f"data.root={root}",
            "run.device=cpu",
            "run.workers=0",
            "run.progress=false",
            "run.log_period=1",
            "run.checkpoint_period=2",
            f"optim.iterations={ITERATIONS}",
            "optim.milestones=[3]",
            "optim.warmup_iterations=0",
            *SMALL_MODEL,
        ]
    )
    (trainer,) = trainers
    torch.save(
        {
            "status": status,
            "state": trainer.module.state_dict(),
            "seen": seen,
            "losses": losses,
            "saved": saved,
            "logged": trainer.logger.enabled,
            "iteration": trainer.iteration,
        },
        os.path.join(out, f"rank{rank}.pt"),
    )


def test_two_process_detector_training(tmp_path: Path) -> None:
    root, run = tmp_path / "cuhk", tmp_path / "run"
    write_cuhk_sysu(root)
    mp.spawn(
        _worker, args=(_free_port(), str(root), str(run), str(tmp_path)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["status"] for r in ranks] == [0, 0]
    assert [r["iteration"] for r in ranks] == [ITERATIONS, ITERATIONS]

    # gradients were averaged: ranks that trained on different images hold the same weights
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    model = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, model[name]), name

    # the global batch of 2 is split 1 + 1; within an epoch the ranks' images are disjoint and
    # together cover the 4 training images once
    for rank in ranks:
        assert len(rank["seen"]) == ITERATIONS
    for epoch in range(ITERATIONS // 2):
        mine = [{i for e, i in rank["seen"] if e == epoch} for rank in ranks]
        assert len(mine[0]) == len(mine[1]) == 2
        assert not mine[0] & mine[1]
        assert mine[0] | mine[1] == {0, 1, 2, 3}

    assert all(math.isfinite(loss) for rank in ranks for loss in rank["losses"])

    # rank 0 alone wrote checkpoints and metrics: every step logged once, each loss being the
    # mean of the two ranks' losses at that step
    assert ranks[0]["saved"] == ["last.pt", "last.pt"] and ranks[1]["saved"] == []
    assert ranks[0]["logged"] and not ranks[1]["logged"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["iteration"] for r in train] == list(range(1, ITERATIONS + 1))
    for step, record in enumerate(train):
        expected = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        assert math.isclose(record["total"], expected, rel_tol=1e-5)
    evals = [r for r in records if r["split"] == "eval"]
    assert len(evals) == 1 and 0 <= evals[0]["recall_all"] <= 100
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["iteration"] == ITERATIONS
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == ITERATIONS and state["iters_per_epoch"] == 2
