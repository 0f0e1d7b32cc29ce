"""`personsearch index` / `personsearch search` and the run-folder pipeline loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from search_scenes import make_gallery, make_probe

from personsearch.cli import main
from personsearch.errors import PersonSearchError
from personsearch.search import pipeline
from personsearch.search.index import GalleryIndex


@pytest.fixture
def crops_gallery(tmp_path, monkeypatch) -> tuple[Path, set[str]]:
    """A gallery of person crops (one person per image) and the names of the planted ones."""
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)  # whole-image detector
    scenes = make_gallery(tmp_path / "scenes", n_images=8, seed=1)
    folder = tmp_path / "crops"
    folder.mkdir()
    planted = set()
    for scene in scenes:
        image = Image.open(scene.path)
        for k, box in enumerate(scene.boxes.astype(int).tolist()):
            name = f"{scene.path.stem}_{k}.png"
            image.crop(box).save(folder / name)
            if k == scene.planted:
                planted.add(name)
    return folder, planted


def test_index_then_search_prints_ranking_and_writes_pictures(tmp_path, crops_gallery, capsys):
    folder, planted = crops_gallery
    index = tmp_path / "gallery.index"
    assert main(["index", "--gallery", str(folder), "--out", str(index), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{len(list(folder.iterdir()))} indexed" in out and "color-hist-v1" in out

    probe_box = make_probe(tmp_path / "probe.png")
    box_arg = ",".join(f"{v:g}" for v in probe_box)
    html = tmp_path / "results.html"
    argv = [
        "search",
        "--index",
        str(index),
        "--probe",
        str(tmp_path / "probe.png"),
        "--box",
        box_arg,
        "--top-k",
        "5",
        "--out",
        str(html),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    ranked = [Path(line.split()[-1]).name for line in lines[1:6]]
    assert set(ranked[: len(planted)]) == planted
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") == 6  # probe + 5 hits
    assert "#1 sim" in page

    sheet = tmp_path / "results.png"
    assert main(argv[:-1] + [str(sheet)]) == 0
    with Image.open(sheet) as picture:
        assert picture.format == "PNG" and picture.width > 200

    # running the index again adds nothing
    assert main(["index", "--gallery", str(folder), "--out", str(index), "--no-progress"]) == 0
    assert "0 indexed" in capsys.readouterr().out


def test_approximate_index_kind_from_the_command_line(tmp_path, crops_gallery, capsys):
    folder, planted = crops_gallery
    index = tmp_path / "idx"
    argv = [
        "index",
        "--gallery",
        str(folder),
        "--out",
        str(index),
        "--index-kind",
        "hnsw",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert GalleryIndex.open(index).store.index_kind == "hnsw"
    assert "hnsw FAISS index" in capsys.readouterr().out
    probe = folder / sorted(planted)[0]
    assert main(["search", "--index", str(index), "--probe", str(probe), "--top-k", "3"]) == 0
    ranked = [Path(line.split()[-1]).name for line in capsys.readouterr().out.splitlines()[1:]]
    others = planted - {probe.name}  # the probe's own image is left out
    assert set(ranked[: len(others)]) == others


@pytest.mark.parametrize(
    "box, message",
    [
        ("500,10,560,100", "lies outside image"),
        ("1,2,3", "four numbers"),
        ("5,5,5,9", "no positive"),
    ],
)
def test_bad_probe_box_exits_with_one_line(tmp_path, crops_gallery, capsys, box, message):
    folder, _ = crops_gallery
    index = tmp_path / "idx"
    assert main(["index", "--gallery", str(folder), "--out", str(index), "--no-progress"]) == 0
    probe = next(folder.iterdir())
    assert main(["search", "--index", str(index), "--probe", str(probe), "--box", box]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_index_of_another_model_is_refused(tmp_path, crops_gallery, capsys):
    GalleryIndex.open_for_writing(
        tmp_path / "idx", fingerprint="clsa-r50-1234", dim=256, info={"run": "runs/clsa"}
    ).close()
    probe = next(crops_gallery[0].iterdir())
    assert main(["search", "--index", str(tmp_path / "idx"), "--probe", str(probe)]) == 1
    err = capsys.readouterr().err
    assert "built by model 'clsa-r50-1234' (from runs/clsa)" in err and "color-hist-v1" in err
    assert (
        main(
            [
                "index",
                "--gallery",
                str(crops_gallery[0]),
                "--out",
                str(tmp_path / "idx"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "clsa-r50-1234" in capsys.readouterr().err


def test_missing_inputs_exit_with_clear_errors(tmp_path, crops_gallery, capsys):
    folder, _ = crops_gallery
    assert main(["index", "--gallery", str(tmp_path / "nope"), "--out", str(tmp_path / "i")]) == 1
    assert "gallery folder not found" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "nope"), "--probe", "x.png"]) == 1
    assert "no gallery index at" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "--gallery",
                str(folder),
                "--out",
                str(tmp_path / "i"),
                "--pipeline",
                str(tmp_path / "no-run"),
            ]
        )
        == 1
    )
    assert "run folder not found" in capsys.readouterr().err


def test_index_and_search_commands_import_nothing_heavy():
    code = (
        "import sys; import personsearch.commands.index, personsearch.commands.search; "
        "print(sorted(m for m in ('faiss', 'torch', 'numpy', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_load_pipeline_says_what_a_run_folder_lacks(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with pytest.raises(PersonSearchError, match="run folder not found"):
        pipeline.load_pipeline(run)
    run.mkdir()
    with pytest.raises(PersonSearchError, match="no resolved config"):
        pipeline.load_pipeline(run)
    (run / "config.yaml").write_text("model: {name: clsa}\n")
    with pytest.raises(PersonSearchError, match="no checkpoint"):
        pipeline.load_pipeline(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert pipeline.find_checkpoint(run) == run / "checkpoints" / "last.pt"
    # a run of no task (or a detector run) alone cannot search: it says what to write instead
    with pytest.raises(PersonSearchError, match="needs a detector and a re-id net"):
        pipeline.load_pipeline(run)
    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(PersonSearchError, match="cannot read run config"):
        pipeline.load_pipeline(run)


def test_load_pipeline_hands_a_run_its_final_weights(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"task": "reid"}')
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "model.pt").write_bytes(b"")
    seen = {}

    def pipeline_from_run(run_dir, config, checkpoint):
        seen.update(run=run_dir, config=config, checkpoint=checkpoint)
        return pipeline.baseline_pipeline()

    monkeypatch.setattr(pipeline, "pipeline_from_run", pipeline_from_run)
    loaded = pipeline.load_pipeline(run)
    assert loaded.embedder.fingerprint == "color-hist-v1"
    assert seen == {"run": run, "config": {"task": "reid"}, "checkpoint": run / "model.pt"}


def test_baseline_pipeline_works_without_opencv(monkeypatch):
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)
    baseline = pipeline.baseline_pipeline()
    boxes, scores = baseline.detector.detect(np.zeros((20, 10, 3), np.uint8))
    assert boxes.tolist() == [[0, 0, 10, 20]] and scores.tolist() == [1.0]
    assert baseline.source == "baseline"
