#!/usr/bin/env bash
# The DCGAN demo trained twice from the same seed and data, in float32 and in bfloat16
# (config.dtype), each evaluated against the Fashion-MNIST classifier, then one table of both
# (Frechet distance and the rest beside their real-data floor), and both sample grids.
#
#   experiments/mixed_precision_demo.sh            # the demo length: 5000 steps each
#   STEPS=20 NUM_SAMPLES=500 CLASSIFIER_STEPS=50 experiments/mixed_precision_demo.sh   # smoke
#
# Multi-minute on CPU (bfloat16 is emulated there and usually slower than float32): run it on a
# quiet machine. Rerunning resumes every run where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
JAXGEN=${JAXGEN:-.venv/bin/jaxgen}
OUT=${OUT:-runs/mixed_precision}
STEPS=${STEPS:-5000}
NUM_SAMPLES=${NUM_SAMPLES:-10000}
EXTRACTOR=${EXTRACTOR:-$OUT/classifier}
CLASSIFIER_STEPS=${CLASSIFIER_STEPS:-}

classifier_flags=()
[ -n "$CLASSIFIER_STEPS" ] && classifier_flags=(--config.num_steps="$CLASSIFIER_STEPS")
"$JAXGEN" train --config experiments/configs/classifier_fashion.py --workdir "$EXTRACTOR" \
  "${classifier_flags[@]}"
for dtype in float32 bfloat16; do
  "$JAXGEN" train --config experiments/configs/dcgan_fashion.py --workdir "$OUT/$dtype" \
    --config.dtype="$dtype" --config.num_steps="$STEPS"
  "$JAXGEN" evaluate --workdir "$OUT/$dtype" --extractor "$EXTRACTOR" --num_samples "$NUM_SAMPLES"
done
"$JAXGEN" evaluate --compare "$OUT/float32" "$OUT/bfloat16"
echo "sample grids: $OUT/float32/samples/ $OUT/bfloat16/samples/"
