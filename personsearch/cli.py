"""One entry point: `personsearch <command>`.

Every module in `personsearch.commands` is one command. It defines `COMMAND` (its name), `HELP`
(one line), `add_arguments(parser)` and `run(args) -> int`; optionally `DESCRIPTION`, and
`EXTRA_POSITIONALS`, the name of a list positional (nargs="*") that also takes the positional
strings given after later options (`train reid --config F key=value`). Command modules import nothing heavy
at module level (torch, FAISS, ...), so `personsearch --help` starts fast; heavy imports happen
inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

import personsearch.commands as package
from personsearch import __version__
from personsearch.errors import PersonSearchError

#: Installed by the `train` extra; the core install (index, search, serve, evaluate) lacks them.
TRAINING_MODULES = frozenset({"torch", "torchvision", "tensorboard"})
TRAIN_INSTALL = "pip install 'personsearch[train]'"
EXPORT_INSTALL = "pip install 'personsearch[train,export]'"


def _command_modules() -> list[ModuleType]:
    modules = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            modules.append(module)
    return sorted(modules, key=lambda m: m.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="personsearch",
        description="Person search in scene images: detect every person, rank them by identity.",
    )
    parser.add_argument("--version", action="version", version=f"personsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for module in _command_modules():
        command_parser = sub.add_parser(
            module.COMMAND,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command_parser)
        command_parser.set_defaults(
            _run=module.run, _extra_positionals=getattr(module, "EXTRA_POSITIONALS", None)
        )
    return parser


def parse_arguments(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse `argv`; positional strings after options go to the command's EXTRA_POSITIONALS
    list (argparse leaves them over), anything else left over is an error (exit status 2)."""
    args, extra = parser.parse_known_args(argv)
    field = getattr(args, "_extra_positionals", None)
    unknown = [a for a in extra if field is None or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        getattr(args, field).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except PersonSearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        if error.name not in TRAINING_MODULES:
            raise
        install = EXPORT_INSTALL if args.command == "export" else TRAIN_INSTALL
        print(
            f"error: `personsearch {args.command}` needs {error.name}, which this installation "
            f"lacks (the small install searches with ONNX pipelines only): {install}",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:  # `personsearch search --json | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
