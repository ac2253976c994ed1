#!/usr/bin/env bash
# Every method on flowers12 (12 species, 720 train / 240 test) at the small CPU budget, 3 epochs, 3 seeds
# (see cpu_budget.sh).
exec bash "$(dirname "$0")/cpu_budget.sh" flowers12 "${DATA:-../shared/data/flowers12}" 3 3 "$@"
