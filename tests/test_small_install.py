"""The small install: index, search, serve and evaluate with an ONNX pipeline, PyTorch absent.

Every command runs in a subprocess where `import torch` (and torchvision, tensorboard) fails,
as on a machine that installed only the core and serve extras. CI also builds such a venv for
real (.ci/small_install.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

BLOCKED = ("torch", "torchvision", "tensorboard")


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose PYTHONPATH shadows torch & co. with packages that refuse to import."""
    blockers = tmp_path_factory.mktemp("blockers")
    for name in BLOCKED:
        (blockers / name).mkdir()
        (blockers / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name!r} (blocked: small install)", '
            f"name={name!r})\n"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blockers), str(Path(__file__).parents[1])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personsearch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_blocker_really_blocks(no_torch_env):
    done = subprocess.run(
        [sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "blocked: small install" in done.stderr


def test_index_search_serve_evaluate_without_torch(
    no_torch_env, onnx_pipeline, tiny_world, tmp_path
):
    world = tiny_world
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for image in sorted((world / "Image" / "SSM").iterdir())[:4]:
        shutil.copy(image, gallery / image.name)
    index = tmp_path / "index"

    done = run_cli(
        no_torch_env,
        "index",
        "--gallery",
        str(gallery),
        "--out",
        str(index),
        "--pipeline",
        str(onnx_pipeline),
        "--json",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["added"] == 4 and summary["persons"] > 0
    assert summary["model"].startswith("onnx:")

    probe = sorted(gallery.iterdir())[0]
    done = run_cli(
        no_torch_env,
        "search",
        "--index",
        str(index),
        "--pipeline",
        str(onnx_pipeline),
        "--probe",
        str(probe),
        "--box",
        "10,10,60,140",
        "--top-k",
        "3",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert 1 <= len(hits) <= 3 and all(-1.0001 <= h["similarity"] <= 1.0001 for h in hits)

    # the ground-truth gallery boxes: the detector already ran in `index`, this keeps it short
    done = run_cli(
        no_torch_env,
        "evaluate",
        "--dataset",
        "cuhk-sysu",
        "--root",
        str(world),
        "--pipeline",
        str(onnx_pipeline),
        "--gt-boxes",
        "--results",
        str(tmp_path / "r.npz"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_queries"] > 0

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personsearch",
            "serve",
            "--index",
            str(index),
            "--pipeline",
            str(onnx_pipeline),
            "--port",
            str(port),
        ],
        env=no_torch_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answer = _post_json(
            f"http://127.0.0.1:{port}/api/search/indexed",
            {"image_id": 1, "box": [10, 10, 60, 140], "top_k": 2},
        )
        assert len(answer["results"]) >= 1
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output


def test_training_commands_say_what_to_install(no_torch_env):
    done = run_cli(no_torch_env, "flops")
    assert done.returncode == 1
    assert "needs torch" in done.stderr and "personsearch[train]" in done.stderr
    assert "Traceback" not in done.stderr


def test_export_names_its_extra(no_torch_env, tmp_path):
    done = run_cli(no_torch_env, "export", "onnx", "--run", str(tmp_path))
    assert done.returncode == 1 and "personsearch[train,export]" in done.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post_json(url: str, body: dict, wait_s: float = 60) -> dict:
    """POST once the server answers (it starts in a few seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
