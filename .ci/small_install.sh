#!/usr/bin/env bash
# The small install, for real: a second venv with only the core and serve extras (no PyTorch)
# indexes, searches, serves and evaluates with an ONNX pipeline exported by the full venv.
# Prints both venvs' sizes and `personsearch --help` start-up times (docs/search.md records them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

.venv/bin/personsearch synth --preset tiny --seed 0 --out "$WORK/world" >/dev/null
.venv/bin/python tests/onnx_pipeline_fixture.py "$WORK/models" >/dev/null
PIPELINE="$WORK/models/onnx"

"$PYTHON" -m venv "$WORK/core"
CORE="$WORK/core/bin"
"$CORE/python" -m pip install --quiet --upgrade pip
"$CORE/python" -m pip install --quiet '.[serve]'
if "$CORE/python" -c "import torch" 2>/dev/null; then
    echo "small install: torch is importable in the core venv" >&2; exit 1
fi

mkdir "$WORK/gallery"
ls "$WORK/world/Image/SSM" | head -4 | while read -r name; do
    cp "$WORK/world/Image/SSM/$name" "$WORK/gallery/"
done
PROBE="$WORK/gallery/$(ls "$WORK/gallery" | head -1)"
cd "$WORK"  # away from the checkout: the installed package, not the source tree, runs
"$CORE/personsearch" index --gallery gallery --out index --pipeline "$PIPELINE" --json --no-progress \
    | tail -1 | "$CORE/python" -c "import json,sys; d=json.load(sys.stdin); assert d['added'] == 4, d"
"$CORE/personsearch" search --index index --pipeline "$PIPELINE" --probe "$PROBE" \
    --box 10,10,60,140 --top-k 3 --json \
    | "$CORE/python" -c "import json,sys; assert json.load(sys.stdin)['hits']"
"$CORE/personsearch" evaluate --dataset cuhk-sysu --root world --pipeline "$PIPELINE" --gt-boxes \
    --results r.npz --json | "$CORE/python" -c "import json,sys; print('small install: evaluate mAP', json.load(sys.stdin)['mAP'])"
PORT=$("$CORE/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$CORE/personsearch" serve --index index --pipeline "$PIPELINE" --port "$PORT" >serve.log 2>&1 &
SERVER=$!
"$CORE/python" - "$PORT" <<'PY'
import json, sys, time, urllib.request, urllib.error
url = f"http://127.0.0.1:{sys.argv[1]}/api/search/indexed"
body = json.dumps({"image_id": 1, "box": [10, 10, 60, 140], "top_k": 2}).encode()
for _ in range(120):
    try:
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["results"], "no results"
            break
    except (ConnectionError, urllib.error.URLError):
        time.sleep(0.5)
else:
    raise SystemExit("small install: the server never answered")
print("small install: serve answered a search")
PY
cd - >/dev/null

help_time() {  # best of 5 wall-clock starts of `personsearch --help`, in ms
    "$1/python" - "$1/personsearch" <<'PY'
import subprocess, sys, time
best = min(
    (lambda t: (subprocess.run([sys.argv[1], "--help"], capture_output=True, check=True),
                time.perf_counter() - t)[1])(time.perf_counter())
    for _ in range(5)
)
print(f"{best * 1000:.0f}")
PY
}
echo "small install: core+serve venv $(du -sh "$WORK/core" | cut -f1), --help $(help_time "$CORE") ms;" \
     "full venv $(du -sh .venv | cut -f1), --help $(help_time .venv/bin) ms"
