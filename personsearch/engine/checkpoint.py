"""Training checkpoints: written atomically, loaded with `weights_only=True`, checked against the
config. (The trained model file, model.pt, is personsearch.models.saving's.)

A checkpoint holds the model, optimiser, scheduler and AMP scaler states, the global iteration,
every RNG state (python, numpy, torch, cuda) stored as tensors and plain lists so that the safe
loader accepts them, and the fingerprint of the config that made it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import CheckpointError
from personsearch.io import atomic_path
from personsearch.models.saving import TRAINING_CHECKPOINT_KEYS

FORMAT_VERSION = 1
# one list: models/saving.py recognises a checkpoint by the same keys (to load weights from it)
REQUIRED_KEYS = TRAINING_CHECKPOINT_KEYS


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as tensors and lists of ints."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    assert np_name == "MT19937"
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states `capture_rng_state` returned (cuda only where it was saved)."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write `state` atomically: a reader sees the old file or the complete new one."""
    missing = [k for k in REQUIRED_KEYS if k not in state and k != "format_version"]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    try:
        with atomic_path(path) as tmp:
            torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    except OSError as error:  # a full disk, an unwritable run folder
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error


def load_checkpoint(
    path: str | os.PathLike[str],
    fingerprint: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint safely; CheckpointError when missing, corrupt or made by another config."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a personsearch checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint: it lacks {', '.join(missing)}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, expected {FORMAT_VERSION}"
        )
    if fingerprint is not None and state["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path} was made with another model or data config (fingerprint "
            f"{state['fingerprint']}, this config {fingerprint}): resume with the run's own "
            "config.yaml or start a new run folder"
        )
    return state


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's last complete checkpoint (checkpoints/last.pt), or None."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None
