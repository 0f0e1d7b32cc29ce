"""Where the real sample data lives for the tests, and the one way tests skip without it.

Tests take the `real_data` fixture (conftest.py) where they can; module-level marks and helpers
that run before any fixture use `REAL_DATA` and `needs_real` from here, so the path and the
skip reason are written once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real samples beside the repository (absent on a user's fresh clone: those tests skip).
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def skip_reason(name: str) -> str:
    return f"real sample data {name!r} is not on this machine (looked in {REAL_DATA})"


def needs_real(name: str) -> pytest.MarkDecorator:
    """A skip mark for tests that read the real sample `name` (e.g. "prw-mini")."""
    return pytest.mark.skipif(not (REAL_DATA / name).exists(), reason=skip_reason(name))
