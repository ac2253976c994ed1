#!/usr/bin/env bash
# Every method on cub100 at the small CPU budget, 2 epochs, 1 seed (see cpu_budget.sh).
exec bash "$(dirname "$0")/cpu_budget.sh" cub100 "${DATA:-../shared/data/cub100}" 2 1 "$@"
