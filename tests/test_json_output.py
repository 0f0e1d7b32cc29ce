"""`index --json` and `search --json`: scriptable output that agrees with the readable one."""

from __future__ import annotations

import json
import shutil

import pytest

from personsearch.cli import main


@pytest.fixture(scope="module")
def gallery(tiny_world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    for image in sorted((tiny_world / "Image" / "SSM").iterdir())[:6]:
        shutil.copy(image, folder / image.name)
    return folder


def test_index_json_is_one_line_summary_and_search_json_matches_table(gallery, tmp_path, capsys):
    index = tmp_path / "index"
    assert (
        main(["index", "--gallery", str(gallery), "--out", str(index), "--json", "--no-progress"])
        == 0
    )
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, "stdout must hold only the JSON summary"
    summary = json.loads(lines[0])
    assert summary["found"] == summary["added"] == summary["images"] == 6
    assert summary["persons"] == summary["persons_added"] > 0
    assert summary["failed"] == [] and summary["index_kind"] == "flat"
    assert "6 indexed" in err  # the readable report moved to stderr

    # a second run adds nothing and says so
    assert (
        main(["index", "--gallery", str(gallery), "--out", str(index), "--json", "--no-progress"])
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert (again["added"], again["skipped"], again["persons"]) == (0, 6, summary["persons"])

    probe = sorted(gallery.iterdir())[0]
    common = ["search", "--index", str(index), "--probe", str(probe), "--top-k", "4"]
    assert main([*common, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert main(common) == 0
    table = capsys.readouterr().out.strip().splitlines()[1:]
    hits = document["hits"]
    assert len(hits) == len(table) == min(4, summary["persons"])
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    similarities = [h["similarity"] for h in hits]
    assert similarities == sorted(similarities, reverse=True)
    for hit, row in zip(hits, table, strict=True):
        rank, similarity, det, camera, box, image = row.split()
        assert hit["image"] == image and hit["camera"] == int(camera)
        assert hit["similarity"] == pytest.approx(float(similarity), abs=1e-4)
        assert hit["det_score"] == pytest.approx(float(det), abs=0.01)
        assert [round(v) for v in hit["box"]] == [int(v) for v in box.split(",")]
    assert document["probe"] == str(probe) and document["box"] is None


def test_search_json_with_picture_keeps_stdout_pure(gallery, tmp_path, capsys):
    index = tmp_path / "index"
    assert main(["index", "--gallery", str(gallery), "--out", str(index), "--no-progress"]) == 0
    capsys.readouterr()
    probe = sorted(gallery.iterdir())[1]
    page = tmp_path / "hits.html"
    assert (
        main(
            [
                "search",
                "--index",
                str(index),
                "--probe",
                str(probe),
                "--box",
                "10,10,60,120",
                "--json",
                "--out",
                str(page),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["box"] == [10, 10, 60, 120] and page.is_file()
    assert f"wrote {page}" in err
