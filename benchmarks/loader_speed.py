"""Training-loader images/s with and without the decoded-image cache (no model: the loader alone).

    python benchmarks/loader_speed.py --data ../shared/data/cub100 --image-size 224 --workers 2

Three loaders over the training split with the training transform (resize, random crop, flip): today's
(decode every image every epoch), the cache's first epoch (decode and fill), and the cache's later epochs
(read the shared buffer). Each is timed over whole epochs; the value is the median over ``--epochs``
epochs (the cached loader's first epoch counts as its fill). Results: benchmarks/results/loader-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def epoch_rate(dataset, workers: int, batch_size: int, seed: int) -> float:
    from lookcloser.data import collate
    from lookcloser.engine.distributed import GlobalBatchSampler

    sampler = GlobalBatchSampler(len(dataset), batch_size, 1, 0, seed, 0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    t0 = time.perf_counter()
    n = sum(len(b[1]) for b in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cub100"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loader-cpu.json"))
    a = p.parse_args()

    from lookcloser.benchmark import environment
    from lookcloser.data import build_transform, open_dataset

    t = build_transform(True, a.image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain = open_dataset(a.data, "train", t)
    cached = open_dataset(a.data, "train", t)
    t0 = time.perf_counter()
    cache = cached.use_cache(limit_gb=16)
    header_s = time.perf_counter() - t0
    rates = {"uncached": [], "cached_fill": [], "cached": []}
    rates["cached_fill"].append(epoch_rate(cached, a.workers, a.batch_size, 0))
    for e in range(a.epochs):  # interleaved, so both see the same machine
        rates["uncached"].append(epoch_rate(plain, a.workers, a.batch_size, e))
        rates["cached"].append(epoch_rate(cached, a.workers, a.batch_size, e))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"data": a.data, "images": len(plain), "image_size": a.image_size, "workers": a.workers,
              "batch_size": a.batch_size, "cache_mb": cache.nbytes / 2**20, "cache_header_pass_s": header_s,
              "images_per_s": med, "epochs": rates, "speedup_cached": med["cached"] / med["uncached"],
              "threads": torch.get_num_threads(), "environment": environment()}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(plain)} images at {a.image_size} px, {a.workers} workers: uncached {med['uncached']:.0f} images/s, "
          f"cache fill {med['cached_fill']:.0f}, cached {med['cached']:.0f} ({result['speedup_cached']:.2f}x); "
          f"cache {result['cache_mb']:.0f} MB, header pass {header_s:.1f} s")


if __name__ == "__main__":
    main()
