"""Session-wide test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _protocol_cache_in_tmp(tmp_path_factory):
    """Parsed protocols are cached in a temporary folder, never the user's ~/.cache (the
    variable is inherited by the CLI subprocesses some tests start)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PERSONSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def onnx_pipeline(tmp_path_factory):
    """An exported ONNX pipeline of random-weight models (tests/onnx_pipeline_fixture.py)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_pipeline_fixture import make_onnx_pipeline

    return make_onnx_pipeline(tmp_path_factory.mktemp("onnx-pipeline"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The synthetic world's `tiny` preset, seed 0, generated once per session."""
    from personsearch.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("tiny-world") / "tiny"
    generate_world(root, "tiny", seed=0, workers=0)
    return root
