#!/usr/bin/env bash
# Every method on the built-in synthetic set (8 classes, 40 train / 20 test images each, 128 px) at the
# small CPU budget, 10 epochs, 3 seeds (see cpu_budget.sh).
exec bash "$(dirname "$0")/cpu_budget.sh" synth synth 10 3 "$@"
