"""Lazy re-exports for the package `__init__` modules (the public API).

A package lists the names it re-exports, each with the module that defines it; a name is imported
from that module the first time it is used. So `import personsearch` (which the CLI does before it
parses anything) and `import personsearch.search` load no numpy, torch or FAISS, and a module that
imports a sibling (which runs its package's `__init__` first) pulls in nothing extra.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def export_table(modules: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """{module: names it defines} -> {name: module}; a name listed twice is an error."""
    table: dict[str, str] = {}
    for module, names in modules.items():
        for name in names:
            if name in table:
                raise ValueError(f"{name} is exported from both {table[name]} and {module}")
            table[name] = module
    return table


def lazy_exports(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package` that import each name of `table` on first use."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups find it without this hook
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the module hook's name
        return sorted({*namespace, *table})

    return __getattr__, __dir__
