"""experiments/reid_ablation.py end to end on the tiny synthetic world: train, evaluate by scale,
the results JSON, a rerun that trains nothing, and --report (tables and plot)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reid_ablation.py"
# as tests/test_train_reid.py keeps a re-id training to a few seconds
TINY = [
    "data.crop_height=32",
    "data.crop_width=16",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.feature_dim=16",
    "optim.batch_size=16",
    "run.log_period=2",
]
BINS = ["larger_1.5x", "larger_3x", "same", "smaller_1.5x", "smaller_3x"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """--threads 1 (several threads crawl on a busy 2-core CPU) must not outlive the test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ablation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reid_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reid_ablation"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_rows_groups_and_free_form_specs(ablation):
    rows = ablation.resolve_rows(["core", "clsa", "table6", "clsa/level_ce_weight=1"])
    assert [r.name for r in rows] == [
        "plain",
        "pyramid",
        "clsa",
        "clsa-levelce",
        "clsa-54",
        "clsa-5432",
        "clsa/level_ce_weight=1",
    ]
    free = rows[-1]
    assert free.overrides == (
        "model.head=clsa",
        "model.levels=5-4-3",
        "model.temperature=3",
        "model.level_ce_weight=1",
    )
    assert ablation.parse_row("plain/data.flip=false").overrides == (
        "model.head=plain",
        "model.levels=5",
        "data.flip=false",
    )
    assert ablation.ROWS["clsa-T5"].overrides[-1] == "model.temperature=5"
    assert ablation.folder_name(free, 12, 1) == "clsa-level_ce_weight1-e12-seed1"
    assert [ablation.milestone(e) for e in (1, 2, 4, 12)] == [1, 2, 3, 9]
    with pytest.raises(ablation.AblationError, match="unknown row"):
        ablation.resolve_rows(["nope"])


def test_statistics(ablation):
    a, b = ablation.stat([0.5, 0.6, 0.7]), ablation.stat([0.4, 0.5, 0.6])
    assert a["mean"] == pytest.approx(0.6) and a["sd"] == pytest.approx(0.1) and a["n"] == 3
    assert ablation.stat([0.3])["sd"] is None
    result = ablation.compare(a, b)
    assert result["diff"] == pytest.approx(0.1) and result["pooled_sd"] == pytest.approx(0.1)
    assert result["t"] == pytest.approx(0.1 / (0.1 * (2 / 3) ** 0.5))
    assert 0.2 < result["p"] < 0.3 and ablation.reading(result) == "within seed noise"
    assert ablation.reading(ablation.compare(a, ablation.stat([0.3]))) == (
        "one seed: no spread, no test"
    )


def test_the_change_of_clsas_lead_between_two_grids(ablation):
    """The difference of differences: (clsa - plain here) - (clsa - plain there), tested with
    the four groups' pooled spread."""
    from scipy import stats

    here = {"clsa": [0.65, 0.67], "plain": [0.52, 0.54]}
    there = {"clsa": [0.61, 0.59, 0.63], "plain": [0.55, 0.53, 0.57]}

    def summary(groups):
        return {name: {"mAP": ablation.stat(values)} for name, values in groups.items()}

    text = ablation._gap_change(summary(here), summary(there), "other.json")
    assert "+13.0 here, +6.0 in other.json, a change of +7.0 points" in text
    # by hand: pooled variance over the 4 groups, df = 2 + 3 + 2 + 3 - 4
    squares = sum(
        sum((v - sum(g) / len(g)) ** 2 for v in g) for g in [*here.values(), *there.values()]
    )
    pooled = (squares / 6) ** 0.5
    t = 0.07 / (pooled * (1 / 2 + 1 / 2 + 1 / 3 + 1 / 3) ** 0.5)
    assert f"t = {t:+.2f}, df = 6, p = {2 * stats.t.sf(t, 6):.3f}" in text
    one_seed = summary({"clsa": [0.6], "plain": [0.5]})
    assert "too few seeds" in ablation._gap_change(one_seed, summary(there), "x")


def test_ablation_end_to_end(ablation, tmp_path, capsys):
    root, out, results = tmp_path / "world", tmp_path / "runs", tmp_path / "ablation.json"
    argv = [
        "--root",
        str(root),
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--results",
        str(results),
        "--rows",
        "plain",
        "clsa",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--threads",
        "1",
        "--set",
        *TINY,
    ]
    assert ablation.main(argv) == 0
    data = json.loads(results.read_text())
    assert data["format"] == ablation.FORMAT and data["epochs"] == 1 and data["milestones"] == [1]
    assert data["world"]["stats"]["preset"] == "tiny" and data["common_overrides"] == TINY
    assert {"commit", "dirty"} <= set(data["git"]) and data["machine"]["cpu_count"] >= 1
    assert data["rows"]["plain"]["overrides"] == ["model.head=plain", "model.levels=5"]
    assert sorted(data["baselines"]) == ["bands", "colour"]
    for baseline in data["baselines"].values():
        assert sorted(baseline["by_scale"]) == BINS and 0 <= baseline["mAP"] <= 1
    assert [(r["row"], r["seed"]) for r in data["runs"]] == [("plain", 0), ("clsa", 0)]
    clsa = data["runs"][1]
    assert clsa["level_names"] == ["res3", "res4", "res5"] and clsa["head"] == "clsa"
    assert sorted(clsa["levels"]) == ["concat", "res3", "res4", "res5"]
    assert clsa["levels"]["concat"]["mAP"] == pytest.approx(clsa["mAP"])
    assert sorted(clsa["by_scale"]) == BINS
    assert set(clsa["teacher"]) == {"entropy", "max_entropy", "max_prob"}
    assert set(clsa["accuracy"]) == {"res3", "res4", "res5"} and "kl" in clsa["train_last"]
    assert clsa["train_seconds"] > 0 and clsa["resumed"] is False
    summary = data["summary"]
    assert data["row_order"] == ["plain", "clsa"] and sorted(summary) == ["clsa", "plain"]
    assert summary["clsa"]["n"] == 1 and summary["clsa"]["mAP"]["mean"] == pytest.approx(
        clsa["mAP"]
    )
    assert summary["clsa"]["mAP"]["sd"] is None  # one seed: no spread
    assert sorted(summary["clsa"]["by_scale"]) == BINS
    assert {"mAP", "rank1", "queries"} <= set(summary["clsa"]["by_scale"]["larger_3x"])
    assert sorted(summary["clsa"]["levels"]) == ["concat", "res3", "res4", "res5"]

    # a rerun trains nothing and evaluates nothing: both are cached in the run folders
    runs = [Path(r["run_dir"]) for r in data["runs"]]
    stamps = {p: (p / "model.pt").stat().st_mtime_ns for p in runs}
    evals = {p: (p / ablation.EVAL_FILE).stat().st_mtime_ns for p in runs}
    capsys.readouterr()
    assert ablation.main(argv) == 0
    assert "already trained" in capsys.readouterr().out
    assert stamps == {p: (p / "model.pt").stat().st_mtime_ns for p in runs}
    assert evals == {p: (p / ablation.EVAL_FILE).stat().st_mtime_ns for p in runs}
    again = json.loads(results.read_text())
    assert again["summary"]["clsa"]["mAP"] == summary["clsa"]["mAP"]

    # another setting is refused rather than mixed into the same file or run folders
    other = [a if a != "model.feature_dim=16" else "model.feature_dim=8" for a in argv]
    assert ablation.main(other) == 1
    assert "another setting" in capsys.readouterr().err
    other[other.index(str(results))] = str(tmp_path / "other.json")
    assert ablation.main(other) == 1
    assert "other settings (model.feature_dim" in capsys.readouterr().err

    # --report: the gate first, the tables, the comparison and the plot
    plot = tmp_path / "plot.png"
    assert ablation.main(["--report", "--results", str(results), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[1].startswith("| bands") and table[2].startswith("| colour")
    assert any(line.startswith("| plain | plain: pooled res5") for line in table)
    assert "mAP gallery >=3x smaller" in text and "Each pyramid level alone" in text
    assert "| clsa | res5 (top) |" in text and "Table 6" in text and "Table 7" in text
    assert "| clsa − plain | gallery >=3x larger |" in text
    assert "WARNING" in text or "Gate passed" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --against: each row against the same row of another grid (here: itself, so no change)
    argv = ["--report", "--results", str(results), "--plot", str(plot), "--against", str(results)]
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert f"### This grid against {results.name}" in text
    assert "| clsa | overall |" in text and "a change of +0.0 points" in text
