"""`personsearch train reid|detector|classify --config FILE [--out RUNDIR] [--resume] [key=value ...]`."""

from __future__ import annotations

import argparse
from typing import Any

from personsearch.commands._outputs import check_output_folder, write_error
from personsearch.errors import ConfigError

HELP = "train the re-id network, the detector or a classifier from a config (single process or torchrun)"
COMMAND = "train"
DESCRIPTION = """\
Train a model from a YAML config (a file, or the name of a shipped config: synthetic-reid,
cuhk-sysu-reid, prw-reid, market1501-reid, cuhk03-reid, synthetic-detector, cuhk-sysu-detector,
prw-detector, cifar100-classify), with dotted key=value overrides:

  personsearch train reid --config synthetic-reid
  personsearch train reid --config cuhk-sysu-reid data.root=/data/cuhk-sysu optim.lr=0.005
  personsearch train detector --config synthetic-detector
  personsearch train classify --config cifar100-classify data.root=/data/cifar-100-binary
  personsearch train reid --resume --out runs/cuhk-sysu-reid      # continue a stopped run
  torchrun --nproc_per_node=4 -m personsearch train reid --config cuhk-sysu-reid data.root=...

The run folder (--out, else run.out, else runs/<config name>) receives config.yaml (resolved),
metrics.jsonl / metrics.json, TensorBoard events, checkpoints/last.pt and the final model.pt.
"""

#: task name -> "module:function" taking (Config, resume: bool); a new task is one line here
TASKS: dict[str, str] = {
    "reid": "personsearch.engine.reid_task:train_reid",
    "detector": "personsearch.engine.detector_task:train_detector",
    "classify": "personsearch.engine.classify_task:train_classify",
}


#: `key=value` overrides may follow options (`reid --config F a=b`): argparse fills a positional
#: at its first run of positional strings only (bpo-14191), so the CLI appends the later ones it
#: leaves over to args.overrides (personsearch.cli); an unknown option is still an error.
EXTRA_POSITIONALS = "overrides"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=sorted(TASKS), help="what to train")
    parser.add_argument("--config", help="YAML file or shipped config name")
    parser.add_argument("--out", help="run folder (overrides run.out)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run folder's last checkpoint; without --config the run's own "
        "config.yaml is used",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, before or after the options",
    )


def run(args: argparse.Namespace) -> int:
    import importlib
    import os
    from pathlib import Path

    target = TASKS[args.task]
    config = _load_config(args)  # every setting checked (config.validate)
    option = "--out" if args.out else "run.out"
    check_output_folder(config.run_dir, option)  # before reading data or taking a step
    module_name, function_name = target.split(":")
    train = getattr(importlib.import_module(module_name), function_name)
    try:
        summary = train(config, resume=args.resume)
    except OSError as error:  # the run folder became unwritable (or full) while training
        name = str(error.filename or "")
        if not name or not Path(name).resolve().is_relative_to(config.run_dir.resolve()):
            raise
        raise write_error(option, config.run_dir, error) from error
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    final = summary.get("final") if isinstance(summary, dict) else None
    if final:
        shown = {k: v for k, v in final.items() if k not in ("split", "iteration", "epoch")}
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
    print(f"run folder: {config.run_dir}")
    return 0


def _load_config(args: argparse.Namespace) -> Any:
    """The run's Config: --config (else, with --resume --out, the run's own config.yaml) with
    the key=value overrides and --out applied; ConfigError if it is for another task."""
    from pathlib import Path

    from personsearch.config import load_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={args.out}")
    config_source = args.config
    if config_source is None:
        if not (args.resume and args.out):
            raise ConfigError("give --config FILE (or --resume --out RUNDIR to continue a run)")
        config_source = Path(args.out) / "config.yaml"
        if not config_source.is_file():
            raise ConfigError(f"{config_source} not found: is {args.out} a training run folder?")
    config = load_config(config_source, overrides)
    if config.task != args.task:
        raise ConfigError(f"config {config_source} is for task {config.task!r}, not {args.task!r}")
    return config
