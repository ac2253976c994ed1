"""How much accuracy does bfloat16 inference cost? One checkpoint evaluated in float32 and in bfloat16.

    python benchmarks/bf16_accuracy.py RUN [--workers 1] [--out benchmarks/results/bf16-accuracy-cpu.json]

Runs ``lookcloser evaluate RUN --no-bf16`` and ``--bf16`` (the same split, the same process) and reports
both top-1/top-5, the difference, a lower bound on the number of changed predictions (half the summed
absolute difference of the two confusion matrices) and each pass's wall time. On a CPU without native
bfloat16 the bf16 pass is emulated, so its time says nothing about a CPU that has it.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _confusion(path: Path) -> list[list[int]]:
    rows = list(csv.reader(path.open(encoding="utf-8")))
    return [[int(x) for x in row[1:]] for row in rows[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16-accuracy-cpu.json"))
    a = p.parse_args()
    import torch

    from lookcloser.benchmark import environment
    from lookcloser.engine.evaluate import cpu_has_bf16
    from lookcloser.report import evaluate_checkpoint

    result = {"run": a.run, "threads": torch.get_num_threads(), "native_bf16": cpu_has_bf16(), "passes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bf16 in (("float32", False), ("bfloat16", True)):
            t0 = time.perf_counter()
            r = evaluate_checkpoint(a.run, out=Path(tmp) / name, workers=a.workers, progress=False, bf16=bf16)
            result["passes"][name] = {"top1": r["top1"], "top5": r["top5"], "n": r["n"],
                                      "wall_s": time.perf_counter() - t0}
        c32, c16 = (_confusion(Path(tmp) / n / "confusion.csv") for n in ("float32", "bfloat16"))
    changed = sum(abs(x - y) for r32, r16 in zip(c32, c16) for x, y in zip(r32, r16)) // 2
    f, b = result["passes"]["float32"], result["passes"]["bfloat16"]
    result |= {"top1_difference": b["top1"] - f["top1"], "top5_difference": b["top5"] - f["top5"],
               "changed_predictions_at_least": changed, "environment": environment()}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"float32 top-1 {f['top1']:.2f} %, bfloat16 {b['top1']:.2f} % ({result['top1_difference']:+.2f}); "
          f"top-5 {f['top5']:.2f} / {b['top5']:.2f}; at least {changed} of {f['n']} predictions changed; "
          f"wall {f['wall_s']:.0f} s / {b['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
