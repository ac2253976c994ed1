#!/usr/bin/env bash
# Every method on flowers12 (12 species, class folders, 720 train / 240 test) at the same small CPU
# budget as the cub100 run (benchmarks/cub100_cpu.yaml), 3 epochs, 3 seeds.
# The attention methods' internal sizes equal the 128 px input; TASN's attention net runs at output
# stride 16 (see run_cub100_cpu.sh for why). Finished runs are reused: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/flowers12}
METHODS=${METHODS:-baseline,tasn,wsban,wsdan,rra}
.venv/bin/lookcloser benchmark accuracy --config benchmarks/cub100_cpu.yaml --data "$DATA" \
  --methods "$METHODS" --backbone efficientnet_lite0 --pretrained --epochs 3 --seeds 3 \
  --out benchmarks/results/flowers12-cpu \
  -o tasn.attention_size=128 -o tasn.sample_size=128 -o tasn.attention_stride=16 -o rra.patch_size=128 "$@"
