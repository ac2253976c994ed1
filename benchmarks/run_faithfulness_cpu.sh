#!/usr/bin/env bash
# The methods whose defaults the faithfulness round changed (TASN's coupled sampler cap and grid, WS-DAN's
# official center update, RRA's 0.32 patches), re-run at the earlier CPU budget (benchmarks/cub100_cpu.yaml:
# 128 px source and views, one seed) so the figures compare with benchmarks/results/{synth,cub100}-cpu.
# WS-BAN/WS-DAN keep output stride 32 and TASN its 512-channel head, as in those runs; wsdan_norm is WS-DAN
# with the earlier normalized center update, measured beside the official one.
set -euo pipefail
cd "$(dirname "$0")/.."
LC=${LC:-.venv/bin/lookcloser}
opts=(-o tasn.view_size=128 -o tasn.sample_size=128 -o tasn.attention_stride=16 -o rra.patch_size=128
      -o wsban.output_stride=32 -o wsdan.output_stride=32 -o wsdan_norm.output_stride=32
      -o wsdan_norm.center_update=normalized)
for spec in "synth 10" "../shared/data/cub100 2"; do
  set -- $spec
  name=$(basename "$1")
  $LC benchmark accuracy --config benchmarks/cub100_cpu.yaml --data "$1" \
    --methods tasn,wsban,wsdan,wsdan_norm=wsdan,rra --backbone efficientnet_lite0 --pretrained \
    --epochs "$2" --seeds 1 --out "benchmarks/results/faithful-$name-cpu" --quiet "${opts[@]}"
done
