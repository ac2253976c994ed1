#!/usr/bin/env bash
# The GPU benchmarks in one pass, ordered so that the most needed results come first and each stage
# writes its own folder (an interrupted pass keeps what finished; the accuracy stages resume).
# Stage 4 runs first: the accuracy of every method with the current recipe (benchmarks/looking_closer.yaml:
# heads first, 2 epochs on the frozen backbone at 3e-3, then everything at 1e-3), at GPU length.
#   1. speed of every method beside the baseline: EfficientNet-Lite0, 224 px, batch 64, bf16,
#      then with channels-last, then with torch.compile;
#   2. TASN at the paper setting (ResNet-50 part/master, ResNet-18 attention, 512 in, 224 sampled,
#      batch 96) beside ResNet-50 at 224, with the trilinear + sampler share;
#   3. WS-DAN/WS-BAN at the paper setting (Inception-v3 Mixed_6e, 448 px, batch 32) with the crop/drop share;
#   4. accuracy of every method on cub100 and flowers12, pretrained EfficientNet-Lite0 (EPOCHS, SEEDS, SIZE).
# DATA_ROOT holds cub100/ and flowers12/ (the shared data; read in place, never copied into git).
# STAGES picks stages, e.g. STAGES="1 4". Results go to benchmarks/results/*-gpu*.
set -euo pipefail
cd "$(dirname "$0")/.."
LC=${LC:-lookcloser}
PY=${PY:-python3}
DATA_ROOT=${DATA_ROOT:-../shared/data}
STAGES=${STAGES:-"4 1 2 3"}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-3}
SIZE=${SIZE:-224}
R=benchmarks/results
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has 4; then
  for ds in cub100 flowers12; do
    $LC benchmark accuracy --config benchmarks/looking_closer.yaml --data "$DATA_ROOT/$ds" \
      --methods baseline,tasn,wsban,wsdan,rra --epochs "$EPOCHS" --seeds "$SEEDS" --image-size "$SIZE" \
      --device cuda --workers 8 --eval-every 0 --quiet --out $R/heads/$ds-gpu
  done
fi
if has 1; then
  $LC benchmark speed --device cuda --image-size 224 --batch-size 64 --out $R/speed-gpu
  $LC benchmark speed --device cuda --image-size 224 --batch-size 64 --channels-last --out $R/speed-gpu-cl
  $LC benchmark speed --device cuda --image-size 224 --batch-size 64 --channels-last --compile \
    --out $R/speed-gpu-cl-compile
fi
if has 2; then
  $PY benchmarks/tasn_speed.py --device cuda --out $R/tasn-speed-gpu.json
fi
if has 3; then
  $PY benchmarks/wsdan_speed.py --device cuda --channels-last --out $R/wsdan-speed-gpu.json
fi
