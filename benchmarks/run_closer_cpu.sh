#!/usr/bin/env bash
# The "looking closer" CPU benchmark (benchmarks/looking_closer.py, heads-first recipe) in the order that gives
# answers first: seed 0 of every arm, then the next seeds. Every stage resumes: finished runs are reused, so run
# it again after an interruption. PY picks the interpreter; DATASETS the data sets; ARMS a subset of arms (two
# processes with disjoint ARMS share a 2-core machine, one thread each: OMP_NUM_THREADS=1).
# Epochs after the two heads-first ones, as run for the committed tables: cub100 2, flowers12 4, synth 10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=benchmarks/looking_closer.py
DATASETS=${DATASETS:-"cub100 flowers12 synth"}
ARMS=${ARMS:-}
declare -A EPOCHS=([cub100]=2 [flowers12]=4 [synth]=10)
for ds in $DATASETS; do
  [ -f "benchmarks/results/heads/closer-$ds-cpu/probe/probe.json" ] || $PY $B probe "$ds" --quiet
  for s in 1 2 3; do  # --seeds s reuses the finished seeds and trains the next one
    $PY $B train "$ds" --epochs "${EPOCHS[$ds]}" --seeds "$s" ${ARMS:+--arms "$ARMS"}
  done
done
$PY $B cost
$PY $B report
