#!/usr/bin/env bash
# The GPU run of issue 13, as one prepared script (a device call runs it as it is):
#   1. the CUDA tests (tests/test_cuda.py) and, side by side, the rest of the suite (-m "not distributed");
#   2. caption training at the paper's dimensions against the textbook reference: fp32, bf16 and TF32, batch 32
#      and 256, the step in a CUDA graph, the fp32/TF32/bf16 matmul peaks, kernels per step;
#   3. beam search on 500 images; each task's engine step (host syncs, eager, bf16, torch.compile);
#   4. the captioner step under torch.compile(mode="reduce-overhead").
#
#   bash benchmarks/gpu.sh [SECTIONS]      # SECTIONS: comma-separated section names, or "all" (default)
#   GPU_SH_DRY=1 bash benchmarks/gpu.sh    # dry run on the CPU at tiny sizes (checks the plumbing only)
#
# Results: $OUT/gpu.jsonl (one JSON line per section: command, exit code, seconds, the benchmark's report),
# $OUT/summary.json (the key numbers) and $OUT/gpu.log (stderr of everything). $OUT defaults to runs/gpu.
# Sections run in this order while the time budget lasts (GPU_SH_BUDGET seconds, default 330): one that would
# not fit is recorded as not run. Without CUDA (and without GPU_SH_DRY) the script stops at once, exit code 3.
# On a machine without pycocotools, carry its wheel in .whl/ (installed to /tmp/site; the detection tests and
# benchmarks need it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_SH_BUDGET:-330}
DRY=${GPU_SH_DRY:-0}
SECTIONS=${1:-all}
RESULTS="$OUT/gpu.jsonl"
LOG="$OUT/gpu.log"
TMP=$(mktemp -d)
: >"$RESULTS"
: >"$LOG"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$(date +%s)

if ! "$PY" -c "import torch" 2>>"$LOG"; then
    echo "gpu.sh: $PY cannot import torch (set PYTHON=...); nothing measured." >&2
    exit 3
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && [ "$DRY" != 1 ]; then
    echo "gpu.sh: no CUDA device (torch.cuda.is_available() is False); nothing measured." \
         "Set GPU_SH_DRY=1 for a dry run on the CPU." >&2
    exit 3
fi

if [ "$DRY" = 1 ]; then  # tiny sizes on the CPU: every command runs, no number means anything
    DEVICE=cpu; CUDA_ONLY="--no-memory"; PEAK="--peak-size 256"; STEPS="--steps 2 --warmup 1"
    DIMS="--encoder-dim 24 --grid 3 --attention-dim 8 --decoder-dim 12 --embed-dim 10 --vocab-size 30 --max-len 7"
    BIG=8; SMALL=5; IMAGES=6; BEAM_DIMS="$DIMS"; STEP_STEPS="--steps 2 --warmup 1"
else
    DEVICE=cuda; CUDA_ONLY="--cuda-graphs"; PEAK="--peak-size 8192"; STEPS="--steps 10 --warmup 3"
    DIMS=""; BIG=256; SMALL=32; IMAGES=500; BEAM_DIMS=""; STEP_STEPS="--steps 20 --warmup 5"
fi

wanted() { [ "$SECTIONS" = all ] || [[ ",$SECTIONS," == *",$1,"* ]]; }

# record NAME KIND CAP COMMAND...: run COMMAND (at most CAP seconds, less if the budget is nearly spent)
# and append {"section", "kind", "command", "rc", "seconds", "report"} to gpu.jsonl; KIND "json": the
# report is the command's last stdout line; "text": the last 40 lines of its stdout.
record() {
    local name=$1 kind=$2 cap=$3
    shift 3
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then
        printf '{"section": "%s", "not_run": "time budget spent (%ss left)"}\n' "$name" "$left" >>"$RESULTS"
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG" >&2
        return 0
    fi
    echo "== $name (at most ${limit}s): $*" | tee -a "$LOG" >&2
    local t0 rc
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >"$TMP/$name.out" 2>>"$LOG"
    rc=$?
    "$PY" - "$name" "$kind" "$rc" "$t0" "$TMP/$name.out" "$*" >>"$RESULTS" <<'EOF'
import json, sys, time
name, kind, rc, t0, path, command = sys.argv[1:]
lines = open(path, errors="replace").read().splitlines()
entry = {"section": name, "command": command, "rc": int(rc), "seconds": round(time.time() - float(t0), 1)}
if int(rc) in (124, 137):
    entry["timed_out"] = True
if kind == "json":
    try:
        entry["report"] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        entry["output_tail"] = lines[-20:]
else:
    entry["output_tail"] = lines[-40:]
print(json.dumps(entry))
EOF
    echo "   rc=$rc" | tee -a "$LOG" >&2
}

# ---------------------------------------------------------------------------------------------- environment
record env json 30 "$PY" benchmarks/gpu_summary.py env

# Wheels the device image lacks (pycocotools), carried in .whl/ (see the device notes); optional.
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# -------------------------------------------------------------------------------------------------- tests
# The suite (CPU-heavy, in parallel workers, CUDA available) and the CUDA tests side by side: no timing here.
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-p xdist -n 10"
if [ "$DRY" != 1 ]; then
    record pytest text 170 env OMP_NUM_THREADS=1 "$PY" -m pytest -m "not distributed" -q -rfEs -p no:cacheprovider \
        $XDIST --ignore=tests/test_cuda.py tests &
fi
record test_cuda text 170 "$PY" -m pytest tests/test_cuda.py -q -rfEs -p no:cacheprovider
wait

# ------------------------------------------------------------------------------ caption training, paper size
CT=(env OMP_NUM_THREADS=4 "$PY" benchmarks/caption_train.py --json --device "$DEVICE" --threads 4 $DIMS $PEAK $STEPS)
record caption_fp32_b32 json 60 "${CT[@]}" --batch-size $SMALL --dtype fp32 $CUDA_ONLY --profile
record caption_bf16_b32 json 60 "${CT[@]}" --batch-size $SMALL --dtype bf16 $CUDA_ONLY --profile
record caption_bf16_b256 json 70 "${CT[@]}" --batch-size $BIG --dtype bf16 $CUDA_ONLY --profile

# ------------------------------------------------------------------------------------------------- beam search
record beam json 60 env OMP_NUM_THREADS=4 "$PY" benchmarks/beam.py --json --device "$DEVICE" --threads 4 $BEAM_DIMS \
    --num-images $IMAGES --beam-size 5 --decode-batch 100 --repeats 1 --no-memory

# ------------------------------------------------------------------------ each task's step: syncs and speed
TS=(env OMP_NUM_THREADS=4 "$PY" benchmarks/train_step.py --json --device "$DEVICE" --threads 4 $STEP_STEPS)
SYNC=""
[ "$DEVICE" = cuda ] && SYNC="--sync-debug"
record train_step_fp32 json 45 "${TS[@]}" --dtype fp32 $SYNC

# ---------------------------------------------------------------------------------------- TF32, both batches
if [ "$DEVICE" = cuda ]; then
    record caption_tf32_b32 json 45 "${CT[@]}" --batch-size $SMALL --dtype tf32 $CUDA_ONLY
fi
record compile_steps json 100 "${TS[@]}" --tasks classify,detect,caption --compile default --steps 10
if [ "$DEVICE" = cuda ]; then
    record caption_tf32_b256 json 60 "${CT[@]}" --batch-size $BIG --dtype tf32 $CUDA_ONLY
fi
record caption_fp32_b256 json 60 "${CT[@]}" --batch-size $BIG --dtype fp32 $CUDA_ONLY
record train_step_bf16 json 30 "${TS[@]}" --dtype bf16

# ------------------------------------------------------------------------------------------- torch.compile
record compile_caption json 100 "${CT[@]}" --batch-size $SMALL --dtype bf16 --compile reduce-overhead --no-memory

# ------------------------------------------------------------------------------------------------- summary
"$PY" benchmarks/gpu_summary.py "$RESULTS" "$OUT/summary.json" | tee -a "$LOG"
rm -rf "$TMP"
echo "gpu.sh: done in $(($(date +%s) - START))s; results in $RESULTS, $OUT/summary.json, $LOG" >&2
