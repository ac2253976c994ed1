"""Training images/s of this commit against an earlier one, side by side, each with its own defaults.

    python benchmarks/train_speed_vs_commit.py --old 68d0477 --rounds 3

For every round and every method, `lookcloser train` runs once with the old commit's code and once with
this one (alternating, so both see the same machine), on the synthetic set at 128 px with pretrained
EfficientNet-Lite0, batch 32, 2 loader workers and each version's default settings (threads, memory
format, ...); the method options are the same for both (the earlier CPU budget's: TASN's attention net at
stride 16 with a 128 px view and 128 px samples, RRA's patches at 128 px, WS-BAN/WS-DAN at output stride
32). The figure is the second epoch's training images/s from each run's metrics.jsonl; the value per
method is the median over rounds, and the speed-up the median of the rounds' new/old ratios.
Results: benchmarks/results/train-speed-vs-<old>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["baseline", "tasn", "wsban", "wsdan", "rra"]
# the same settings for both versions; only the name of TASN's view option changed (attention_size → view_size)
OPTIONS = {"tasn": {"sample_size": 128, "attention_stride": 16}, "rra": {"patch_size": 128},
           "wsban": {"output_stride": 32}, "wsdan": {"output_stride": 32}, "baseline": {}}


def _worktree(commit: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"lookcloser-{commit}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def _run(code_root: Path, method: str, out: Path, old: bool, threads: int | None) -> float:
    opts = dict(OPTIONS[method])
    if method == "tasn":
        opts["attention_size" if old else "view_size"] = 128
    cmd = [sys.executable, "-m", "lookcloser.cli", "train", "--data", "synth:classes=8,train=24,test=4,size=128",
           "--method", method, "--backbone", "efficientnet_lite0", "--pretrained", "--image-size", "128",
           "--epochs", "2", "--batch-size", "32", "--workers", "2", "--device", "cpu", "--optimizer", "adamw",
           "--lr", "0.001", "--out", str(out), "--quiet"]
    for k, v in opts.items():
        cmd += ["-o", f"{k}={v}"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code_root, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{method} ({'old' if old else 'new'}) failed:\n{p.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["train_images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default="68d0477")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    a = p.parse_args()
    old_root = _worktree(a.old)
    methods = a.methods.split(",")
    path = ROOT / "benchmarks" / "results" / f"train-speed-vs-{a.old}.json"
    rates = {m: {"old": [], "new": []} for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for m in methods:
                for version, code in (("old", old_root), ("new", ROOT)) if r % 2 == 0 else (("new", ROOT), ("old", old_root)):
                    out = Path(tmp) / f"{m}-{version}-{r}"
                    rates[m][version].append(_run(code, m, out, version == "old", None))
                    print(f"round {r + 1} {m} {version}: {rates[m][version][-1]:.1f} images/s", flush=True)
    from lookcloser.benchmark import environment

    import torch

    summary = {m: {"old": statistics.median(v["old"]), "new": statistics.median(v["new"]),
                   "speedup": statistics.median(n / o for n, o in zip(v["new"], v["old"]))} for m, v in rates.items()}
    result = {"old_commit": a.old, "rounds": a.rounds, "threads_default": torch.get_num_threads(),
              "setting": "synth 8 classes 192 train images 128 px, lite0 pretrained, batch 32, 2 workers, AdamW; "
                         "second epoch's train images/s", "options": OPTIONS, "rates": rates, "summary": summary,
              "environment": environment(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(result, indent=2) + "\n")
    for m, s in summary.items():
        print(f"{m:9s} old {s['old']:6.1f}  new {s['new']:6.1f}  ×{s['speedup']:.2f}")


if __name__ == "__main__":
    main()
