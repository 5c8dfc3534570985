#!/usr/bin/env bash
# GPU check for feratt-jax (issue 6): one script, at most 8 minutes, on an H100/H200
# machine with JAX and PyTorch preinstalled and no network.
#
#   experiments/gpu_check.sh [--dry-run] [--install] [OUT_DIR]   (OUT_DIR defaults to $OUT)
#
# --install: first set up the environment the README's GPU line sets up (needs the network):
#     pip install -e ".[cuda12]" -c constraints.txt
#
# What it measures, in ONE process so that JAX and PyTorch are interleaved step by step:
#   * JAX FERAtt train step (the trainer's arithmetic, donated state) and inference,
#     bf16 and fp32, at batch 128, 32 and 256: compile time, median/min/max, images/s,
#     XLA FLOPs, MFU against a conv yardstick measured in the same run (and against the
#     H100/H200 datasheet peak), device memory;
#   * the PyTorch implementation (feratt_jax.interop.torch_model) on CUDA, fp32, eager
#     and channels_last, cudnn.benchmark on, beside every JAX setting;
#   * the jitted compositing renderer at batch 256 (measured first).
# Outputs in OUT_DIR: env.json, bench.json / bench.md (rewritten after every setting, so
# a run cut short keeps what it measured), summary.json / summary.md (the issue's GPU
# targets, pass/fail), log.txt.
#
# --dry-run: tiny sizes (PreActResNet18 at 32x32, batch 2, 2 steps), runs on CPU; checks the
# script, not the GPU.
#
# Only jax, flax, optax, numpy (and torch for the comparison) are needed: the bench path
# imports neither grain nor ml_collections nor tensorboardX. If flax/optax are missing and
# a folder of wheels is at $WHEELS (default shared/wheels), they are installed from it
# with pip --no-index.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=0
INSTALL=0
OUT_DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1; shift ;;
        --install) INSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) OUT_DIR="$1"; shift ;;
    esac
done
OUT_DIR="${OUT_DIR:-${OUT:-}}"
if [[ -z "$OUT_DIR" ]]; then
    echo "gpu_check.sh: give an output folder or set OUT" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# JAX and PyTorch share the GPU in one process: no up-front grab of 75% of it by XLA.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Keep the whole script under 8 minutes (480 s); the bench gets what is left.
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
START_S=$(date +%s)
LOG="$OUT_DIR/log.txt"
: > "$LOG"
say() { echo "[gpu_check $(( $(date +%s) - START_S ))s] $*" | tee -a "$LOG" >&2; }

# ---------------------------------------------------------------- environment
if [[ $INSTALL == 1 ]]; then
    say "installing the README's GPU line: pip install -e \".[cuda12]\" -c constraints.txt"
    "$PY" -m pip install -q -e ".[cuda12]" -c constraints.txt >> "$LOG" 2>&1
fi
WHEELS="${WHEELS:-$REPO/shared/wheels}"
if ! "$PY" -c "import flax, optax" 2>/dev/null && [[ -d "$WHEELS" ]]; then
    say "flax/optax missing: installing from $WHEELS (no network)"
    "$PY" -m pip install --no-index --find-links "$WHEELS" flax optax >> "$LOG" 2>&1 || true
fi
if ! "$PY" - > "$OUT_DIR/env.json" 2>> "$LOG" <<'EOF'
import importlib, json, os, platform, sys
info = {"python": platform.python_version(), "hostname": platform.node(), "cpu_count": os.cpu_count()}
missing = []
for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
    try:
        info[name] = importlib.import_module(name).__version__
    except Exception as err:  # noqa: BLE001
        info[name] = None
        if name != "torch":
            missing.append(f"{name} ({err})")
if missing:
    sys.exit("missing required packages: " + ", ".join(missing))
import jax
info["jax_devices"] = [str(d) for d in jax.devices()]
info["device_kind"] = jax.devices()[0].device_kind
if info["torch"]:
    import torch
    info["torch_cuda"] = torch.cuda.is_available()
    info["torch_cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
print(json.dumps(info, indent=2))
EOF
then
    say "environment check failed (see $LOG)"
    tail -n 3 "$LOG" >&2
    exit 3
fi
say "environment: $(tr -d '\n ' < "$OUT_DIR/env.json" | cut -c1-300)"
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$LOG" 2>&1 || true
fi
HAVE_TORCH=$("$PY" -c "import json; print(int(json.load(open('$OUT_DIR/env.json'))['torch'] is not None))")

# ---------------------------------------------------------------- the bench
if [[ $DRY == 1 ]]; then
    # The small baseline at 32x32: compiling full FERAtt four times (bf16/fp32,
    # train/inference) was most of the dry run's 4-5 minutes on 2 cores.
    MODEL=preactresnet18
    SIZES=(--batch-size 2 --image-size 32 --steps 2 --warmup 1 --render-batch-size 4 --render-steps 2 --yardstick-shape 2 8 8 16)
else
    MODEL=ferattention
    # 128 first: the batch of the issue's GPU targets is measured even if time runs out.
    SIZES=(--batch-size 128 32 256 --steps 10 --warmup 2 --render-batch-size 256 --render-steps 20)
fi
TORCH=()
if [[ $HAVE_TORCH == 1 ]]; then
    TORCH=(--compare-torch --torch-device auto)
else
    say "torch not installed: JAX only, no ratios"
fi
LEFT=$(( BUDGET_S - ($(date +%s) - START_S) ))
say "bench: $MODEL bf16+fp32 ${SIZES[*]} ${TORCH[*]} (time limit ${LEFT}s)"
set +e
timeout --signal=TERM --kill-after=10 "$LEFT" "$PY" -m feratt_jax bench \
    --model "$MODEL" --precision bf16 fp32 "${SIZES[@]}" "${TORCH[@]}" \
    --json "$OUT_DIR/bench.json" --markdown "$OUT_DIR/bench.md" 2>&1 | tee -a "$LOG"
STATUS=${PIPESTATUS[0]}
set -e
if [[ $STATUS != 0 ]]; then
    say "bench exited with status $STATUS (124 = time limit); summarising what was written"
fi
if [[ ! -f "$OUT_DIR/bench.json" ]]; then
    say "no results written"
    exit 4
fi

# ---------------------------------------------------------------- summary against the targets
DRY_RUN=$DRY "$PY" - "$OUT_DIR" <<'EOF' | tee -a "$LOG"
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = json.loads((out / "bench.json").read_text())
env = json.loads((out / "env.json").read_text())
dry = os.environ.get("DRY_RUN") == "1"
res = report["results"]

def find(framework, mode, precision, batch):
    """First record of a framework/mode/precision/batch (JAX records carry the JAX precision)."""
    for r in res:
        if (r["framework"], r["mode"], r["precision"], r["batch_size"]) == (framework, mode, precision, batch):
            return r
    return None

batch = 2 if dry else 128
targets = []
bf16 = find("jax", "xla", "bf16", batch)
# The ratio of the bf16 setting: PyTorch (fp32) ran interleaved with the JAX bf16 steps.
ratios = [q for q in report["ratios"] if q["precision"] == "bf16" and q["batch_size"] == batch]
if ratios:
    ratio = ratios[0]["train_jax_over_torch_eager"]
    targets.append({"target": f"bf16 train >= 3x PyTorch fp32 eager images/s at batch {batch}", "value": round(ratio, 3), "pass": ratio >= 3.0})
if bf16 and bf16.get("mfu"):
    targets.append({"target": "MFU >= 40% (bf16, vs the in-run XLA conv yardstick)", "value": round(bf16["mfu"], 4), "pass": bf16["mfu"] >= 0.40})
if bf16 and bf16.get("mfu_datasheet"):
    targets.append({"target": "MFU vs datasheet dense bf16 peak (information)", "value": round(bf16["mfu_datasheet"], 4), "pass": None})
ren = [r for r in report["renderer"] if r["batch_size"] == (4 if dry else 256)]
if ren:
    targets.append({"target": "renderer >= 20,000 images/s (batch 256)", "value": round(ren[0]["images_per_s"], 1), "pass": ren[0]["images_per_s"] >= 20000})
summary = {
    "dry_run": dry,
    "device": report["meta"]["device"],
    "complete": report["meta"].get("complete", False),
    "env": env,
    "targets": targets,
}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
lines = [f"GPU check on {summary['device']}" + (" (DRY RUN: tiny sizes, figures meaningless)" if dry else ""),
         f"bench complete: {summary['complete']}", "", "| target | value | pass |", "|---|---:|---|"]
lines += [f"| {t['target']} | {t['value']} | {'-' if t['pass'] is None else ('yes' if t['pass'] else 'NO')} |" for t in targets]
lines += ["", (out / "bench.md").read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:6 + len(targets)]))
EOF
say "done in $(( $(date +%s) - START_S ))s: $OUT_DIR/summary.md"
