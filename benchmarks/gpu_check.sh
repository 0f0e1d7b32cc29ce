#!/usr/bin/env bash
# GPU check: does the paper's training run on this CUDA machine, how fast, in how much memory?
#
#   benchmarks/gpu_check.sh                # on a CUDA machine, about 5 minutes (under 10)
#   benchmarks/gpu_check.sh --cpu-smoke    # the same commands on the CPU, tiny (GPU_CHECK_DRY_RUN=1)
#
# Steps, each timed, each command's output in <logs>/<step>.log:
#   1. torch / CUDA / cuDNN / NCCL versions and the GPUs (nvidia-smi);
#   2. the `small` synthetic world (`personsearch synth --preset small`, 2,000 scenes);
#   3. ResNet-50 CLSA re-id, the paper's settings (cuhk-sysu-reid: 256 x 128 crops, batch 64),
#      AMP, random initial weights (model.pretrained=false: nothing is downloaded), 300 iterations,
#      then re-id evaluation on the world's test crops;
#   4. the ResNet-50 detector, the paper's settings (cuhk-sysu-detector: images 600 / 1000), AMP,
#      2 images a step, 300 iterations, then detection evaluation on the test scenes (BatchNorm
#      trained, not frozen: the weights are random, see step 4 below);
#   5. `torchrun --standalone --nproc_per_node=<GPUs>` re-id, 200 iterations: one process per GPU,
#      NCCL (personsearch/engine/distributed.py picks NCCL when the device is CUDA; with NCCL_DEBUG
#      set, its log shows the NCCL set-up). With one GPU torchrun starts one process and no process
#      group is made, so NCCL is not exercised: the JSON says so.
# Throughput is the trainer's own `speed.images_per_s` (global images per second of each logged
# period, data loading included, evaluation and checkpoints left out), the median over the logged
# periods after the first (start-up, cuDNN autotuning); peak memory is the trainer's
# `speed.peak_mem_mb` (torch.cuda.max_memory_allocated of rank 0).
#
# Results: $OUT/gpu_check.json when $OUT is set, else benchmarks/results/gpu_check.json (smoke:
# gpu_check_cpu_smoke.json in $OUT or the work folder); GPU_CHECK_JSON=FILE overrides. The file is
# rewritten after every step, so a run cut short keeps what it measured. Work files (world, runs,
# checkpoints) go to $GPU_CHECK_WORK (its runs reid/, detector/, reid-ddp/ are replaced; the
# world is kept) or a new /tmp folder. Other settings: PYTHON (default
# .venv/bin/python, else python3), GPU_CHECK_REID_ITERS, GPU_CHECK_DET_ITERS, GPU_CHECK_DDP_ITERS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke|--dry-run) MODE=cpu-smoke ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$arg' (use --cpu-smoke or --help)" >&2; exit 2 ;;
    esac
done
if [[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]]; then MODE=cpu-smoke; fi

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

die() { echo "gpu_check: $*" >&2; exit 2; }

# ---- fail fast where there is no GPU (before any work)
"$PY" -c "import torch, personsearch" 2>/dev/null \
    || die "cannot import torch and personsearch with $PY (set PYTHON=/path/to/python)"
if [[ "$MODE" == gpu ]]; then
    command -v nvidia-smi >/dev/null \
        || die "no nvidia-smi: this is not a CUDA machine. For a CPU rehearsal: $0 --cpu-smoke"
    NGPU="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    [[ "$NGPU" -ge 1 ]] || die "nvidia-smi lists no GPU. For a CPU rehearsal: $0 --cpu-smoke"
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device" \
               "(CPU-only build, or a driver too old for its CUDA). For a CPU rehearsal: $0 --cpu-smoke"
    DEVICE=cuda
    PROCS="$NGPU"
    REID_ITERS="${GPU_CHECK_REID_ITERS:-300}"
    DET_ITERS="${GPU_CHECK_DET_ITERS:-300}"
    DDP_ITERS="${GPU_CHECK_DDP_ITERS:-200}"
    PRESET=small
    # the paper's re-id batch when it splits over the GPUs, else 16 crops per GPU
    REID_BATCH=64; if (( 64 % PROCS )); then REID_BATCH=$((16 * PROCS)); fi
    DET_BATCH=2
    CPUS="$(nproc)"
    WORKERS=$(( CPUS / PROCS > 8 ? 8 : (CPUS / PROCS < 2 ? 2 : CPUS / PROCS) ))
    SIZE=(data.crop_height=256 data.crop_width=128)
    DET_SIZE=()          # the config's 600 / 1000
    LOG_PERIOD=20
    # per-step limits (seconds): the whole check stays under 10 minutes
    LIMIT_SYNTH=120; LIMIT_REID=150; LIMIT_DET=150; LIMIT_DDP=120
else
    # the same commands, on the CPU, with tiny counts: checks every step and the report
    DEVICE=cpu
    PROCS=2              # gloo: the multi-process path without GPUs
    REID_ITERS="${GPU_CHECK_REID_ITERS:-4}"
    DET_ITERS="${GPU_CHECK_DET_ITERS:-3}"
    DDP_ITERS="${GPU_CHECK_DDP_ITERS:-2}"
    PRESET=tiny
    REID_BATCH=8
    DET_BATCH=2
    WORKERS=1
    SIZE=(data.crop_height=64 data.crop_width=32)
    # fewer regions: the res5 box head runs once per region, slow on a CPU
    DET_SIZE=(model.min_size=256 model.max_size=400 model.rpn_post_nms_top_n_train=32
              model.rpn_post_nms_top_n_test=16 model.box_batch_size_per_image=32)
    LOG_PERIOD=1
    LIMIT_SYNTH=300; LIMIT_REID=600; LIMIT_DET=600; LIMIT_DDP=600
fi

WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK"
if [[ -n "${GPU_CHECK_JSON:-}" ]]; then RESULT="$GPU_CHECK_JSON"
elif [[ "$MODE" == gpu && -n "${OUT:-}" ]]; then RESULT="$OUT/gpu_check.json"
elif [[ "$MODE" == gpu ]]; then RESULT="$ROOT/benchmarks/results/gpu_check.json"
else RESULT="${OUT:-$WORK}/gpu_check_cpu_smoke.json"; fi
LOGS="${OUT:-$WORK}/gpu_check_logs"
mkdir -p "$LOGS" "$(dirname "$RESULT")"
WORLD="$WORK/world-$PRESET"

echo "gpu_check: mode $MODE, python $PY, work folder $WORK"
echo "gpu_check: results -> $RESULT, logs -> $LOGS"

# ---- the result file: started here, one entry added per step
"$PY" - "$RESULT" "$MODE" <<'PY'
import datetime, json, sys
path, mode = sys.argv[1:3]
json.dump({"mode": mode, "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "ok": False, "steps": {}}, open(path, "w"), indent=2)
PY

# record STEP JSON: merge one step's entry into the result file
record() {
    "$PY" - "$RESULT" "$1" "$2" <<'PY'
import datetime, json, sys
path, step, entry = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
result = json.load(open(path))
result["steps"][step] = entry
result["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
json.dump(result, open(path, "w"), indent=2)
PY
}

# run_step NAME LIMIT COMMAND...: run with a time limit, output to its log; on failure, show the
# log's tail, record the failure (with what the run folder $STEP_RUN logged, if set) and stop.
# Sets STEP_SECONDS.
run_step() {
    local name="$1" limit="$2"; shift 2
    local log="$LOGS/$name.log" start end status=0
    echo "== $name: $*" | tee "$log"
    start="$(date +%s.%N)"
    timeout --signal=TERM --kill-after=20 "$limit" "$@" >>"$log" 2>&1 || status=$?
    end="$(date +%s.%N)"
    STEP_SECONDS="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
    if (( status != 0 )); then
        local why="exit status $status"
        if (( status == 124 || status == 137 )); then why="over its ${limit} s limit"; fi
        echo "gpu_check: step $name failed ($why) after ${STEP_SECONDS} s; the end of $log:" >&2
        tail -n 30 "$log" >&2
        local failure="{\"ok\": false, \"error\": \"$why\", \"log\": \"$log\"}"
        # a training cut short still reports the periods it logged
        if [[ -n "${STEP_RUN:-}" && -s "$STEP_RUN/metrics.jsonl" ]]; then
            summarize "$name" "$STEP_RUN" "$failure" || record "$name" "$failure"
        else
            record "$name" "$failure"
        fi
        exit 1
    fi
    echo "   done in ${STEP_SECONDS} s"
}

# summarize NAME RUN_DIR EXTRA_JSON: the step's entry from its run folder, printed and recorded
summarize() {
    local entry
    entry="$("$PY" - "$2" "$STEP_SECONDS" "$3" <<'PY'
import json, statistics, sys
from pathlib import Path
run, seconds, extra = Path(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
train = [r for r in records if r["split"] == "train"]
evals = [r for r in records if r["split"] == "eval"]
rates = [r["speed"]["images_per_s"] for r in train if "speed" in r]
steady = rates[1:] or rates  # the first period holds start-up and cuDNN autotuning
memory = [r["speed"]["peak_mem_mb"] for r in train if "peak_mem_mb" in r.get("speed", {})]
entry = {
    "ok": True,
    "seconds": seconds,
    "iterations": train[-1]["iteration"] if train else 0,
    "images_per_s": round(statistics.median(steady), 2) if steady else None,
    "images_per_s_periods": [round(r, 2) for r in rates],
    "peak_mem_mb": round(max(memory), 1) if memory else None,
    "final_loss": train[-1]["total"] if train else None,
    "eval": {k: v for k, v in evals[-1].items() if k not in ("split",)} if evals else None,
    "run": str(run),
    **extra,
}
if train and "teacher" in train[-1]:
    entry["teacher_final"] = train[-1]["teacher"]
print(json.dumps(entry))
print(f"   {entry['images_per_s']} images/s (median of the logged periods after the first), "
      f"peak GPU memory {entry['peak_mem_mb']} MB, {entry['iterations']} iterations, "
      f"eval {entry['eval']}", file=sys.stderr)
PY
)"
    record "$1" "$entry"
}

# ---- 1. environment
run_step env 60 "$PY" - "$WORK/env.json" <<'PY'
import json, platform, subprocess, sys
import torch
info = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda_build": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    "gpus": [],
}
if torch.cuda.is_available():
    info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                             "memory_gib": round(p.total_memory / 2**30, 1),
                             "multiprocessors": p.multi_processor_count})
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info["nvidia_smi"] = f"unavailable: {error}"
print(json.dumps(info, indent=2))
with open(sys.argv[1], "w") as handle:
    json.dump(info, handle)
PY
tail -n +2 "$LOGS/env.log"
record env "{\"ok\": true, $(tail -c +2 "$WORK/env.json")"

# ---- 2. the synthetic world
if [[ -d "$WORLD/annotation" ]]; then
    echo "== synth: $WORLD already there"; STEP_SECONDS=0
else
    run_step synth "$LIMIT_SYNTH" "$PY" -m personsearch synth --preset "$PRESET" --out "$WORLD"
fi
record synth "{\"ok\": true, \"preset\": \"$PRESET\", \"seconds\": $STEP_SECONDS}"

COMMON=(data.dataset=synthetic "data.root=$WORLD" "data.synthetic_size=$PRESET"
        model.pretrained=false optim.amp=true "run.device=$DEVICE" "run.workers=$WORKERS"
        run.progress=false "run.log_period=$LOG_PERIOD" run.eval_period=0)

# reid_args ITERS: sets REID_ARGS, the paper's re-id settings, iteration-based for this check
reid_args() {
    local iters="$1"
    REID_ARGS=(--config cuhk-sysu-reid "${COMMON[@]}" model.backbone=resnet50 model.head=clsa
        "${SIZE[@]}" "optim.batch_size=$REID_BATCH" "optim.iterations=$iters"
        "optim.milestones=[$(( iters * 2 / 3 > 0 ? iters * 2 / 3 : 1 ))]"
        "run.checkpoint_period=$iters" "data.cache_dir=$WORK/crops-$PRESET")
}

# every run starts fresh (a rerun with the same GPU_CHECK_WORK replaces these three run folders)
rm -rf "$WORK/reid" "$WORK/detector" "$WORK/reid-ddp"

# ---- 3. ResNet-50 CLSA re-id, AMP, one process
reid_args "$REID_ITERS"
STEP_RUN="$WORK/reid"
run_step reid_resnet50_amp "$LIMIT_REID" "$PY" -m personsearch train reid --out "$WORK/reid" \
    "${REID_ARGS[@]}"
summarize reid_resnet50_amp "$WORK/reid" \
    "{\"batch_size\": $REID_BATCH, \"crop\": \"${SIZE[*]}\", \"amp\": true, \"device\": \"$DEVICE\"}"

# ---- 4. ResNet-50 detector, AMP, one process. From random weights, the paper's frozen
# BatchNorm (statistics 0 and 1) and frozen first block would leave ResNet-50 unnormalised, and
# its activations overflow float16: here BatchNorm trains, with a short warm-up.
STEP_RUN="$WORK/detector"
run_step detector_resnet50_amp "$LIMIT_DET" "$PY" -m personsearch train detector \
    --config cuhk-sysu-detector --out "$WORK/detector" "${COMMON[@]}" model.backbone=resnet50 \
    ${DET_SIZE[@]+"${DET_SIZE[@]}"} "optim.batch_size=$DET_BATCH" "optim.iterations=$DET_ITERS" \
    "optim.milestones=[$(( DET_ITERS * 2 / 3 > 0 ? DET_ITERS * 2 / 3 : 1 ))]" \
    "optim.warmup_iterations=$(( DET_ITERS / 5 ))" "run.checkpoint_period=$DET_ITERS" \
    model.frozen_batchnorm=false model.freeze_first_block=false
summarize detector_resnet50_amp "$WORK/detector" \
    "{\"batch_size\": $DET_BATCH, \"amp\": true, \"device\": \"$DEVICE\"}"

# ---- 5. torchrun: one process per GPU (NCCL), or 2 CPU processes (gloo) in the smoke run
if [[ "$DEVICE" == cuda ]]; then BACKEND=nccl; else BACKEND=gloo; fi
if (( PROCS < 2 )); then BACKEND="none (one process: no process group, NCCL not exercised)"; fi
reid_args "$DDP_ITERS"
STEP_RUN="$WORK/reid-ddp"
run_step "reid_torchrun_${PROCS}proc" "$LIMIT_DDP" env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT \
    "$PY" -m torch.distributed.run --standalone "--nproc_per_node=$PROCS" \
    -m personsearch train reid --out "$WORK/reid-ddp" "${REID_ARGS[@]}"
NCCL_LINES="$(grep -c 'NCCL INFO' "$LOGS/reid_torchrun_${PROCS}proc.log" || true)"
summarize "reid_torchrun_${PROCS}proc" "$WORK/reid-ddp" \
    "{\"processes\": $PROCS, \"backend\": \"$BACKEND\", \"nccl_log_lines\": $NCCL_LINES, \"batch_size\": $REID_BATCH, \"amp\": true, \"device\": \"$DEVICE\"}"
if [[ "$BACKEND" == nccl && "$NCCL_LINES" -eq 0 ]]; then
    echo "gpu_check: warning: the torchrun log shows no NCCL INFO line" >&2
fi

"$PY" - "$RESULT" <<'PY'
import datetime, json, sys
path = sys.argv[1]
result = json.load(open(path))
result["ok"] = all(step.get("ok", False) for step in result["steps"].values())
result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
json.dump(result, open(path, "w"), indent=2)
print(f"gpu_check: {'all steps passed' if result['ok'] else 'FAILED'}; results in {path}")
for name, step in result["steps"].items():
    if "images_per_s" in step:
        print(f"  {name:<28} {step['images_per_s']:>9} images/s   peak "
              f"{step['peak_mem_mb']} MB   {step['seconds']} s")
sys.exit(0 if result["ok"] else 1)
PY
