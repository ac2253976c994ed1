#!/usr/bin/env bash
# Every method at the small CPU budget of benchmarks/cub100_cpu.yaml (pretrained EfficientNet-Lite0,
# 128 px, AdamW 1e-3 cosine) on one data set:  cpu_budget.sh NAME DATA EPOCHS SEEDS [extra flags]
# writes benchmarks/results/NAME-cpu. The attention methods' internal image sizes are set to the 128 px
# input so no method sees more pixels than another. TASN's attention net runs at output stride 16, not
# the paper's 8: dilated convolutions are about 4x slower on CPUs and made one cub100 epoch take 25 minutes.
# Finished runs are reused: run it again to continue after an interruption. METHODS picks methods.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 data=$2 epochs=$3 seeds=$4
shift 4
.venv/bin/lookcloser benchmark accuracy --config benchmarks/cub100_cpu.yaml --data "$data" \
  --methods "${METHODS:-baseline,tasn,wsban,wsdan,rra}" --backbone efficientnet_lite0 --pretrained \
  --epochs "$epochs" --seeds "$seeds" --out "benchmarks/results/$name-cpu" \
  -o tasn.view_size=128 -o tasn.sample_size=128 -o tasn.attention_stride=16 -o rra.patch_size=128 "$@"
