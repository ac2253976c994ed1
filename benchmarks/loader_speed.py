"""Training-loader images/s with and without the decoded-image cache, float or uint8 (no model: the loader alone).

    python benchmarks/loader_speed.py --data ../shared/data/cub100 --image-size 224 --workers 2

Loaders over the training split with the training transform (resize, random crop, flip), each in two
forms: ``float`` (the workers end with ToTensor and Normalize, as before) and ``uint8`` (the workers end
with the uint8 image; the main process normalizes each batch with ``normalize_batch``, as the training
loop does on its device, and that time counts). For each form: uncached (decode every image every epoch),
the cache's first epoch (decode and fill) and the cache's later epochs (read the shared buffer). Each is
timed over whole epochs, interleaved; the value is the median over ``--epochs`` epochs. Results:
benchmarks/results/loader-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def epoch_rate(dataset, workers: int, batch_size: int, seed: int, mean=None, std=None) -> float:
    from lookcloser.data import collate, normalize_batch
    from lookcloser.engine.distributed import GlobalBatchSampler

    sampler = GlobalBatchSampler(len(dataset), batch_size, 1, 0, seed, 0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    t0 = time.perf_counter()
    n = 0
    for images, labels, _, _ in loader:
        normalize_batch(images, mean, std)  # a no-op on the float form's batches
        n += len(labels)
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

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rates, header_s, cache_mb, n = {}, {}, 0.0, 0
    sets = {}
    for form in ("float", "uint8"):
        t = build_transform(True, a.image_size, mean, std, uint8=form == "uint8")
        plain, cached = open_dataset(a.data, "train", t), open_dataset(a.data, "train", t)
        t0 = time.perf_counter()
        cache = cached.use_cache(limit_gb=16)
        header_s[form], cache_mb, n = time.perf_counter() - t0, cache.nbytes / 2**20, len(plain)
        sets[form] = (plain, cached)
        rates[f"{form}_cached_fill"] = [epoch_rate(cached, a.workers, a.batch_size, 0, mean, std)]
        rates[f"{form}_uncached"], rates[f"{form}_cached"] = [], []
    for e in range(a.epochs):  # interleaved, so every loader sees the same machine
        for form, (plain, cached) in sets.items():
            rates[f"{form}_uncached"].append(epoch_rate(plain, a.workers, a.batch_size, e, mean, std))
            rates[f"{form}_cached"].append(epoch_rate(cached, a.workers, a.batch_size, e, mean, std))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"data": a.data, "images": n, "image_size": a.image_size, "workers": a.workers,
              "batch_size": a.batch_size, "cache_mb": cache_mb, "cache_header_pass_s": header_s,
              "images_per_s": med, "epochs": rates,
              "speedup": {k: med[k] / med["float_uncached"] for k in med},
              "threads": torch.get_num_threads(), "environment": environment()}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n} images at {a.image_size} px, {a.workers} workers, {torch.get_num_threads()} threads; cache "
          f"{cache_mb:.0f} MB; images/s (median of {a.epochs} epochs, x the float uncached loader):")
    for k, v in med.items():
        print(f"  {k:20s} {v:7.0f}  x{result['speedup'][k]:.2f}")


if __name__ == "__main__":
    main()
