#!/usr/bin/env bash
# The GPU benchmarks in one pass, ordered so that the most needed results come first and each stage
# writes its own folder (an interrupted pass keeps what finished; the accuracy stages resume).
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
STAGES=${STAGES:-"1 2 3 4"}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-3}
SIZE=${SIZE:-224}
R=benchmarks/results
has() { [[ " $STAGES " == *" $1 "* ]]; }

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
if has 4; then
  for ds in cub100 flowers12; do
    $LC benchmark accuracy --data "$DATA_ROOT/$ds" --methods baseline,tasn,wsban,wsdan,rra \
      --backbone efficientnet_lite0 --pretrained --epochs "$EPOCHS" --seeds "$SEEDS" --image-size "$SIZE" \
      --batch-size 32 --optimizer adamw --lr 0.001 --device cuda --workers 8 --quiet \
      --out $R/$ds-gpu
  done
fi
