"""The package's layers, read from the source with `ast` (nothing is imported).

`personsearch.evaluation` scores results files and protocols; it must stay importable and
checkable on its own, so it imports nothing from the layers built on it (search, report, engine,
commands, serve, ...), not even inside a function. And no two modules import each other at module
level, directly or through others: a cycle makes import order matter and hides which module is
the lower one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "personsearch"
#: Packages above evaluation/: evaluation may import none of them.
ABOVE_EVALUATION = (
    "search",
    "report",
    "engine",
    "commands",
    "serve",
    "export",
    "models",
    "demo",
    "cli",
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module a `from ... import` names, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(module: str, nodes: Iterator[ast.AST]) -> set[str]:
    """The package's modules that these import statements import (a name imported from a
    package counts as its submodule when there is one of that name)."""
    is_package = MODULES[module].name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {_owning_module(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            for alias in node.names:
                found.add(_owning_module(f"{target}.{alias.name}"))
    found.discard("")
    found.discard(module)
    return found


def _owning_module(name: str) -> str:
    """The longest prefix of `name` that is one of the package's modules ("" if none)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"))


def all_imports(module: str) -> set[str]:
    """Every import of the module, those inside functions and TYPE_CHECKING blocks included."""
    return imported_modules(module, ast.walk(_tree(module)))


def module_level_imports(module: str) -> set[str]:
    """The imports that run when the module is imported (TYPE_CHECKING blocks count too: an
    annotation-only cycle is still two modules that each need the other)."""
    return imported_modules(module, _module_level_nodes(_tree(module).body))


def _module_level_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING, optional dependencies
            yield from _module_level_nodes(node.body)
            yield from _module_level_nodes(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level_nodes(handler.body)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_module_list_is_the_package() -> None:
    assert "personsearch.evaluation.search" in MODULES
    assert "personsearch" in MODULES
    assert len(MODULES) > 50


#: Packages above data/ (the readers, the synthetic worlds, decoding): data imports none of them.
ABOVE_DATA = ("search", "report", "engine", "commands", "serve", "export", "models", "demo", "cli")


@pytest.mark.parametrize(
    ("layer", "above"), [("evaluation", ABOVE_EVALUATION), ("data", ABOVE_DATA)]
)
def test_a_layer_imports_nothing_above_it(layer: str, above: tuple[str, ...]) -> None:
    higher = {f"personsearch.{name}" for name in above}
    offending = {
        module: sorted(t for t in all_imports(module) if _package_of(t, higher))
        for module in MODULES
        if module.startswith(f"personsearch.{layer}")
    }
    offending = {module: targets for module, targets in offending.items() if targets}
    assert offending == {}, f"{layer}/ imports higher layers: {offending}"


def _package_of(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_no_import_cycle_in_the_package() -> None:
    graph = {module: module_level_imports(module) for module in MODULES}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
