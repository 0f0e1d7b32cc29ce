"""One trainer for every model: a short loop, with logging, evaluation and checkpoints as hooks.

The contract with a model: in training mode `model(*batch)` returns a dict of named scalar
losses, already weighted: every loss weight lives in the model's own config section, the one place
that defines the objective, and the trainer sums what it is given. A model may also offer
`training_metrics()`: named scalar tensors it computed in its last training forward (diagnostics,
not losses); they are averaged and logged with the losses, and a "group/name" key is logged as
`name` inside `group` (metrics.jsonl) and as `train/group/name` (TensorBoard). The loader's
sampler must offer `set_epoch(epoch, start_batch)` and `batches_per_epoch` (`EpochSampler`
does), which makes the data order a function of the epoch and lets a resumed run skip exactly the
batches it already trained on.

The only progress state is the global iteration: epochs, milestones and periods given in epochs
are converted to iterations once, so epoch- and iteration-based schedules share one code path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from personsearch.config import Config, OptimConfig
from personsearch.data.samplers import EpochSampler
from personsearch.engine import checkpoint as ckpt
from personsearch.engine.distributed import DistInfo, broadcast_buffers, reduce_mean
from personsearch.engine.logging import MetricsLogger, nest_keys, progress_bar
from personsearch.errors import CheckpointError, ConfigError, PersonSearchError

Evaluator = Callable[[nn.Module], dict[str, float]]
#: Writes the trained model's final file (model.pt) from the module; called on rank 0 only.
Exporter = Callable[[nn.Module], None]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (the same on every rank, so ranks start identical)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


class StepWarmup:
    """LR factor at an iteration: linear warm-up, then x gamma at each milestone (iterations).

    A plain object (not a lambda) so LambdaLR can save and restore it.
    """

    def __init__(
        self, milestones: Sequence[int], gamma: float, warmup: int = 0, warmup_factor: float = 1.0
    ) -> None:
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup = int(warmup)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, iteration: int) -> float:
        factor = self.gamma ** sum(iteration >= m for m in self.milestones)
        if iteration < self.warmup:
            alpha = iteration / self.warmup
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, iters_per_unit: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step decay with milestones given in the schedule's unit, stepped every iteration."""
    factor = StepWarmup(
        [m * iters_per_unit for m in optim.milestones],
        optim.gamma,
        optim.warmup_iterations,
        optim.warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) tuples, lists and dicts, moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def build_train_loader(
    dataset: Dataset,
    config: Config,
    dist_info: DistInfo,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A loader over this rank's share of every global batch, in `EpochSampler` order.

    The dataset must accept the sampler's `(index, seed, epoch)` keys. The loader gets its own
    generator so that creating an iterator never draws from the global torch RNG (that would
    make a run resumed mid-epoch diverge from an uninterrupted one).
    """
    batch, world = config.optim.batch_size, dist_info.world_size
    if batch % world:
        raise ConfigError(f"optim.batch_size={batch} does not split evenly over {world} processes")
    try:
        sampler = EpochSampler(
            len(dataset), batch, config.run.seed, rank=dist_info.rank, world_size=world
        )
    except ValueError as error:
        raise ConfigError(f"optim.batch_size={batch}: {error}") from error
    workers = config.run.workers
    return DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=dist_info.device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config.run.seed),
        collate_fn=collate_fn,
    )


class Hook:
    """Something that acts at points of the loop; every method is optional."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


class Trainer:
    """Trains `model` on `loader` for the schedule in `config.optim`; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        loader: DataLoader,
        config: Config,
        dist_info: DistInfo | None = None,
        evaluate: Evaluator | None = None,
        extra_hooks: Iterable[Hook] = (),
        logger: MetricsLogger | None = None,
        export: Exporter | None = None,
    ) -> None:
        self.config = config
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.loader = loader
        sampler = loader.sampler
        if not (hasattr(sampler, "set_epoch") and hasattr(sampler, "batches_per_epoch")):
            raise TypeError(
                "the loader's sampler needs set_epoch(epoch, start_batch) (EpochSampler)"
            )
        self.sampler = sampler
        self.iters_per_epoch = int(sampler.batches_per_epoch)
        optim = config.optim
        self.iters_per_unit = 1 if config.iteration_based else self.iters_per_epoch
        self.max_iter = (
            optim.iterations if config.iteration_based else optim.epochs * self.iters_per_epoch
        )
        self.iteration = 0
        if optim.warmup_iterations > self.max_iter:
            raise ConfigError(
                f"optim.warmup_iterations={optim.warmup_iterations} is longer than the whole "
                f"schedule ({self.max_iter} iterations: {optim.epochs} epochs of "
                f"{self.iters_per_epoch})"
            )

        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if self.dist.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=device_ids,
                find_unused_parameters=config.run.find_unused_parameters,
            )
        self.optimizer = build_optimizer(self.module, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, self.iters_per_unit)
        self.amp = optim.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.run_dir = config.run_dir
        self.logger = logger or MetricsLogger(self.run_dir, enabled=self.dist.is_main)
        # After the last step, the checkpoint and the model file are written before the final
        # evaluation: an evaluation that fails (memory, a bad setting) loses no training.
        # Periodic evaluations keep running before their checkpoint, which then holds the RNG
        # state after them (a resumed run continues exactly as an uninterrupted one).
        self.hooks: list[Hook] = [LoggingHook(config.run.log_period, config.run.progress)]
        final_eval: Hook | None = None
        if evaluate is not None and config.run.evaluate:
            self.hooks.append(EvalHook(evaluate, config.run.eval_period * self.iters_per_unit))
            final_eval = FinalEvalHook(evaluate)
        self.hooks.append(CheckpointHook(config.run.checkpoint_period * self.iters_per_unit))
        if export is not None:
            self.hooks.append(ExportHook(export))
        if final_eval is not None:
            self.hooks.append(final_eval)
        self.hooks.extend(extra_hooks)
        self.last_losses: dict[str, torch.Tensor] = {}
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.last_eval: dict[str, float] | None = None
        self.hook_seconds = 0.0  # time spent in hooks (evaluation, checkpoints): not training

    # ---- progress in the schedule's terms

    @property
    def epoch(self) -> int:
        """The epoch the next iteration belongs to."""
        return self.iteration // self.iters_per_epoch

    @property
    def done(self) -> bool:
        return self.iteration >= self.max_iter

    def at_period(self, period_iters: int) -> bool:
        """True after the last step of a period (and always after the very last step)."""
        return self.done or (period_iters > 0 and self.iteration % period_iters == 0)

    # ---- the loop

    def train(self) -> dict[str, Any]:
        """Train to the end of the schedule (from where a resumed run stopped).

        After the last step: checkpoints/last.pt, then the model file (`export`), then the final
        evaluation. A run resumed at the end of its schedule (its last process may have died in
        the final evaluation) writes the model file and evaluates again.
        """
        self.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        while not self.done:
            start = self.iteration - self.epoch * self.iters_per_epoch
            self.sampler.set_epoch(self.epoch, start_batch=start)
            for batch in self.loader:
                self.run_step(batch)
                started = time.perf_counter()
                for hook in self.hooks:
                    hook.after_step(self)
                self.hook_seconds += time.perf_counter() - started
                if self.done:
                    break
        broadcast_buffers(self.module)  # every rank ends with rank 0's model
        for hook in self.hooks:
            hook.after_train(self)
        self.logger.write_summary({"iteration": self.iteration, "max_iter": self.max_iter})
        self.logger.close()
        return self.logger.summary()

    def run_step(self, batch: Any) -> None:
        batch = move_to(batch, self.device)
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            losses = self.model(*batch) if isinstance(batch, list | tuple) else self.model(batch)
        if not isinstance(losses, dict) or not losses:
            raise TypeError("a model in training mode must return a non-empty dict of losses")
        total = sum(value.float() for value in losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        self.last_losses["total"] = total.detach()
        metrics = getattr(self.module, "training_metrics", None)
        if callable(metrics):  # computed in the forward above: nothing extra to run
            self.last_metrics = {name: value.detach() for name, value in metrics().items()}

    def evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        """Run an evaluator on every rank with the model in eval mode; log the result."""
        broadcast_buffers(self.module)  # one set of BatchNorm statistics on every rank
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = evaluator(self.module)
        finally:
            self.module.train()
        self.last_eval = metrics
        self.logger.log("eval", self.iteration, self.iteration / self.iters_per_epoch, metrics)
        return metrics

    # ---- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "iters_per_epoch": self.iters_per_epoch,
            "rng": ckpt.capture_rng_state(),
            "fingerprint": self.config.fingerprint(),
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, path: str | Path) -> None:
        ckpt.save_checkpoint(path, self.state_dict())

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint: weights, optimiser, schedule, scaler, iteration and RNG."""
        state = ckpt.load_checkpoint(path, self.config.fingerprint(), map_location=self.device)
        if state.get("iters_per_epoch") != self.iters_per_epoch:
            raise CheckpointError(
                f"{path} was trained with {state.get('iters_per_epoch')} iterations per epoch, "
                f"this run has {self.iters_per_epoch}: the dataset or optim.batch_size changed"
            )
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{path} does not fit this model: {error}") from error
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        ckpt.restore_rng_state(state["rng"])
        self.logger.resume_from(self.iteration)


class LoggingHook(Hook):
    """Training scalars every `period` iterations (averaged over ranks) and a progress bar.

    Each record also has `speed`: `images_per_s`, the global samples (optim.batch_size per step,
    all processes) per second of the period, data loading included and time in other hooks
    (evaluation, checkpoints) left out; and on CUDA `peak_mem_mb`, this process's peak of
    allocated GPU memory since the start of training. The first period also holds start-up
    costs (loader workers, cuDNN autotuning).
    """

    def __init__(self, period: int, progress: bool = True) -> None:
        self.period = period
        self.progress = progress
        self.bar = None
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.started = 0.0
        self.hook_seconds = 0.0

    def before_train(self, trainer: Trainer) -> None:
        self.bar = progress_bar(
            trainer.max_iter, trainer.iteration, self.progress and trainer.dist.is_main
        )
        self.started, self.hook_seconds = time.perf_counter(), trainer.hook_seconds
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)

    def after_step(self, trainer: Trainer) -> None:
        for name, value in {**trainer.last_metrics, **trainer.last_losses}.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
        self.count += 1
        self.bar.update(1)
        if trainer.iteration % self.period and not trainer.done:
            return
        values = {name: float(total / self.count) for name, total in self.sums.items()}
        values = reduce_mean(values)
        if not np.isfinite(values["total"]):
            raise PersonSearchError(
                f"training diverged: the loss is {values['total']} at iteration "
                f"{trainer.iteration}; lower optim.lr or check the data"
            )
        values["lr"] = trainer.optimizer.param_groups[0]["lr"]
        # turning the sums into floats above waited for the GPU: the clock covers its work
        now = time.perf_counter()
        seconds = now - self.started - (trainer.hook_seconds - self.hook_seconds)
        values["speed/images_per_s"] = (
            self.count * trainer.config.optim.batch_size / max(seconds, 1e-9)
        )
        if trainer.device.type == "cuda":
            values["speed/peak_mem_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        self.started, self.hook_seconds = now, trainer.hook_seconds
        epoch = trainer.iteration / trainer.iters_per_epoch
        trainer.logger.log("train", trainer.iteration, epoch, nest_keys(values))
        self.bar.set_postfix(
            epoch=f"{epoch:.2f}", loss=f"{values['total']:.4f}", lr=f"{values['lr']:.2g}"
        )
        self.sums, self.count = {}, 0

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class EvalHook(Hook):
    """Evaluate every `period` iterations (0: never) before the end; `FinalEvalHook` does the end."""

    def __init__(self, evaluator: Evaluator, period: int) -> None:
        self.evaluator = evaluator
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if not trainer.done and self.period > 0 and trainer.at_period(self.period):
            trainer.evaluate(self.evaluator)
            # metrics.json holds this evaluation now, not only from the next checkpoint on
            trainer.logger.write_summary(
                {"iteration": trainer.iteration, "max_iter": trainer.max_iter}
            )


class FinalEvalHook(Hook):
    """Evaluate after the last step, once the checkpoint and the model file are written."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.evaluated = False

    def after_step(self, trainer: Trainer) -> None:
        if trainer.done:
            trainer.evaluate(self.evaluator)
            self.evaluated = True

    def after_train(self, trainer: Trainer) -> None:
        if not self.evaluated:  # resumed at the end: the last process may have died evaluating
            trainer.evaluate(self.evaluator)
            self.evaluated = True


class ExportHook(Hook):
    """Write the model file after the last step's checkpoint, before the final evaluation."""

    def __init__(self, export: Exporter) -> None:
        self.export = export
        self.exported = False

    def after_step(self, trainer: Trainer) -> None:
        if trainer.done:
            self._export(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if not self.exported:  # resumed at the end: write it again (the last process may not have)
            self._export(trainer)

    def _export(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            self.export(trainer.module)
        self.exported = True


class CheckpointHook(Hook):
    """Write checkpoints/last.pt every `period` iterations and at the end (rank 0 only)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if not trainer.at_period(self.period):
            return
        if trainer.dist.is_main:
            folder = trainer.run_dir / "checkpoints"
            trainer.save_checkpoint(folder / "last.pt")
            if trainer.config.run.keep_checkpoints:
                unit = "iter" if trainer.config.iteration_based else "epoch"
                count = trainer.iteration // trainer.iters_per_unit
                trainer.save_checkpoint(folder / f"{unit}_{count}.pt")
        # Save the summary after each checkpoint so metrics.json matches what was kept.
        trainer.logger.write_summary({"iteration": trainer.iteration, "max_iter": trainer.max_iter})
