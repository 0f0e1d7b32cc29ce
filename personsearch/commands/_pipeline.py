"""`--pipeline DIR`: the option of every command that takes a search pipeline folder.

A pipeline folder holds pipeline.yaml pairing a detector run and a re-id run (a re-id run folder
alone also works, docs/search.md). `--run` meant the same in these commands before; it still
works, as a deprecated alias that prints one note to stderr. (Where `--run` means a training run,
as in evaluate-reid, evaluate-detector, detect and export, it stays `--run`.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

RUN_DEPRECATED = "--run is deprecated here; use --pipeline"


class _DeprecatedRun(argparse.Action):
    """`--run DIR`: stores DIR as --pipeline does, after one deprecation note on stderr."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if not getattr(namespace, "_run_deprecation_noted", False):
            print(RUN_DEPRECATED, file=sys.stderr)
            namespace._run_deprecation_noted = True
        setattr(namespace, self.dest, values)


def add_pipeline_argument(
    parser: argparse.ArgumentParser, help: str, type: Callable[[str], Any] = str
) -> None:
    """Add `--pipeline DIR` (into args.pipeline, default None) and its deprecated alias --run
    (left out of the usage and option list; the commands' descriptions mention it)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pipeline", metavar="DIR", type=type, default=None, help=help)
    group.add_argument(
        "--run",
        dest="pipeline",
        metavar="DIR",
        type=type,
        action=_DeprecatedRun,
        help=argparse.SUPPRESS,
    )
