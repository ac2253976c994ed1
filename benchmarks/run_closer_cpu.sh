#!/usr/bin/env bash
# The "looking closer" CPU benchmark (benchmarks/looking_closer.py) in the order that gives answers first:
# one seed of every data set, then the other seeds, then the cost and the report. Every stage resumes:
# finished runs are reused, so run it again after an interruption. PY picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=benchmarks/looking_closer.py
$PY $B train synth --epochs 10 --seeds 1
$PY $B train cub100 --epochs 3 --seeds 1
$PY $B train synth --epochs 10 --seeds 3
$PY $B train cub100 --epochs 3 --seeds 3
$PY $B train flowers12 --epochs 4 --seeds 3
$PY $B cost
$PY $B report
