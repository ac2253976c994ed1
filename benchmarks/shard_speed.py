"""Training-loader images/s of a data set's folder against its WebDataset shards (no model: the loader alone).

    python benchmarks/shard_speed.py --data ../shared/data/cub100 --shards /tmp/cub100-shards

Writes the shards where ``--shards`` says (once; never inside the repository), then times whole epochs of
the training split through the training transform (resize, random crop, flip; uint8, normalized in the
main process as the training loop does): the folder through lookcloser's global-batch sampler, the shards
streamed (shards shuffled and dealt to the loader workers, a shuffle buffer of 1,000), each with 1 and 2
workers, interleaved; the value is the median over ``--epochs`` epochs. Results:
benchmarks/results/shard-speed-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def rate(loader, mean, std) -> float:
    from lookcloser.data import normalize_batch

    t0, n = time.perf_counter(), 0
    for images, labels, _, _ in loader:
        normalize_batch(images, mean, std)
        n += len(labels)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cub100"))
    p.add_argument("--shards", default="/tmp/lookcloser-cub100-shards")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shard-speed-cpu.json"))
    a = p.parse_args()

    from lookcloser.benchmark import environment
    from lookcloser.data import build_transform, collate, open_dataset
    from lookcloser.data.shards import ShardStream
    from lookcloser.data.shardwriter import write_shards
    from lookcloser.engine.distributed import GlobalBatchSampler

    if not (Path(a.shards) / "info.json").is_file():
        write_shards(a.data, a.shards, shard_size=a.shard_size, splits=["train"])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    t = build_transform(True, a.image_size, mean, std, uint8=True)
    folder = open_dataset(a.data, "train", t)
    stream = ShardStream(a.shards, "train", t)
    rates: dict[str, list[float]] = {}
    for epoch in range(a.epochs):  # interleaved, so every reader sees the same machine
        for workers in (1, 2):
            sampler = GlobalBatchSampler(len(folder), a.batch_size, 1, 0, 0, epoch)
            loader = torch.utils.data.DataLoader(folder, batch_sampler=sampler, num_workers=workers,
                                                 collate_fn=collate)
            rates.setdefault(f"folder_{workers}w", []).append(rate(loader, mean, std))
            stream.set_epoch(0, epoch)
            loader = torch.utils.data.DataLoader(stream, batch_size=a.batch_size, num_workers=workers,
                                                 collate_fn=collate)
            rates.setdefault(f"shards_{workers}w", []).append(rate(loader, mean, std))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"data": a.data, "images": len(folder), "shards": len(stream.shards), "shard_size": a.shard_size,
              "image_size": a.image_size, "batch_size": a.batch_size, "images_per_s": med, "epochs": rates,
              "shards_over_folder": {w: med[f"shards_{w}w"] / med[f"folder_{w}w"] for w in (1, 2)},
              "threads": torch.get_num_threads(), "environment": environment()}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(folder)} images, {len(stream.shards)} shards, {a.image_size} px; images/s (median of {a.epochs}):")
    for k, v in med.items():
        print(f"  {k:12s} {v:7.0f}")


if __name__ == "__main__":
    main()
