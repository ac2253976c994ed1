"""Which attention method the demo shows, chosen on held-out images of the demo's own set (never its test split).

    python benchmarks/demo_choice.py [--epochs 5] [--holdout 0.2] [--methods tasn,rra,wsdan,wsban]

Trains the demo's recipe (lookcloser/demo.py: the synthetic set at 224 px, pretrained EfficientNet-Lite0,
2 heads-first epochs then ``--epochs``, 128 px glances and zooms) for the 128 px baseline and each candidate,
holding out ``--holdout`` of each class's training images, and scores them there. The demo shows the
candidate with the largest held-out lead over the baseline. Results: benchmarks/results/demo-choice-cpu.json
(runs under --runs, outside the repository by default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--methods", default="tasn,rra,wsdan,wsban")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="/tmp/lookcloser-demo-choice")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo-choice-cpu.json"))
    a = p.parse_args()

    from lookcloser.benchmark import environment
    from lookcloser.demo import ZOOM_OPTIONS, demo_config
    from lookcloser.engine import train

    result = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {"runs": {}}
    for name in ["baseline", *a.methods.split(",")]:
        key = f"{name}-e{a.epochs}-h{a.holdout}-s{a.seed}"
        if key in result["runs"]:
            continue
        method, options = ("baseline", {}) if name == "baseline" else (name, ZOOM_OPTIONS[name])
        cfg = demo_config(a.epochs).merged({"model": {"method": method, "options": {"view_size": 128, **options}},
                                            "data": {"holdout": a.holdout}, "train": {"seed": a.seed, "eval_every": 1}})
        t0 = time.perf_counter()
        record = train(cfg, Path(a.runs) / key, progress=False)
        result["runs"][key] = {"method": name, "epochs": a.epochs, "holdout": a.holdout, "seed": a.seed,
                               "holdout_top1": record["eval_top1"], "holdout_images": record["eval_images"],
                               "seconds": time.perf_counter() - t0, "threads": record["threads"]}
        result["environment"] = environment()
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"{key}: held-out top-1 {record['eval_top1']:.2f} ({record['eval_images']} images)", flush=True)


if __name__ == "__main__":
    main()
