"""Multi-process training through torchrun: process-group set-up, rank helpers, gathers.

`torchrun --nproc_per_node=N -m personsearch train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; a
plain `personsearch train ...` runs as a single process with no process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from personsearch.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, how many there are, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={name} but CUDA is not available here; use cpu or auto")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise ConfigError(f"run.device={name}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (if any); pick the device.

    The backend is NCCL on CUDA and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    torch_device = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shutdown_distributed(synchronize: bool = True) -> None:
    """Leave the process group. With `synchronize` (after a successful run), every rank waits
    for the others first: a rank tearing its connections down while a peer is still using
    them can make the peer abort at exit (seen with gloo). After an error, it does not wait,
    since the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's array (same dtype and trailing shape, any length), in rank order.

    Lengths are exchanged first and each array padded to the longest, since collectives need
    equal sizes; the padding is cut off again before returning.
    """
    array = np.ascontiguousarray(array)
    if not is_initialized():
        return [array]
    device = _comm_device()
    length = torch.tensor([array.shape[0]], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(get_world_size())]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    longest = max(sizes)
    local = torch.from_numpy(array).to(device)
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad])
    gathered = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(gathered, local)
    return [g[:n].cpu().numpy() for g, n in zip(gathered, sizes, strict=True)]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step every
    rank holds statistics updated by its own batch; evaluation and saving need one set.
    """
    if not is_initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average scalar values over ranks (for logging losses that every rank computed)."""
    if not is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    tensor /= get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))
