"""What a run reports: TensorBoard scalars, metrics.jsonl (one record per log), metrics.json
(the summary) and a progress bar. Only rank 0 writes; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from personsearch.io import atomic_open, write_json


class MetricsLogger:
    """Scalars to TensorBoard (`events/`) and `metrics.jsonl`; the summary to `metrics.json`."""

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.records = _read_jsonl(self.jsonl_path)

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def json_path(self) -> Path:
        return self.run_dir / "metrics.json"

    def _tensorboard(self):  # created lazily: importing tensorboard costs a second
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "events"))
        return self._writer

    def resume_from(self, iteration: int) -> None:
        """Forget records logged after `iteration` (an interrupted run logged past its checkpoint)."""
        if not self.enabled:
            return
        kept = [r for r in self.records if r.get("iteration", 0) <= iteration]
        if len(kept) != len(self.records):
            self.records = kept
            with atomic_open(self.jsonl_path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)

    def log(self, split: str, iteration: int, epoch: float, values: dict[str, Any]) -> None:
        """Record scalars of one split ("train", "eval") at a global iteration.

        A value may be a dict of scalars (a group, e.g. "teacher": {"entropy": ...}): it stays
        nested in metrics.jsonl and becomes `split/group/name` in TensorBoard.
        """
        if not self.enabled:
            return
        record = {"split": split, "iteration": iteration, "epoch": epoch, **values}
        self.records.append(record)
        with open(self.jsonl_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        writer = self._tensorboard()
        for key, value in flatten(values).items():
            writer.add_scalar(f"{split}/{key}", value, iteration)
        writer.flush()

    def summary(self) -> dict[str, Any]:
        """Last train record, every eval record and the last eval (the final numbers).

        Runs whose model logs diagnostics (the re-id models) also get `teacher`: the top level's
        softened-distribution statistics at every logged period, `teacher_final` (the last
        period, which ends at the last iteration) and `accuracy`: per-level training accuracy
        at every logged period.
        """
        train = [r for r in self.records if r["split"] == "train"]
        evals = [r for r in self.records if r["split"] == "eval"]
        summary: dict[str, Any] = {
            "train_last": train[-1] if train else None,
            "eval": evals,
            "final": evals[-1] if evals else None,
        }
        for group in DIAGNOSTIC_GROUPS:
            periods = [
                {"iteration": r["iteration"], "epoch": r["epoch"], **r[group]}
                for r in train
                if isinstance(r.get(group), dict)
            ]
            if periods:
                summary[group] = periods
                if group == "teacher":
                    summary["teacher_final"] = periods[-1]
        return summary

    def write_summary(self, extra: dict[str, Any] | None = None) -> None:
        if self.enabled:
            write_json(self.json_path, {**self.summary(), **(extra or {})})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# Groups of training diagnostics whose history metrics.json keeps (see `summary`).
DIAGNOSTIC_GROUPS = ("teacher", "accuracy")


def nest_keys(values: dict[str, Any]) -> dict[str, Any]:
    """{"teacher/entropy": x, "ce": y} -> {"teacher": {"entropy": x}, "ce": y} (one level)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        group, sep, name = key.partition("/")
        if sep:
            nested.setdefault(group, {})[name] = value
        else:
            nested[key] = value
    return nested


def flatten(values: dict[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested dicts as one level of `outer<sep>inner` keys (TensorBoard tags use "/")."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}{sep}", sep))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the rest is intact
    return records


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
    """A tqdm bar on the main process when enabled, else an object that ignores updates."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)
