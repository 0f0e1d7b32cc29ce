"""The CLI: every command listed with a description, fast start without heavy imports."""

from __future__ import annotations

import subprocess
import sys

from personsearch.cli import _command_modules, main


def test_help_lists_every_command(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    modules = _command_modules()
    assert modules, "no commands registered"
    for module in modules:
        assert module.COMMAND in out
        assert module.HELP.strip(), f"{module.COMMAND} has no one-line help"
        assert "\n" not in module.HELP.strip()


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from personsearch.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'torchvision', 'faiss', 'matplotlib', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"--help imported {result.stdout.strip()}"


def test_expected_error_is_one_line_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "personsearch", "check-data", "--dataset", "prw", "--root", "/nonexistent/prw"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
