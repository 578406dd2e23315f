#!/usr/bin/env bash
# One GPU session in one script (docs/benchmarks.md, "A lent GPU"): the training-speed benchmark, the notebook in
# full mode with a short iteration count, and course against improved on VOC at the same budget.
#
#   bash benchmarks/gpu_session.sh [--dry-run] [bench] [notebook] [presets]     # no stage named: all three
#
# Stages (each under its own time limit; one that fails or runs out of time is reported, the next one runs):
#   bench     benchmarks/bench_gpu_train.py on the VOC train set: the course path, each speed option, the two
#             memory formats, torch.compile and CUDA graphs (also at batch 4), fp32/bf16/fp16 loss   (BENCH_BUDGET s)
#   notebook  benchmarks/run_notebook.py: one_stage_detector.ipynb in full mode, TRAIN_ITERS=$NOTEBOOK_ITERS, eval on
#             $NOTEBOOK_EVAL_IMAGES val images, no downloads (the data are unpacked already)        (NOTEBOOK_BUDGET s)
#   presets   benchmarks/compare_presets.py --dataset voc: course and improved, both on the EfficientNet-Lite0 trunk
#             with its ImageNet weights, the same iterations: 9000 if they fit, else the most that fit (PRESETS_BUDGET s)
#
# Input: $GPU_CARRY (default gpu_carry/, made by benchmarks/prepare_gpu_carry.py): voc07-224.zip (or a sample zip)
# and efficientnet_lite0_trunk.pth. Output in $OUT (default runs/gpu_session): session.log (everything printed),
# summary.txt (the GPU and each stage's status and time), bench.json, presets.json, notebook.zip (figures).
# --dry-run: every stage on the CPU with tiny sizes and iterations (tests/test_gpu_session.py runs it).
# Environment: PYTHON (default: .venv/bin/python if there, else python3), WORK_DIR (scratch, default a new
# temporary folder), the budgets above (defaults 240 / 120 / 320 s: about 11.5 minutes for all three).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
STAGES=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        bench|notebook|presets) STAGES+=("$arg") ;;
        *) echo "gpu_session.sh: unknown argument '$arg' (stages: bench notebook presets; option: --dry-run)" >&2
           exit 2 ;;
    esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(bench notebook presets)

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
GPU_CARRY=${GPU_CARRY:-gpu_carry}
OUT=${OUT:-runs/gpu_session}
if [ -z "${WORK_DIR:-}" ]; then
    WORK_DIR=$(mktemp -d /tmp/gpu_session.XXXXXX)
    trap 'rm -rf "$WORK_DIR"' EXIT  # the unpacked data and the notebook's files (figures are zipped into $OUT)
fi
mkdir -p "$OUT" "$WORK_DIR"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    BENCH_BUDGET=${BENCH_BUDGET:-240}; NOTEBOOK_BUDGET=${NOTEBOOK_BUDGET:-120}; PRESETS_BUDGET=${PRESETS_BUDGET:-120}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    DEVICE=cuda
    BENCH_BUDGET=${BENCH_BUDGET:-240}; NOTEBOOK_BUDGET=${NOTEBOOK_BUDGET:-120}; PRESETS_BUDGET=${PRESETS_BUDGET:-320}
fi
NOTEBOOK_ITERS=${NOTEBOOK_ITERS:-600}
NOTEBOOK_EVAL_IMAGES=${NOTEBOOK_EVAL_IMAGES:-500}
SUMMARY="$OUT/summary.txt"

# -- what runs where ------------------------------------------------------------------------------------------
GPU_NAME=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')" 2>&1)
{
    echo "gpu_session $(date -u +%Y-%m-%dT%H:%M:%SZ) $( [ "$DRY_RUN" = 1 ] && echo '(dry run on the CPU: no GPU figure)')"
    echo "GPU: $GPU_NAME; python: $("$PYTHON" -c 'import sys, torch, torchvision; print(sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__)' 2>&1)"
    echo "CPU cores: $(getconf _NPROCESSORS_ONLN); stages: ${STAGES[*]}; budgets (s): bench $BENCH_BUDGET, notebook $NOTEBOOK_BUDGET, presets $PRESETS_BUDGET"
} | tee "$SUMMARY"
if [ "$DRY_RUN" = 0 ] && [ "$GPU_NAME" = none ]; then
    echo "gpu_session.sh: torch sees no GPU here; use --dry-run for the CPU rehearsal" | tee -a "$SUMMARY"
    exit 2
fi

# -- the data: the zip carried in $GPU_CARRY, unpacked into the scratch folder ---------------------------------
ZIP=$(ls "$GPU_CARRY"/*.zip 2>/dev/null | head -n 1)
if [ -z "$ZIP" ]; then
    echo "gpu_session.sh: no zip in $GPU_CARRY/: run python benchmarks/prepare_gpu_carry.py first" \
         "(and name $GPU_CARRY in the device call's carry)" | tee -a "$SUMMARY"
    exit 2
fi
"$PYTHON" -m zipfile -e "$ZIP" "$WORK_DIR/data" || { echo "gpu_session.sh: cannot unpack $ZIP" | tee -a "$SUMMARY"; exit 2; }
DATA_DIR=$(dirname "$(find "$WORK_DIR/data" -name voc07_train.json | head -n 1)")
LITE0="$GPU_CARRY/efficientnet_lite0_trunk.pth"
echo "data: $ZIP -> $DATA_DIR ($(find "$DATA_DIR" -name '*.jpg' | wc -l) images)" | tee -a "$SUMMARY"

# run_stage NAME BUDGET COMMAND...: the command under `timeout`, its status and wall time into the summary.
run_stage() {
    local name=$1 budget=$2 start status
    shift 2
    echo; echo "=== $name (budget ${budget} s): $*"
    start=$(date +%s)
    timeout --signal=INT --kill-after=20 "$budget" "$@"
    status=$?
    local seconds=$(( $(date +%s) - start ))
    case $status in
        0) echo "$name: ok in ${seconds} s" ;;
        124|137) echo "$name: STOPPED at its ${budget} s budget (${seconds} s)" ;;
        *) echo "$name: FAILED with status $status after ${seconds} s" ;;
    esac | tee -a "$SUMMARY"
}

stage_bench() {
    if [ "$DRY_RUN" = 1 ]; then
        set -- --device cpu --image-size 64 --batch-size 4 --small-batch 2 --iters 3 --warmup 1 --loss-iters 2 \
               --num-workers 0 --compile-backend eager
    else
        set -- --device cuda --iters 160 --warmup 40 --loss-iters 300 --num-workers 8
    fi
    run_stage bench "$BENCH_BUDGET" "$PYTHON" benchmarks/bench_gpu_train.py --data-dir "$DATA_DIR" --compile \
        --time-budget $(( BENCH_BUDGET - 45 )) --out "$OUT/bench.json" "$@"
}

stage_notebook() {
    local work="$WORK_DIR/notebook"
    local sets=(--set PRETRAINED=False --set "TRAIN_ITERS=$NOTEBOOK_ITERS" --set "NUM_EVAL_IMAGES=$NOTEBOOK_EVAL_IMAGES")
    if [ "$DRY_RUN" = 1 ]; then
        sets=(--set PRETRAINED=False --set IMAGE_SIZE=64 --set BATCH_SIZE=4 --set NUM_WORKERS=0 --set OVERFIT_NUM_IMAGES=8
              --set OVERFIT_ITERS=2 --set TRAIN_ITERS=2 --set LOG_PERIOD=1 --set NUM_VIS_IMAGES=2 --set NUM_EVAL_IMAGES=4)
    else
        sets+=(--set OVERFIT_ITERS=200 --set NUM_WORKERS=8)
    fi
    run_stage notebook "$NOTEBOOK_BUDGET" "$PYTHON" benchmarks/run_notebook.py --mode full --data-dir "$DATA_DIR" \
        --output-dir "$work" --figures "$work/figures" --sub 'download=True=>download=False' "${sets[@]}"
    if [ -d "$work/figures" ]; then
        (cd "$work" && "$PYTHON" -m zipfile -c "$OUT/notebook.zip" figures mAP/output 2>/dev/null \
            || "$PYTHON" -m zipfile -c "$OUT/notebook.zip" figures)
    fi
}

stage_presets() {
    local weights=()
    [ -f "$LITE0" ] && weights=(--backbone-weights "$LITE0")
    [ -f "$LITE0" ] || echo "WARNING: $LITE0 missing: the Lite0 trunk starts from random weights" | tee -a "$SUMMARY"
    if [ "$DRY_RUN" = 1 ]; then
        set -- --device cpu --iters 3 --probe-iters 3 --image-size 64 --batch-size 4 --max-val-images 4 --num-workers 0
    else
        set -- --device cuda --iters 9000 --probe-iters 40 --num-workers 8
    fi
    run_stage presets "$PRESETS_BUDGET" "$PYTHON" benchmarks/compare_presets.py --dataset voc --data-dir "$DATA_DIR" \
        --presets course improved --backbone efficientnet_lite0 "${weights[@]}" --speed fastest \
        --time-budget $(( PRESETS_BUDGET - 30 )) --log-period 500 --out "$OUT/presets.json" "$@"
}

for stage in "${STAGES[@]}"; do
    "stage_$stage"
done
"$PYTHON" - "$OUT" >> "$SUMMARY" <<'PY'
# The headline figures of bench.json and presets.json, with the GPU named.
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.isfile(path) else None
bench, presets = load("bench.json"), load("presets.json")
if bench:
    rates = {k: v["it_s"] for k, v in bench["rates"].items()}
    print(f"\nbench_gpu_train on {bench['gpu'] or bench['device']} ({bench['data']}):")
    for label, value in bench["rates"].items():
        print(f"  {label:16s} {value['it_s']:8.2f} it/s  {value['images_s']:8.1f} img/s  batch {value['batch']}  "
              f"{value['memory_format']}  peak {value['peak_mib']} MiB")
    def ratio(a, b):
        return f"{rates[a] / rates[b]:.2f}" if a in rates and b in rates else "n/a"
    small = [k for k in rates if k.startswith("bf16@b")]
    pairs = [("course-nhwc", "course"), ("bf16-nhwc", "bf16"), ("cuda-graphs", "bf16"), ("compile", "bf16")]
    pairs += [(s.replace("bf16", "cuda-graphs"), s) for s in small]
    print("  ratios: " + ", ".join(f"{a} / {b} = {ratio(a, b)}" for a, b in pairs))
    fastest = max((k for k, v in bench["rates"].items() if v["batch"] == bench["settings"]["batch_size"]),
                  key=rates.get, default=None)
    if fastest:
        print(f"  fastest at batch {bench['settings']['batch_size']}: {fastest}, x{ratio(fastest, 'course')} the course path")
    for key in ("errors", "skipped"):
        if bench[key]:
            print(f"  {key}: {bench[key]}")
    if bench["losses"]:
        print(f"  mean total loss of the last 50 of {bench['settings']['loss_iters']} iterations: {bench['losses']}")
if presets:
    for r in presets["results"]:
        print(f"compare_presets {r['preset']:9s} on {r['gpu'] or 'cpu'}: {r['iterations']} iterations, trunk "
              f"{r['trunk']} ({r['weights']}), mAP {r['mAP']}, train {r['train_minutes']} min, eval {r['eval_minutes']} min")
PY
echo; echo "=== summary ($SUMMARY)"; cat "$SUMMARY"
