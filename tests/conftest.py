"""Session-wide test settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from real_data import REAL_DATA, skip_reason

#: Real sample data (PRW frames, a CUHK-SYSU protocol file, a COCO detector, a video) kept beside
#: the repository on the developers' machines; never copied into it, absent in a user's clone.


@pytest.fixture(scope="session")
def real_data():
    """`real_data("prw-mini")`: the path of a real sample, or the test is skipped with the reason."""

    def get(name: str) -> Path:
        path = REAL_DATA / name
        if not path.exists():
            pytest.skip(skip_reason(name))
        return path

    return get


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
