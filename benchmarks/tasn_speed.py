"""TASN training speed, beside a plain backbone, and the share of trilinear attention + sampler.

Measures full training steps (forward, loss, backward, SGD step) on random data: after ``--warmup``
steps, ``--windows`` timed windows of ``--steps`` steps each, synchronizing the device only at window
boundaries; the reported step time is the median over windows. The share of trilinear attention and the
two sampler calls is measured the same way on the step's own shapes (the attention net's real feature
map), run on their own, and divided by the TASN step time.

The paper setting (the defaults) needs a GPU:

    python benchmarks/tasn_speed.py --out benchmarks/results/tasn_speed.json

A small CPU check:

    python benchmarks/tasn_speed.py --device cpu --backbone test_efficientnet --attention-backbone "" \
        --batch 4 --image-size 64 --attention-size 64 --sample-size 32 --baseline-size 32 --att-channels 16
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import lookcloser.models.tasn  # noqa: F401  (registers "tasn")
from lookcloser.benchmark import environment
from lookcloser.layers.sampler import attention_sample
from lookcloser.layers.trilinear import trilinear_attention
from lookcloser.models import create_model
from lookcloser.speed import time_windows


def timed(fn, device: torch.device, warmup: int, windows: int, steps: int) -> dict[str, float]:
    """Median, min and max seconds per call of ``fn`` over the timed windows of :func:`time_windows`."""
    per_call = time_windows(fn, device, warmup=warmup, windows=windows, steps=steps)
    return {"median_s": statistics.median(per_call), "min_s": min(per_call), "max_s": max(per_call)}


def train_step_fn(model, images, labels, device, bf16: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(images, labels)
            loss, _ = model.loss(out, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--attention-backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--attention-size", type=int, default=224)
    ap.add_argument("--sample-size", type=int, default=224)
    ap.add_argument("--att-channels", type=int, default=512)
    ap.add_argument("--baseline-size", type=int, default=224, help="input side of the plain backbone (0 skips it)")
    ap.add_argument("--num-classes", type=int, default=200)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bfloat16 autocast (default: on with CUDA)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels-last memory format (default: on with CUDA)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="", help="write the result as JSON here")
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else (args.bf16 and cuda)
    channels_last = cuda if args.channels_last is None else args.channels_last
    if cuda:
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    win = dict(warmup=args.warmup, windows=args.windows, steps=args.steps)
    labels = torch.randint(args.num_classes, (args.batch,), device=device)

    tasn = create_model("tasn", backbone=args.backbone, num_classes=args.num_classes,
                        attention_backbone=args.attention_backbone, attention_size=args.attention_size,
                        sample_size=args.sample_size, att_channels=args.att_channels)
    tasn = tasn.to(device, memory_format=fmt)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=fmt)
    result = {"tasn": timed(train_step_fn(tasn, images, labels, device, bf16), device, **win)}

    # trilinear attention + both sampler calls on the step's own shapes
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        feats = tasn.att_head(tasn.attention_backbone(tasn._attention_input(images)))

    def attention_and_sampling():
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            maps = trilinear_attention(feats, tasn.softmax_scale)
            s_map, d_map = tasn._select_maps(maps)
            attention_sample(images, s_map, args.sample_size or args.image_size, tasn.dense, tasn.iters)
            attention_sample(images, d_map, args.sample_size or args.image_size, tasn.dense, tasn.iters)

    tasn.train()
    result["trilinear_sampler"] = timed(attention_and_sampling, device, **win)
    del tasn, feats
    if cuda:
        torch.cuda.empty_cache()

    if args.baseline_size:
        base = create_model("baseline", backbone=args.backbone, num_classes=args.num_classes)
        base = base.to(device, memory_format=fmt)
        x = torch.randn(args.batch, 3, args.baseline_size, args.baseline_size, device=device).contiguous(
            memory_format=fmt)
        result["baseline"] = timed(train_step_fn(base, x, labels, device, bf16), device, **win)

    report = {
        "what": "training step time (median over timed windows), random data",
        **environment(), "bf16": bf16, "channels_last": channels_last,
        "args": vars(args),
        "tasn_images_per_s": args.batch / result["tasn"]["median_s"],
        "trilinear_sampler_share": result["trilinear_sampler"]["median_s"] / result["tasn"]["median_s"],
        "timings": result,
    }
    if "baseline" in result:
        report["baseline_images_per_s"] = args.batch / result["baseline"]["median_s"]
    if cuda:
        report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
