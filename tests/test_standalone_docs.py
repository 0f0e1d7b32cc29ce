"""The project stands alone: its docs, docstrings and messages never send a user to the folder
the developers' sample data sits in (`../shared/` beside the checkout), which a user's clone
does not have. Tests reach that data through one fixture (tests/real_data.py) and may name it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A path into the sample-data folder: "../shared/...", "shared/data", "/work/shared" and so on.
SAMPLE_FOLDER = re.compile(
    r"(?:\.\./|/|\b)shared/(?:data|evaluation\.md|datasets\.md|design\.md|paper)"
)


def user_facing_files() -> list[Path]:
    """What a user reads: README, docs, the package (docstrings, messages), benchmarks and
    experiments (their help and printed text); not results files, which record where a run
    read its data."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("personsearch", "benchmarks", "experiments"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_nothing_a_user_reads_points_at_the_sample_data_folder() -> None:
    found = []
    for path in user_facing_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SAMPLE_FOLDER.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_pattern_catches_the_forms_it_is_for() -> None:
    for text in ("see ../shared/evaluation.md", "--root shared/data/prw-mini", "/work/shared/data"):
        assert SAMPLE_FOLDER.search(text), text
    for text in ("shared weights", "a shared/storage mount", "/nfs/runs/shared-x"):
        assert not SAMPLE_FOLDER.search(text), text
