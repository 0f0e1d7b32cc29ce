"""`personsearch evaluate` on a tiny fake CUHK-SYSU folder, and the results file's validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cuhk_fixture import write_cuhk_sysu

from personsearch.cli import main
from personsearch.data.registry import load_scene_dataset, load_search_protocol
from personsearch.errors import ResultsError
from personsearch.evaluation.results_file import load_results, save_results

DIM = 8


@pytest.fixture(scope="module")
def cuhk(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuhk")
    write_cuhk_sysu(root, gallery_sizes=(50, 100), write_images=False)
    return root


def perfect_arrays(root: Path, distractors: bool = False) -> dict[str, np.ndarray]:
    """Ground-truth boxes as detections with one-hot identity features (mAP 1), optionally
    with an extra detection in every image equally similar (1/sqrt(D)) to every query."""
    protocol = load_search_protocol("cuhk-sysu", root, 100)
    test = {s.name: s for s in load_scene_dataset("cuhk-sysu", root).test}
    names = list(protocol.images)
    det_image, boxes, feats, codes = [], [], [], {}
    for g, name in enumerate(names):
        for box, pid in zip(test[name].boxes, test[name].pids, strict=True):
            key = int(pid) if pid >= 0 else f"bg{len(codes)}"
            det_image.append(g)
            boxes.append(box)
            feats.append(np.eye(DIM)[codes.setdefault(key, len(codes))])
    query_feats = [np.eye(DIM)[codes[q.pid]] for q in protocol.queries]
    if distractors:
        for g in range(len(names)):
            det_image.append(g)
            boxes.append([140, 0, 150, 30])
            feats.append(np.full(DIM, 1 / np.sqrt(DIM)))
    return {
        "image_names": np.array(names),
        "det_image": np.array(det_image),
        "det_boxes": np.array(boxes, dtype=np.float32),
        "det_scores": np.full(len(det_image), 0.9, dtype=np.float32),
        "det_feats": np.array(feats, dtype=np.float32),
        "query_feats": np.array(query_feats, dtype=np.float32),
    }


def write(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def evaluate(root: Path, results: Path, *extra: str, capsys) -> tuple[int, str, str]:
    code = main(
        [
            "evaluate",
            "--dataset",
            "cuhk-sysu",
            "--root",
            str(root),
            "--results",
            str(results),
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out, out.err


def test_perfect_results_score_one(cuhk, tmp_path, capsys):
    results = write(tmp_path / "r.npz", perfect_arrays(cuhk))
    code, out, _ = evaluate(cuhk, results, "--json", capsys=capsys)
    summary = json.loads(out)
    assert code == 0
    assert (summary["mAP"], summary["top1"], summary["top5"], summary["top10"]) == (1, 1, 1, 1)
    assert summary["protocol"] == "cuhk-sysu/TestG100" and summary["num_queries"] == 2


def test_table_and_per_query_csv(cuhk, tmp_path, capsys):
    results = write(tmp_path / "r.npz", perfect_arrays(cuhk, distractors=True))
    csv = tmp_path / "per_query.csv"
    code, out, _ = evaluate(cuhk, results, "--per-query", str(csv), capsys=capsys)
    assert code == 0 and "cuhk-sysu/TestG100" in out and "mAP" in out
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("protocol,query,image,pid,ap,count_gt,count_tp,top1")
    assert len(lines) == 3


def test_all_sizes_table_and_plot(cuhk, tmp_path, capsys):
    results = write(tmp_path / "r.npz", perfect_arrays(cuhk))
    code, out, _ = evaluate(cuhk, results, "--gallery-size", "all-sizes", "--json", capsys=capsys)
    summary = json.loads(out)
    assert code == 0
    assert [row["gallery_size"] for row in summary["gallery_sizes"]] == [50, 100, "full"]
    plot = Path(summary["plot"])
    assert plot == tmp_path / "r_gallery_sizes.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = evaluate(
        cuhk,
        results,
        "--gallery-size",
        "all-sizes",
        "--plot",
        str(tmp_path / "curve.svg"),
        capsys=capsys,
    )
    assert code == 0 and "cuhk-sysu/full" in out and (tmp_path / "curve.svg").is_file()


def test_cbgm_needs_context_arrays(cuhk, tmp_path, capsys):
    arrays = perfect_arrays(cuhk)
    results = write(tmp_path / "r.npz", arrays)
    code, _, err = evaluate(cuhk, results, "--cbgm", capsys=capsys)
    assert code == 1 and "ctx_query" in err
    arrays.update(
        ctx_query=np.array([0, 1]),
        ctx_scores=np.array([0.9, 0.8]),
        ctx_feats=np.eye(DIM, dtype=np.float32)[[5, 6]],
    )
    results = write(tmp_path / "r2.npz", arrays)
    code, out, _ = evaluate(cuhk, results, "--cbgm", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["cbgm"] == {"k1": 10, "k2": 3}


BAD_FILES = {
    "missing": (lambda a: a.pop("det_scores"), "missing array"),
    "shape": (lambda a: a.update(det_boxes=a["det_boxes"][:, :3]), "det_boxes must have shape"),
    "nan": (lambda a: a["det_feats"].__setitem__((2, 0), np.nan), "NaN"),
    "query count": (lambda a: a.update(query_feats=a["query_feats"][:1]), "2 queries"),
    "dims": (lambda a: a.update(query_feats=np.eye(4, dtype=np.float32)[:2]), "query_feats are 4"),
    "index": (lambda a: a["det_image"].__setitem__(0, 99), "det_image[0]"),
    "names": (
        lambda a: a.update(
            image_names=a["image_names"][1:], det_image=np.clip(a["det_image"] - 1, 0, None)
        ),
        "image_names lacks 1",
    ),
    "objects": (
        lambda a: a.update(image_names=np.array(list(a["image_names"]), dtype=object)),
        "Python objects",
    ),
    "norm": (lambda a: a.update(det_feats=a["det_feats"] * 2), "L2-normalised"),
    "boxes": (lambda a: a["det_boxes"].__setitem__(0, [10, 10, 5, 20]), "x2 < x1"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_results_files_get_one_clear_error(case, cuhk, tmp_path, capsys):
    arrays = perfect_arrays(cuhk)
    change, message = BAD_FILES[case]
    change(arrays)
    results = write(tmp_path / "bad.npz", arrays)
    code, out, err = evaluate(cuhk, results, capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_unreadable_and_absent_files(cuhk, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    code, _, err = evaluate(cuhk, junk, capsys=capsys)
    assert code == 1 and "not a readable .npz" in err
    code, _, err = evaluate(cuhk, tmp_path / "absent.npz", capsys=capsys)
    assert code == 1 and "not found" in err


def test_prw_options_are_checked(cuhk, tmp_path, capsys):
    results = write(tmp_path / "r.npz", perfect_arrays(cuhk))
    code, _, err = evaluate(cuhk, results, "--cross-camera", capsys=capsys)
    assert code == 1 and "PRW only" in err


def test_save_results_round_trip_and_atomic(cuhk, tmp_path):
    arrays = perfect_arrays(cuhk)
    path = save_results(
        tmp_path / "out.npz",
        image_names=list(arrays["image_names"]),
        det_image=arrays["det_image"],
        det_boxes=arrays["det_boxes"],
        det_scores=arrays["det_scores"],
        det_feats=arrays["det_feats"],
        query_feats=arrays["query_feats"],
    )
    loaded = load_results(path)
    assert loaded.image_names == tuple(arrays["image_names"])
    np.testing.assert_array_equal(loaded.det_feats, arrays["det_feats"])
    with pytest.raises(ResultsError, match="NaN"):
        save_results(
            tmp_path / "bad.npz",
            image_names=["a.jpg"],
            det_image=[0],
            det_boxes=[[0, 0, 1, 1]],
            det_scores=[np.nan],
            det_feats=[[1.0]],
            query_feats=[[1.0]],
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # nothing half-written


def test_evaluate_does_not_import_torch(cuhk, tmp_path):
    results = write(tmp_path / "r.npz", perfect_arrays(cuhk))
    code = (
        "import sys\n"
        "from personsearch.cli import main\n"
        f"rc = main(['evaluate', '--dataset', 'cuhk-sysu', '--root', {str(cuhk)!r}, "
        f"'--results', {str(results)!r}, '--json'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'sklearn'})\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_results_images_outside_the_protocol_are_ignored(cuhk, tmp_path, capsys):
    """Detections of images the protocol does not know (e.g. training images) change nothing,
    even when they would outrank every true match."""
    arrays = perfect_arrays(cuhk, distractors=True)
    code, out, _ = evaluate(cuhk, write(tmp_path / "r.npz", arrays), "--json", capsys=capsys)
    plain = json.loads(out)
    query_feats = arrays["query_feats"]
    arrays["image_names"] = np.r_[arrays["image_names"], ["train_only.jpg"]]
    arrays["det_image"] = np.r_[
        arrays["det_image"], [len(arrays["image_names"]) - 1] * len(query_feats)
    ]
    arrays["det_boxes"] = np.r_[
        arrays["det_boxes"], np.tile([[5, 5, 40, 100]], (len(query_feats), 1))
    ]
    arrays["det_scores"] = np.r_[arrays["det_scores"], np.ones(len(query_feats))].astype(np.float32)
    arrays["det_feats"] = np.r_[arrays["det_feats"], query_feats]  # the queries themselves
    code, out, _ = evaluate(cuhk, write(tmp_path / "extra.npz", arrays), "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["mAP"] == plain["mAP"]
    assert json.loads(out)["top1"] == plain["top1"]


def test_gallery_for_shares_the_features_and_their_validated_norm_bound(
    cuhk, tmp_path, monkeypatch
):
    """The gallery reads the results file's feature array in place, and the bound its validation
    proved spares the evaluator its own pass over every feature; numbers stay exact."""
    import personsearch.evaluation._search_sparse as search_sparse
    from personsearch.evaluation.results_file import NORM_BOUND
    from personsearch.evaluation.search import evaluate_search

    results = load_results(write(tmp_path / "r.npz", perfect_arrays(cuhk, distractors=True)))
    protocol = load_search_protocol("cuhk-sysu", cuhk, 100)
    gallery = results.gallery_for(protocol.images)
    assert np.shares_memory(gallery.source_feats, results.det_feats)
    assert gallery.norm_bound == NORM_BOUND > 1 + 1e-2

    def no_pass(*args, **kwargs):
        raise AssertionError("the norm bound was recomputed")

    monkeypatch.setattr(search_sparse, "max_row_norm", no_pass)
    result = evaluate_search(protocol, gallery, results.query_feats, path="sparse")
    assert result.mAP == 1.0
