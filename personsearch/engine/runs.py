"""What every training task does around its own data and model: one run folder, one setup.

`run_task(body, config, resume)` initialises the process group (torchrun or single process),
calls `body(config, checkpoint, dist_info)` once the run folder is ready, and shuts down.
Ready means: a run folder that already holds a checkpoint is only continued with `resume`, the
resolved config is saved in it, the synthetic world exists if it is the dataset, and every RNG
is seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from personsearch.config import Config, save_config
from personsearch.data.registry import DATASET_SPECS
from personsearch.data.synthetic import generate_world
from personsearch.engine import distributed
from personsearch.engine.checkpoint import latest_checkpoint
from personsearch.engine.distributed import DistInfo
from personsearch.engine.trainer import seed_everything
from personsearch.errors import ConfigError

TaskBody = Callable[[Config, "Path | None", DistInfo], dict[str, Any]]


def ensure_synthetic_world(config: Config, dist_info: DistInfo | None = None) -> Path:
    """Generate the synthetic world at data.root (preset data.synthetic_size) unless it exists."""
    dist_info = dist_info or DistInfo()
    if not config.data.root:
        raise ConfigError("data.root is empty: give the folder of the synthetic world")
    root = Path(config.data.root)
    if dist_info.is_main and not (root / "annotation").is_dir():
        print(f"generating the {config.data.synthetic_size} synthetic world in {root}")
        generate_world(root, config.data.synthetic_size, seed=0, progress=config.run.progress)
    distributed.barrier()
    return root


def prepare_run(config: Config, resume: bool, dist_info: DistInfo) -> Path | None:
    """Set up the run folder; returns the checkpoint to resume from, if any."""
    run_dir = config.run_dir
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and not resume:
        raise ConfigError(
            f"run folder {run_dir} already holds {checkpoint}: pass --resume to continue it, "
            "or choose another folder with --out"
        )
    if resume and checkpoint is None and dist_info.is_main:
        print(f"no checkpoint in {run_dir}: starting from the beginning")
    if dist_info.is_main:
        save_config(config, run_dir / "config.yaml")
    spec = DATASET_SPECS.get(config.data.dataset)
    if spec is not None and spec.generated:  # the synthetic world: made on first use
        ensure_synthetic_world(config, dist_info)
    seed_everything(config.run.seed, config.run.deterministic)
    return checkpoint


def run_task(body: TaskBody, config: Config, resume: bool) -> dict[str, Any]:
    """Run a training task body in a ready run folder, single process or under torchrun."""
    dist_info = distributed.init_distributed(config.run.device)
    try:
        checkpoint = prepare_run(config, resume, dist_info)
        result = body(config, checkpoint, dist_info)
    except BaseException:
        distributed.shutdown_distributed(synchronize=False)
        raise
    distributed.shutdown_distributed()
    return result
