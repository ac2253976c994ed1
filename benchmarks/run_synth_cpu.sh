#!/usr/bin/env bash
# Every method on the built-in synthetic fine-grained set (8 classes, 40 train / 20 test images each,
# 128 px) at the same small CPU budget as the cub100 run (benchmarks/cub100_cpu.yaml), 10 epochs, 3 seeds.
# The attention methods' internal sizes equal the 128 px input, so no method sees more pixels than
# another; TASN's attention net runs at output stride 16 (see run_cub100_cpu.sh for why).
# Finished runs are reused: run it again to continue after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS=${METHODS:-baseline,tasn,wsban,wsdan,rra}
.venv/bin/lookcloser benchmark accuracy --config benchmarks/cub100_cpu.yaml --data synth \
  --methods "$METHODS" --backbone efficientnet_lite0 --pretrained --epochs 10 --seeds 3 \
  --out benchmarks/results/synth-cpu \
  -o tasn.attention_size=128 -o tasn.sample_size=128 -o tasn.attention_stride=16 -o rra.patch_size=128 "$@"
