"""The public API: every name a package re-exports resolves, and importing the package stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = (
    "personsearch",
    "personsearch.search",
    "personsearch.evaluation",
    "personsearch.models",
    "personsearch.data",
    "personsearch.serve",
    "personsearch.export",
    "personsearch.report",
)
#: What a package's import may not load: its names are imported on first use.
HEAVY = ("numpy", "torch", "torchvision", "faiss", "onnxruntime", "fastapi", "matplotlib")
#: The extras a package's names need (a small install lacks them).
NEEDS = {
    "personsearch.models": ("torch",),
    "personsearch.export": ("torch", "onnx"),
    "personsearch.serve": ("fastapi",),
}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    for extra in NEEDS.get(package, ()):
        pytest.importorskip(extra)
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None, f"{package}.{name}"
        assert name in dir(module)


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_nothing_heavy(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", f"import {package} loaded {result.stdout.strip()}"


def test_import_personsearch_does_not_import_torch() -> None:
    code = "import sys, personsearch\nprint('torch' in sys.modules, 'faiss' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"


def test_an_exported_name_is_the_defining_modules_object() -> None:
    import personsearch
    from personsearch.search.searcher import PersonSearcher

    assert personsearch.PersonSearcher is PersonSearcher
    assert importlib.import_module("personsearch.search").PersonSearcher is PersonSearcher


def test_an_unknown_name_is_an_attribute_error() -> None:
    import personsearch

    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        personsearch.NoSuchName  # noqa: B018 - the lookup is the test


def test_submodules_still_import_by_name() -> None:
    from personsearch.search import pipeline

    assert pipeline.load_pipeline is importlib.import_module("personsearch").load_pipeline
