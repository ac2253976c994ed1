"""Speed of WS-DAN / WS-BAN beside the plain backbone: training and inference images/s, crop/drop share.

For each method (``baseline``, ``wsdan``, ``wsban``) on the same backbone, image size and batch, it times
full training steps (forward, loss, backward, SGD step) and inference steps (eval forward), and, for the
attention methods, the crop/drop augmentation alone (map choice, thresholds, boxes, ``roi_align``
crop, drop mask) on the batch's real attention maps. Times are medians over ``--steps`` after
``--warmup`` untimed steps, with CUDA synchronized around each step; bf16 autocast on CUDA.

Run again (paper setting, on a GPU):
    python benchmarks/wsdan_speed.py --backbone inception_v3 --feature-stage 3 --image-size 448 \
        --batch-size 32 --out benchmarks/results/wsdan_speed.json
A CPU smoke run:
    python benchmarks/wsdan_speed.py --backbone test_efficientnet --image-size 64 --batch-size 4 \
        --output-stride 16 --num-maps 4 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import lookcloser.models.wsdan  # noqa: F401  (registers wsdan and wsban)
from lookcloser.benchmark import environment
from lookcloser.layers.crop_drop import attention_crop, attention_drop, select_attention, uniform_thresholds
from lookcloser.models import create_model
from lookcloser.speed import time_windows


def _median_time(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one call of ``fn`` over ``steps`` synchronized calls after ``warmup`` (see time_windows)."""
    return statistics.median(time_windows(fn, device, warmup=warmup, windows=steps, steps=1))


def bench_method(name: str, args, device: torch.device) -> dict:
    opts = {} if name == "baseline" else dict(feature_stage=args.feature_stage, num_maps=args.num_maps)
    if args.output_stride != 32:
        opts["output_stride"] = args.output_stride
    model = create_model(name, backbone=args.backbone, num_classes=args.num_classes, **opts).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and not args.fp32)

    def train_step():
        with torch.autocast(**amp):
            out = model(images, labels)
            loss, _ = model.loss(out, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer_step():
        with torch.autocast(**amp):
            model(images)

    model.train()
    t_train = _median_time(train_step, args.steps, args.warmup, device)
    model.eval()
    t_infer = _median_time(infer_step, args.steps, args.warmup, device)
    row = {"method": name, "train_step_s": t_train, "train_images_per_s": args.batch_size / t_train,
           "infer_step_s": t_infer, "infer_images_per_s": args.batch_size / t_infer}
    if name != "baseline":
        with torch.no_grad(), torch.autocast(**amp):
            maps = model(images).attention.float()
        b = images.shape[0]

        @torch.no_grad()
        def crop_drop():
            chosen, _ = select_attention(maps, model.crop_map)
            attention_crop(images, chosen, uniform_thresholds(b, *model.crop_theta, device), model.crop_padding)
            if model.drop_images:
                chosen, _ = select_attention(maps, model.drop_map)
                attention_drop(images, chosen, uniform_thresholds(b, *model.drop_theta, device))

        t_aug = _median_time(crop_drop, args.steps, args.warmup, device)
        row.update(crop_drop_s=t_aug, crop_drop_share_of_train=t_aug / t_train)
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="inception_v3")
    p.add_argument("--feature-stage", type=int, default=3, help="-1: last map; inception_v3 3 = Mixed_6e")
    p.add_argument("--output-stride", type=int, default=32)
    p.add_argument("--num-maps", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--methods", default="baseline,wsdan,wsban")
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment()
    result = {
        "benchmark": "wsdan_speed", "args": vars(args),
        "device": env["device"],
        "precision": "fp32" if args.fp32 or device.type != "cuda" else "bf16 autocast",
        "versions": {k: env[k] for k in ("torch", "torchvision", "timm", "python")},
        "commit": env["commit"], "date": env["date"], "rows": [],
    }
    for name in args.methods.split(","):
        row = bench_method(name.strip(), args, device)
        result["rows"].append(row)
        extra = f", crop/drop {1000 * row['crop_drop_s']:.1f} ms ({100 * row['crop_drop_share_of_train']:.1f}% of a " \
                "train step)" if "crop_drop_s" in row else ""
        print(f"{row['method']:9s} train {row['train_images_per_s']:8.1f} img/s, "
              f"infer {row['infer_images_per_s']:8.1f} img/s{extra}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
