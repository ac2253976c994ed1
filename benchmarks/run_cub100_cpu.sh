#!/usr/bin/env bash
# Every method on cub100 at the same small CPU budget (benchmarks/cub100_cpu.yaml). The attention
# methods' internal image sizes are set to the 128 px input so no method sees more pixels than another (128 px).
# TASN's attention net runs at output stride 16, not the paper's 8: dilated convolutions are about 4x
# slower on CPUs and made one epoch take 25 minutes.
# Finished runs are reused: run it again to continue after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cub100}
METHODS=${METHODS:-baseline,tasn,wsban,wsdan,rra}
.venv/bin/lookcloser benchmark accuracy --config benchmarks/cub100_cpu.yaml --data "$DATA" \
  --methods "$METHODS" --backbone efficientnet_lite0 --pretrained --epochs 2 --seeds 1 \
  --out benchmarks/results/cub100-cpu \
  -o tasn.attention_size=128 -o tasn.sample_size=128 -o tasn.attention_stride=16 -o rra.patch_size=128 "$@"
