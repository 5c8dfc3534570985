#!/usr/bin/env bash
# The CPU figures of docs/performance.md: FERAtt fp32 train step at batch 32, JAX beside PyTorch
# (eager and channels_last, interleaved in one process), for the configurations compared there.
#
#   experiments/cpu_bench.sh OUT_DIR [STEPS]
#
# 1. baseline:  jaxlib's defaults (YNNPACK convolutions), the models as they are;
# 2. flags:     + feratt_jax.xla_cpu.FAST_CPU_FLAGS (what `feratt bench` uses by default);
# 3. flags+im2col: + the proposed small-spatial convolution rewrite (experiments/cpu_variants.py).
# Take the figures on an idle machine (see `uptime`); the JAX/PyTorch ratios are fair either way
# because the frameworks are interleaved step by step.
set -euo pipefail
OUT_DIR="${1:?usage: cpu_bench.sh OUT_DIR [STEPS]}"
STEPS="${2:-10}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
mkdir -p "$OUT_DIR"
cd "$REPO"
COMMON=(--model ferattention --batch-size 32 --precision fp32 --steps "$STEPS" --warmup 2)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT_DIR/load.txt"
"$PY" -m feratt_jax bench "${COMMON[@]}" --no-fast-cpu-flags --compare-torch --render-batch-size \
    --json "$OUT_DIR/1_baseline.json" --markdown "$OUT_DIR/1_baseline.md"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT_DIR/load.txt"
"$PY" -m feratt_jax bench "${COMMON[@]}" --compare-torch --render-batch-size 32 256 \
    --json "$OUT_DIR/2_flags.json" --markdown "$OUT_DIR/2_flags.md"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT_DIR/load.txt"
"$PY" experiments/cpu_variants.py --patch small-conv-im2col "${COMMON[@]}" --compare-torch --render-batch-size \
    --json "$OUT_DIR/3_flags_im2col.json" --markdown "$OUT_DIR/3_flags_im2col.md"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT_DIR/load.txt"
