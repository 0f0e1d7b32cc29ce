"""Two-process DDP on CPU (gloo): ranks stay identical and the evaluation gather is exact."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from tiny_reid import ColourCrops, TinyReid
from torch.utils.data import Dataset

from personsearch.config import Config, DataConfig, OptimConfig, RunConfig
from personsearch.engine.distributed import (
    all_gather_arrays,
    init_distributed,
    reduce_mean,
    shutdown_distributed,
)
from personsearch.engine.reid_eval import extract_embeddings
from personsearch.engine.trainer import Trainer, build_train_loader, seed_everything

WORLD = 2
EVAL_SIZE = 13  # not a multiple of the world size: no padding may leak into the result


class EvalCrops(Dataset):
    def __init__(self) -> None:
        self.images = torch.randn(EVAL_SIZE, 3, 16, 8, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return EVAL_SIZE

    def __getitem__(self, index):
        return self.images[index], -1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        config = Config(
            name="ddp",
            data=DataConfig(crop_height=16, crop_width=8),
            optim=OptimConfig(lr=0.05, batch_size=8, epochs=2, milestones=[1], amp=False),
            run=RunConfig(out=out, workers=0, progress=False, log_period=2),
        )
        seed_everything(rank)  # different starts: DDP must broadcast rank 0's weights
        loader = build_train_loader(ColourCrops(), config, info)
        evaluations = []

        def evaluate(model):
            embeddings = extract_embeddings(model, EvalCrops(), batch_size=4, dist_info=info)
            evaluations.append(embeddings)
            return {"rows": float(len(embeddings))}

        trainer = Trainer(TinyReid(), loader, config, info, evaluate=evaluate)
        summary = trainer.train()
        gathered = all_gather_arrays(np.full((rank + 1, 2), rank, dtype=np.int64))
        torch.save(
            {
                "state": trainer.module.state_dict(),
                "embeddings": torch.from_numpy(evaluations[-1]),
                "gathered": [torch.from_numpy(g) for g in gathered],
                "mean": reduce_mean({"x": float(rank)})["x"],
                "iteration": trainer.iteration,
                "final": summary["final"],
            },
            os.path.join(out, f"rank{rank}.pt"),
        )
    except BaseException:
        shutdown_distributed(synchronize=False)
        raise
    shutdown_distributed()


def test_two_process_training_and_gather(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert ranks[0]["iteration"] == 2 * (32 // 8)  # the global batch of 8 is split 4 + 4
    # Every eval crop embedded once, in dataset order: equal to a single-process pass.
    model = TinyReid()
    model.load_state_dict(ranks[0]["state"])
    expected = extract_embeddings(model, EvalCrops(), batch_size=5)
    for rank in ranks:
        assert rank["embeddings"].shape == (EVAL_SIZE, 8)
        torch.testing.assert_close(rank["embeddings"], torch.from_numpy(expected))
        assert [g.tolist() for g in rank["gathered"]] == [[[0, 0]], [[1, 1], [1, 1]]]
        assert rank["mean"] == 0.5
    assert ranks[0]["final"]["rows"] == EVAL_SIZE  # rank 0 logged the evaluation
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
