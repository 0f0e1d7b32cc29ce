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
