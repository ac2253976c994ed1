#!/usr/bin/env bash
# The GPU benchmarks in one pass, ordered so that the most needed results come first and each stage
# writes its own folder (an interrupted pass keeps what finished; the accuracy stages resume).
# Stage 4 runs first: the looking-closer benchmark (benchmarks/looking_closer.py: every arm of the CPU
# benchmark, the baseline at 96/128/160/224 px and each method's 128 px glance, pretrained EfficientNet-Lite0,
# the heads-first recipe of benchmarks/looking_closer.yaml) at GPU length: EPOCHS epochs after the two
# heads-first ones. Its arms run as STREAMS parallel processes that share the GPU, seed 0 of every arm first.
#   1. speed of every method beside the baseline: EfficientNet-Lite0, 224 px, batch 64, bf16,
#      then with channels-last, then with torch.compile;
#   2. TASN at the paper setting (ResNet-50 part/master, ResNet-18 attention, 512 in, 224 sampled,
#      batch 96) beside ResNet-50 at 224, with the trilinear + sampler share;
#   3. WS-DAN/WS-BAN at the paper setting (Inception-v3 Mixed_6e, 448 px, batch 32) with the crop/drop share;
#   4. looking closer on DATASETS (cub100, flowers12) at GPU length (EPOCHS, SEEDS).
# Stage 0, first of all where it is asked for: the scenes benchmark (looking_closer.py --recipe scenes: cub100 in
# 448 px scenes built into SCENES by `looking_closer.py build`, 224 px glances and zooms, the baseline at
# 224-448 px, 10 % held out) at GPU length, in SCENE_STREAMS parallel processes, on each of SCENE_SETS (cub100
# in scenes, then the synthetic set rendered at 448 px); runs go to benchmarks/results/scenes/closer-SET-gpu/
# and `looking_closer.py --recipe scenes --device cuda evaluate SET` then adds the held-out thresholds, the
# adaptive sweeps and the localization.
# DATA_ROOT holds cub100/ and flowers12/ (the shared data; read in place, never copied into git).
# STAGES picks stages, e.g. STAGES="1 4". Results go to benchmarks/results/*-gpu* and
# benchmarks/results/heads/closer-DATA-gpu/; `python benchmarks/looking_closer.py --device cuda report` tables them.
set -euo pipefail
cd "$(dirname "$0")/.."
LC=${LC:-lookcloser}
PY=${PY:-python3}
DATA_ROOT=${DATA_ROOT:-../shared/data}
STAGES=${STAGES:-"0 1 2 3"}
SCENES=${SCENES:-/tmp/cub100-scenes}
SCENE_STREAMS=${SCENE_STREAMS:-"tasn wsdan wsban rra full b352,b288,glance"}
SCENE_SETS=${SCENE_SETS:-"cub100-scenes synth448"}  # cub100 in scenes first, then the synthetic set at 448 px
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-3}
DATASETS=${DATASETS:-"cub100 flowers12"}
WORKERS=${WORKERS:-3}
# arms per parallel process, the slow methods alone: every stream finishes seed 0 of its arms before seed 1
STREAMS=${STREAMS:-"tasn rra wsdan,wsban b96,full glance,b160"}
R=benchmarks/results
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has 0; then
  [[ " $SCENE_SETS " == *" cub100-scenes "* ]] && $PY benchmarks/looking_closer.py --data-root "$DATA_ROOT" --scenes "$SCENES" build
  for sd in $SCENE_SETS; do
    pids=()
    mkdir -p "$R/scenes/closer-$sd-gpu/logs"
    for arms in $SCENE_STREAMS; do
      (for ((s = 1; s <= SEEDS; s++)); do
         $PY benchmarks/looking_closer.py --recipe scenes --device cuda --data-root "$DATA_ROOT" --scenes "$SCENES" \
           train "$sd" --arms "$arms" --epochs "$EPOCHS" --seeds "$s" --workers "$WORKERS" --cache || exit 1
       done) > "$R/scenes/closer-$sd-gpu/logs/${arms//,/-}.txt" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || echo "a scenes stream failed: see $R/scenes/closer-$sd-gpu/logs/"; done
    $PY benchmarks/looking_closer.py --recipe scenes --device cuda --scenes "$SCENES" evaluate "$sd"
  done
fi
if has 4; then
  for ds in $DATASETS; do
    pids=()
    mkdir -p "$R/heads/closer-$ds-gpu/logs"
    for arms in $STREAMS; do
      (for ((s = 1; s <= SEEDS; s++)); do  # --seeds s reuses the finished seeds and trains the next one
         $PY benchmarks/looking_closer.py --device cuda --data-root "$DATA_ROOT" train "$ds" --arms "$arms" \
           --epochs "$EPOCHS" --seeds "$s" --workers "$WORKERS" --cache || exit 1
       done) > "$R/heads/closer-$ds-gpu/logs/${arms//,/-}.txt" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || echo "a stream of $ds failed: see $R/heads/closer-$ds-gpu/logs/"; done
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
