#!/usr/bin/env bash
# The paper's comparison at the benchmark size on one GPU machine (issue 13), within a time budget.
#
#   experiments/gpu_paper_table.sh [--size benchmark] [--folds 5] [--budget-s 540] [--workdir DIR]
#       [--methods "M1 M2" | --jobs FILE] [--set FIELD=VALUE]... [OUT_DIR]
#
# OUT_DIR defaults to $OUT. The four methods of experiments/paper_table.py train side by side,
# one process each on the one GPU (each is launch-bound at batch 32, so they overlap), every
# method going through its folds in order. Each fold resumes from its own checkpoints and a
# finished fold is skipped, so rerunning the same command (same --workdir) continues where
# the budget stopped it. Once fold 0 of every method is done, experiments/feratt_diagnostics.py
# runs on it beside the training (attention face-AUC per image vs the fixed template, BN lag,
# reconstruction, loss balance).
#
# Outputs in OUT_DIR: runs.tar.gz (the workdir without checkpoints: every fold's config.json,
# data.json, metrics.jsonl and eval/, the per-method logs, the diagnostics), env.json,
# progress.md (folds finished per method), log.txt. Assemble the table from the folds every
# method finished, on any machine (it trains nothing when the folds are there):
#
#   tar xzf runs.tar.gz && python experiments/paper_table.py --size benchmark --folds K \
#       --workdir runs/paper_table_gpu --out experiments/results/paper_table_gpu
#
# --methods: a subset of the four (space-separated); --set: a config override for every method
# (paper_table.py's --set, recorded in its table), e.g. --set loss.reconstruction_form=linear.
# --jobs FILE: instead of one process per method, one per line of FILE (a sweep, e.g.
# experiments/calibration_sweep_gpu.txt): "NAME [VAR=VALUE]... [paper_table.py options]", blank
# lines and # comments skipped; job NAME runs paper_table.py with those environment variables
# and options (after --size/--folds/--set, so a line overrides them) in WORKDIR/NAME, its table
# in WORKDIR/NAME/table. No diagnostics in this mode.
# --dry-run: the tiny size, 6 steps, 2 folds; checks the script on a CPU, not the numbers.
# On NVIDIA GPUs XLA runs float32 convolutions and matmuls in TF32 by default; to train at full
# float32 as on a CPU, set JAX_DEFAULT_MATMUL_PRECISION=highest before the script (docs/training.md
# section 8: FERAtt's first GPU run and its CPU twin went different ways).
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

SIZE=benchmark
FOLDS=5
BUDGET_S=540
WORKDIR=runs/paper_table_gpu
OUT_DIR=""
EXTRA=()
METHODS=(preactresnet18 ferattention ferattentiongmm preactresnet18_narrow)
JOBS_FILE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --folds) FOLDS="$2"; shift 2 ;;
        --budget-s) BUDGET_S="$2"; shift 2 ;;
        --workdir) WORKDIR="$2"; shift 2 ;;
        --methods) read -r -a METHODS <<< "$2"; shift 2 ;;
        --set) EXTRA+=(--set "$2"); shift 2 ;;
        --jobs) JOBS_FILE="$2"; shift 2 ;;
        --dry-run) SIZE=tiny; FOLDS=2; EXTRA+=(--steps 6); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_paper_table.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) OUT_DIR="$1"; shift ;;
    esac
done
OUT_DIR="${OUT_DIR:-${OUT:-}}"
if [[ -z "$OUT_DIR" ]]; then
    echo "gpu_paper_table.sh: give an output folder or set OUT" >&2
    exit 2
fi
# The jobs: NAMES[i] runs paper_table.py with environment JOB_ENV[i] and options JOB_ARGS[i]
# (word lists) in WORKDIR/JOB_DIR[i]. Checked before any work is done.
NAMES=(); JOB_ENV=(); JOB_ARGS=(); JOB_DIR=()
if [[ -n "$JOBS_FILE" ]]; then
    [[ -f "$JOBS_FILE" ]] || { echo "gpu_paper_table.sh: --jobs $JOBS_FILE: no such file" >&2; exit 2; }
    n=0
    while read -r name rest || [[ -n "$name" ]]; do
        n=$((n + 1))
        [[ -z "$name" || "$name" == \#* ]] && continue
        if [[ ! "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then
            echo "gpu_paper_table.sh: $JOBS_FILE line $n: job name '$name' must be letters, digits, _ . -" >&2; exit 2
        fi
        for seen in "${NAMES[@]}"; do
            [[ "$seen" == "$name" ]] && { echo "gpu_paper_table.sh: $JOBS_FILE line $n: job '$name' named twice" >&2; exit 2; }
        done
        envs=""; args=""
        for word in $rest; do
            if [[ -z "$args" && "$word" =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=" $word"; else args+=" $word"; fi
        done
        NAMES+=("$name"); JOB_ENV+=("$envs"); JOB_ARGS+=("$args"); JOB_DIR+=("$name")
    done < "$JOBS_FILE"
    (( ${#NAMES[@]} > 0 )) || { echo "gpu_paper_table.sh: $JOBS_FILE has no jobs" >&2; exit 2; }
else
    for m in "${METHODS[@]}"; do
        NAMES+=("$m"); JOB_ENV+=(""); JOB_ARGS+=("--methods $m"); JOB_DIR+=(".")
    done
fi
mkdir -p "$OUT_DIR" "$WORKDIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
WORKDIR="$(cd "$WORKDIR" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Four trainers and the diagnostics share the GPU: no up-front grab of 75 % of it each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Folds 1..K-1 (and a rerun on the same machine) reuse fold 0's compiled steps.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/.jax_cache}"
START_S=$(date +%s)
LOG="$OUT_DIR/log.txt"
: > "$LOG"
say() { echo "[gpu_paper_table $(( $(date +%s) - START_S ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }

# ---------------------------------------------------------------- environment
"$PY" - > "$OUT_DIR/env.json" 2>> "$LOG" <<'EOF'
import importlib, json, os, platform
info = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "grain", "ml_collections", "tensorboardX"):
    try:
        info[name] = importlib.import_module(name).__version__
    except Exception as err:  # noqa: BLE001
        info[name] = f"missing ({err})"
import jax
info["jax_devices"] = [str(d) for d in jax.devices()]
info["device_kind"] = jax.devices()[0].device_kind
print(json.dumps(info, indent=2))
EOF
say "environment: $(tr -d '\n ' < "$OUT_DIR/env.json" | cut -c1-400)"
command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1 || true

# ---------------------------------------------------------------- the face bank, once
# Otherwise every trainer builds the same bank at the same time, each with one worker per core.
say "face bank for size $SIZE"
"$PY" - "$SIZE" "${METHODS[0]}" 2>&1 <<'EOF' | tee -a "$LOG"
import sys, time
from feratt_jax import factory
from feratt_jax.configs import load_config
from feratt_jax.data import pipeline
t0 = time.perf_counter()
bank = pipeline.load_bank(factory.data_config(load_config(f"{sys.argv[2]}:{sys.argv[1]}")))
print(f"face bank: {len(bank['label'])} faces in {time.perf_counter() - t0:.1f} s")
EOF

# ---------------------------------------------------------------- progress report
# The method folders of job i: WORKDIR/METHOD (method mode) or WORKDIR/NAME/METHOD (--jobs).
method_dirs() {
    if [[ -n "$JOBS_FILE" ]]; then
        find "$WORKDIR/${JOB_DIR[$1]}" -mindepth 1 -maxdepth 1 -type d ! -name table 2> /dev/null | sort || true
    else
        echo "$WORKDIR/${NAMES[$1]}"
    fi
}
progress() {
    {
        echo "| job | folds finished (of $FOLDS) | last logged step of the fold in progress |"
        echo "|---|---:|---|"
        for i in "${!NAMES[@]}"; do
            done_n=0
            last="-"
            while read -r d; do
                [[ -n "$d" ]] || continue
                done_n=$(( done_n + $( (find "$d" -path '*/eval/metrics.json' 2> /dev/null || true) | wc -l) ))
                for ((k = 0; k < FOLDS; k++)); do
                    f="$d/fold_$k"
                    if [[ -f "$f/metrics.jsonl" && ! -f "$f/eval/metrics.json" ]]; then
                        last="fold $k: step $(tail -n 1 "$f/metrics.jsonl" | sed 's/.*"step": \([0-9]*\).*/\1/' || true)"
                    fi
                done
            done < <(method_dirs "$i")
            echo "| ${NAMES[$i]} | $done_n | $last |"
        done
    } > "$OUT_DIR/progress.md"
}

# ---------------------------------------------------------------- the jobs, side by side
# Stop the trainers with time left to checkpoint (SIGTERM: each saves and exits) and pack.
TRAIN_S=$(( $(left) - 45 ))
if (( TRAIN_S < 60 )); then
    say "only $(left) s left of the budget after the bank: nothing trained"
    exit 4
fi
say "training ${NAMES[*]} at size $SIZE, $FOLDS folds, for at most ${TRAIN_S}s"
PIDS=()
for i in "${!NAMES[@]}"; do
    name="${NAMES[$i]}"
    if [[ -n "$JOBS_FILE" ]]; then table="$WORKDIR/$name/table"; else table="$WORKDIR/tables/$name"; fi
    # shellcheck disable=SC2086  # JOB_ENV / JOB_ARGS are word lists
    env ${JOB_ENV[$i]} timeout --signal=TERM --kill-after=30 "$TRAIN_S" "$PY" experiments/paper_table.py --size "$SIZE" \
        --folds "$FOLDS" "${EXTRA[@]}" ${JOB_ARGS[$i]} --workdir "$WORKDIR/${JOB_DIR[$i]}" --out "$table" \
        >> "$WORKDIR/log_$name.txt" 2>&1 &
    PIDS+=($!)
done

# ---------------------------------------------------------------- diagnostics of fold 0, beside the training
diagnostics() {
    [[ -z "$JOBS_FILE" ]] || return 0
    for m in "${METHODS[@]}"; do
        until [[ -f "$WORKDIR/$m/fold_0/eval/metrics.json" ]]; do
            (( $(left) > 60 )) || { echo "diagnostics: no time left once fold 0 is done"; return 0; }
            sleep 5
        done
    done
    echo "diagnostics: fold 0 of every method done; $(left) s left"
    timeout --signal=TERM --kill-after=10 $(( $(left) - 30 )) "$PY" experiments/feratt_diagnostics.py \
        --workdir "$WORKDIR" --out "$WORKDIR/diagnostics" --folds 0 --methods "${METHODS[@]}" || echo "diagnostics: exit status $?"
}
diagnostics >> "$WORKDIR/log_diagnostics.txt" 2>&1 &
DIAG_PID=$!

while kill -0 "${PIDS[@]}" 2> /dev/null; do
    progress
    sleep 15
    if ! kill -0 "${PIDS[@]}" 2> /dev/null; then break; fi
done
for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}" && s=0 || s=$?
    say "${NAMES[$i]}: exit status $s (124 = stopped by the budget; rerun to resume)"
done
wait "$DIAG_PID" || true
progress
cat "$OUT_DIR/progress.md" | tee -a "$LOG"
for m in "${NAMES[@]}"; do
    grep -E "^fold [0-9]+: test" "$WORKDIR/log_$m.txt" | sed "s/^/$m /" | tee -a "$LOG" || true
done
tail -n 5 "$WORKDIR/log_diagnostics.txt" | tee -a "$LOG" || true

# ---------------------------------------------------------------- pack (no checkpoints)
tar czf "$OUT_DIR/runs.tar.gz" --exclude='checkpoints' --exclude='best' --exclude='.jax_cache' \
    -C "$(dirname "$WORKDIR")" "$(basename "$WORKDIR")"
say "done: $(du -h "$OUT_DIR/runs.tar.gz" | cut -f1) of results in $OUT_DIR/runs.tar.gz"
