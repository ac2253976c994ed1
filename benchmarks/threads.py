"""Which intra-op thread count trains fastest on this machine, now? Interleaved runs of `lookcloser train`.

    python benchmarks/threads.py --label idle --rounds 3      # run it on an idle and on a loaded machine

For each round, the baseline and WS-DAN train for two epochs (the train_speed_vs_commit.py setting: synthetic
set, 128 px, lite0, batch 32, 2 loader workers) with 1 thread, 2 threads and lookcloser's default, in turn
("auto": the cores minus the load average at the start; threads-idle.json was measured before that default
existed, and its "default" is PyTorch's, one thread per core). The figure is the second epoch's training
images/s; results go to benchmarks/results/threads-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from train_speed_vs_commit import ROOT, _run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True, help="what the machine was doing, e.g. idle or loaded")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", default="baseline,wsdan")
    a = p.parse_args()
    import torch

    from lookcloser.benchmark import environment

    settings = {"1": 1, "2": 2, "auto": None}
    rates = {m: {k: [] for k in settings} for m in a.methods.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for m in rates:
                for k, threads in settings.items():
                    rates[m][k].append(_run(ROOT, m, Path(tmp) / f"{m}-{k}-{r}", False, threads))
                    print(f"round {r + 1} {m} threads={k}: {rates[m][k][-1]:.1f} images/s", flush=True)
    summary = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in rates.items()}
    out = ROOT / "benchmarks" / "results" / f"threads-{a.label}.json"
    out.write_text(json.dumps({"label": a.label, "cores": torch.get_num_threads(), "rates": rates,
                               "summary": summary, "environment": environment()}, indent=2) + "\n")
    for m, s in summary.items():
        print(m, ", ".join(f"threads {k}: {v:.1f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
