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
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"--help imported {result.stdout.strip()}"


def test_expected_error_is_one_line_without_traceback() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "personsearch",
            "check-data",
            "--dataset",
            "prw",
            "--root",
            "/nonexistent/prw",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def _parse(*argv: str):  # type: ignore[no-untyped-def]
    from personsearch.cli import build_parser, parse_arguments

    return parse_arguments(build_parser(), list(argv))


def test_train_overrides_before_and_after_options() -> None:
    args = _parse("train", "reid", "--config", "synthetic-reid", "a.b=1", "c=[2]")
    assert (args.task, args.config, args.overrides) == (
        "reid",
        "synthetic-reid",
        ["a.b=1", "c=[2]"],
    )
    args = _parse(
        "train", "detector", "a=1", "--config", "F", "b=2", "--resume", "c=3", "--out", "R"
    )
    assert args.overrides == ["a=1", "b=2", "c=3"] and args.resume and args.out == "R"
    assert _parse("train", "reid", "--resume", "--out", "R").overrides == []


def test_unknown_arguments_are_still_refused(capsys) -> None:
    import pytest

    for argv in (
        ["train", "reid", "--config", "F", "a=1", "--bogus"],
        ["check-data", "--dataset", "prw", "--root", "r", "stray"],
    ):
        with pytest.raises(SystemExit) as exit_:
            _parse(*argv)
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


PIPELINE_COMMANDS = {  # the commands whose --pipeline takes a pipeline folder, with what else they need
    "index": ["--gallery", "g", "--out", "o"],
    "search": ["--index", "i", "--probe", "p"],
    "serve": ["--index", "i"],
    "evaluate": ["--dataset", "cuhk-sysu", "--root", "r"],
}


def test_pipeline_option_and_its_deprecated_alias(capsys) -> None:
    from personsearch.commands._pipeline import RUN_DEPRECATED

    for command, needed in PIPELINE_COMMANDS.items():
        assert str(_parse(command, *needed, "--pipeline", "P").pipeline) == "P"
        assert capsys.readouterr().err == ""
        assert str(_parse(command, *needed, "--run", "P").pipeline) == "P"
        assert capsys.readouterr().err == RUN_DEPRECATED + "\n"  # one note, on stderr
        assert _parse(command, *needed).pipeline is None


def test_run_still_works_and_says_so_once(tmp_path, capsys) -> None:
    (tmp_path / "g").mkdir()
    outcomes = []
    for option in ("--pipeline", "--run"):
        code = main(
            [
                "index",
                "--gallery",
                str(tmp_path / "g"),
                "--out",
                str(tmp_path / "i"),
                option,
                str(tmp_path / "no-such-pipeline"),
            ]
        )
        out, err = capsys.readouterr()
        outcomes.append((code, out, err.replace("--run is deprecated here; use --pipeline\n", "")))
        assert err.count("deprecated") == (option == "--run")
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == 1
    assert "no-such-pipeline" in outcomes[0][2]
