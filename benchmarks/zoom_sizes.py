"""How far do the trained methods actually zoom? Box sides of WS-BAN/WS-DAN crops and RRA patches, TASN's
sampling magnification and its glance-only and zoom-only accuracy.

    python benchmarks/zoom_sizes.py RUN [RUN ...] [--split test] [--limit 600] [--eval-theta 0.1,0.3,0.5] [--eval-only]

For each run folder (a wsban, wsdan or rra checkpoint), the evaluation split is passed through the model
in eval mode (the object crop from the mean map, θ = 0.1; RRA's best proposal) and in train mode (WS-DAN's
sampled map at θ_c ~ U(0.4, 0.6); RRA's random proposal); each box's side (the square root of its area)
is given as a fraction of the source image side. A zoom magnifies by (view size / crop size) ×
(1 / side): a side near 1 adds no detail the glance lacks. ``--eval-theta`` repeats the eval-mode pass
of WS-BAN/WS-DAN at each given object-crop threshold and gives the top-1 of each on the same images (an
ablation of the inference crop; the method's default is 0.1). Each eval-mode pass also gives the top-1 of
the two streams the prediction fuses, each alone: the glance (WS-BAN/WS-DAN's raw image, RRA's global view)
and the zoom (the crop, RRA's patch), which tells whether the zoom helps, and whether the fusion does. Prints and writes percentiles as JSON next
to each run (zoom_sizes.json for the test split, zoom_sizes-SPLIT.json for another). For a TASN run it gives, in eval mode, the peak magnification of the
structure-sampled image (per image: the largest local zoom of the grid over a plain resize, the geometric
mean of the x and y peaks; the same in source pixels per output pixel) and the top-1 of the attention
net's own classifier on the glance, of the master net on the sampled image (TASN's prediction) and of
their mean probability. The train-mode pass runs last and the weights and BatchNorm statistics are
restored after it, so it does not change the eval-mode figures.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch


def zoom_file(split: str) -> str:
    """Where a run's figures on ``split`` go: the test split's in zoom_sizes.json (what the looking-closer report
    reads), another split's beside it, so a choice made on held-out images keeps its figures."""
    return "zoom_sizes.json" if split == "test" else f"zoom_sizes-{split}.json"


def boxes_of(out) -> torch.Tensor:
    """The zoom box of each image in a WS-BAN/WS-DAN (crop) or RRA (chosen patch) forward output."""
    if getattr(out, "crop_box", None) is not None:
        return out.crop_box
    return out.boxes[torch.arange(len(out.patch_index)), out.patch_index]


def streams_of(out) -> tuple[torch.Tensor, torch.Tensor]:
    """The two streams a WS-BAN/WS-DAN (raw image, crop) or RRA (global view, patch) prediction fuses, as
    logits: (glance, zoom)."""
    if getattr(out, "raw_logits", None) is not None:
        return out.raw_logits, out.crop_logits
    return out.global_logits, out.local_logits


def peak_zoom(grid: torch.Tensor) -> torch.Tensor:
    """Per image, the largest magnification of a separable ``grid_sample`` grid (B×S×S×2, x then y) over a
    plain resize, measured over windows of S/8 output pixels (single steps of a quantile grid can repeat a
    coordinate): the geometric mean of the x and y peaks."""
    s = grid.shape[1]
    k = max(1, s // 8)
    uniform = 2 * k / (s - 1)
    x, y = grid[:, 0, :, 0], grid[:, :, 0, 1]
    mx = uniform / (x[:, k:] - x[:, :-k]).clamp_min(1e-6)
    my = uniform / (y[:, k:] - y[:, :-k]).clamp_min(1e-6)
    return (mx.amax(1) * my.amax(1)).sqrt()


def tasn_zoom(run, model, loader, source: int, n: int, split: str = "test") -> None:
    model.eval()
    zooms, correct = [], {"glance (attention net)": 0, "zoom (master net)": 0, "mean of both": 0}
    with torch.no_grad():
        for images, labels, *_ in loader:
            out = model(images)
            zooms += peak_zoom(out.structure_grid.float()).tolist()
            p_att, p_master = out.attention_logits.softmax(1), out.logits.softmax(1)
            for name, p in zip(correct, (p_att, p_master, (p_att + p_master) / 2)):
                correct[name] += int((p.argmax(1) == labels).sum())
    size = out.structure_grid.shape[1]
    z = np.asarray(zooms)
    result = {"run": str(run), "method": "tasn", "split": split, "images": n, "source": source, "sample_size": size,
              "peak_zoom_over_resize": {q: float(np.percentile(z, q)) for q in (5, 25, 50, 75, 95)},
              "peak_source_pixels_per_output_pixel": float(np.median(z) * size / source),
              "top1": {k: 100 * v / n for k, v in correct.items()}}
    Path(run, zoom_file(split)).write_text(json.dumps(result, indent=2) + "\n")
    q = result["peak_zoom_over_resize"]
    print(f"{run} [tasn]: peak zoom over a plain resize median {q[50]:.2f} (5-95 %: {q[5]:.2f}-{q[95]:.2f}), "
          f"i.e. {result['peak_source_pixels_per_output_pixel']:.2f} output pixels per source pixel at the peak; "
          + ", ".join(f"{k} top-1 {v:.2f} %" for k, v in result["top1"].items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test", help="test, val, or holdout (a run trained with --holdout)")
    p.add_argument("--limit", type=int, default=600, help="images per run (the first ones of the split)")
    p.add_argument("--eval-only", action="store_true", help="skip the train-mode pass (its box sizes)")
    p.add_argument("--eval-theta", default="", help="comma-separated object-crop thresholds to compare (WS-BAN/WS-DAN)")
    a = p.parse_args()
    from lookcloser.data import collate, eval_transform, open_dataset
    from lookcloser.engine.checkpoint import load_checkpoint

    thetas = [float(t) for t in a.eval_theta.split(",")] if a.eval_theta else []
    for run in a.runs:
        model, ckpt = load_checkpoint(run)
        pre = ckpt["preprocess"]
        # ``--split holdout``: the training images the run held out (its own share), as evaluate reads them
        data = ckpt["config"]["data"]
        ds = open_dataset(data["data"], a.split, eval_transform(pre), holdout=data.get("holdout", 0.0))
        idx = list(range(min(a.limit, len(ds))))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=32, collate_fn=collate)
        if ckpt["method"] == "tasn":
            tasn_zoom(run, model, loader, pre["image_size"], len(idx), a.split)
            continue
        modes = [("eval", None)]
        if thetas and hasattr(model, "eval_theta"):
            modes = [(f"eval theta={t:g}", t) for t in thetas]
        if not a.eval_only:
            modes.append(("train", None))
        sides: dict[str, list[float]] = {}
        top1: dict[str, float] = {}
        streams: dict[str, dict[str, float]] = {}
        saved = copy.deepcopy(model.state_dict())
        torch.manual_seed(0)
        with torch.no_grad():
            for mode, theta in modes:
                model.train(mode == "train")
                if theta is not None:
                    model.eval_theta = theta
                sides[mode], correct, hits = [], 0, {"glance": 0, "zoom": 0}
                for images, labels, *_ in loader:
                    size = images.shape[-1]
                    out = model(images)
                    b = boxes_of(out).float()
                    side = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).clamp_min(0).sqrt() / size
                    sides[mode] += side.tolist()
                    if mode != "train":
                        correct += int((out.logits.argmax(1) == labels).sum())
                        for name, logits in zip(hits, streams_of(out)):
                            hits[name] += int((logits.argmax(1) == labels).sum())
                if mode != "train":
                    top1[mode] = 100 * correct / len(idx)
                    streams[mode] = {k: 100 * v / len(idx) for k, v in hits.items()}
        model.load_state_dict(saved)
        summary = {mode: {q: float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)} | {"mean": float(np.mean(v)),
                   "share_whole_image": float(np.mean(np.asarray(v) > 0.95))} for mode, v in sides.items()}
        for mode, t in top1.items():
            summary[mode]["top1"] = t
            summary[mode]["top1_streams"] = streams[mode]
        result = {"run": str(run), "method": ckpt["method"], "split": a.split, "images": len(idx),
                  "source": pre["image_size"], "sides": summary}
        Path(run, zoom_file(a.split)).write_text(json.dumps(result, indent=2) + "\n")
        for mode, s in summary.items():
            acc = f", top-1 {s['top1']:.2f} %" if "top1" in s else ""
            if "top1_streams" in s:
                acc += " (" + ", ".join(f"{k} stream alone {v:.2f} %" for k, v in s["top1_streams"].items()) + ")"
            print(f"{run} [{ckpt['method']}, {mode}]: side median {s[50]:.2f} (5-95 %: {s[5]:.2f}-{s[95]:.2f}), "
                  f"whole image in {100 * s['share_whole_image']:.0f} %{acc}")

if __name__ == "__main__":
    main()
