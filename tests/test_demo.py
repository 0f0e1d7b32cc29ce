"""`personsearch demo --quick`: the whole system end to end, as a new user first runs it."""

from __future__ import annotations

import json

from personsearch.cli import main


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "personsearch search --index" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # a short training still gives a working system: most people found, ranking above chance
    assert metrics["detection"]["recall"] > 0.5
    assert metrics["search"]["100"]["mAP"] > 0.1
    assert set(metrics["search"]) == {"50", "100", "full"}
    html = (out / "report.html").read_text()
    for section in ("Person search", "Detection (IoU 0.5)", "Example queries", "data:image/png"):
        assert section in html
    # the report says its schedule is not the paper's, and where the paper-schedule test is
    assert "10 epochs, lr / 10 after epoch 8" in html and "100 epochs" in html
    assert "CLSA on the paper&#x27;s schedule" in html or "CLSA on the paper's schedule" in html
    # a second run reuses every cached step and writes the same numbers
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["search"] == metrics["search"]
