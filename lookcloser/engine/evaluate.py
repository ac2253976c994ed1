"""Evaluation: predictions over a split, metrics, and the written report.

Metrics are top-1, top-5, per-class accuracy, mean per-class accuracy and the confusion matrix. The
report is a JSON file, the confusion matrix as CSV and as a picture, and one self-contained HTML page
(:mod:`lookcloser.report`).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data import collate
from ..errors import LookcloserError

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_loader(model, loader, device, *, tta_flip: bool = False, amp: bool = False, progress: bool = True,
                   desc: str = "eval", channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class probabilities for every readable image of a loader.

    ``channels_last`` passes the images in that memory format (give the model the same format).

    Returns:
        ``(probs N×K, labels N, skipped paths)``.
    """
    model.eval()
    probs, labels, skipped = [], [], []
    bar = tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=not progress, leave=False)
    for images, y, bad, extras in loader:
        skipped += bad
        bar.update(len(y) + len(bad))
        if len(y) == 0:
            continue
        if extras and tta_flip:
            raise LookcloserError("flip test-time augmentation cannot be combined with precomputed boxes; "
                                  "drop --tta-flip")
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        extras = {k: v.to(device) for k, v in extras.items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            p = model(images, **extras).logits.float().softmax(1)
            if tta_flip:
                p = (p + model(images.flip(3)).logits.float().softmax(1)) / 2
        probs.append(p.cpu())
        labels.append(y)
    bar.close()
    k = getattr(getattr(model, "classifier", None), "out_features", 0)
    if not probs:
        return torch.empty(0, k), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(probs), torch.cat(labels), skipped


def make_loader(dataset, batch_size: int, workers: int, *, sampler=None, shuffle: bool = False,
                generator=None, drop_last: bool = False, pin: bool = False):
    """A DataLoader that skips unreadable images (see :func:`lookcloser.data.collate`)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, collate_fn=collate, generator=generator, drop_last=drop_last, pin_memory=pin,
        persistent_workers=False)


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5, per-class and mean per-class accuracy (in %), and the confusion matrix."""
    n = len(labels)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_per_class": 0.0, "per_class": [None] * num_classes,
                "confusion": np.zeros((num_classes, num_classes), dtype=np.int64), "n": 0}
    k = min(5, probs.shape[1])
    topk = probs.topk(k, dim=1).indices
    pred = topk[:, 0]
    top1 = (pred == labels).float().mean().item() * 100
    top5 = (topk == labels[:, None]).any(1).float().mean().item() * 100
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (labels.numpy(), pred.numpy()), 1)
    support = conf.sum(1)
    per_class = [float(conf[c, c] / support[c] * 100) if support[c] else None for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return {"top1": top1, "top5": top5, "mean_per_class": float(np.mean(present)), "per_class": per_class,
            "confusion": conf, "n": n}


def write_report(out_dir: str | Path, metrics: dict[str, Any], classes: list[str], extra: dict | None = None) -> Path:
    """Write ``report.json``, ``confusion.csv`` and ``confusion.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = metrics["confusion"]
    report = {k: v for k, v in metrics.items() if k not in ("confusion", "per_class")}
    report["per_class"] = {c: a for c, a in zip(classes, metrics["per_class"])}
    report.update(extra or {})
    (out / "report.json").write_text(json.dumps(report, indent=2))
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, conf):
            w.writerow([c, *row.tolist()])
    plot_confusion(conf, classes, out / "confusion.png")
    return out / "report.json"


def plot_confusion(conf: np.ndarray, classes: list[str], path: Path) -> None:
    """A row-normalized confusion-matrix picture (class names shown up to 40 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    side = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 16:
            for i in range(k):
                for j in range(k):
                    if conf[i, j]:
                        ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalized)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, *, split: str | None = None,
                        out: str | Path | None = None, tta_flip: bool = False, batch_size: int = 64,
                        workers: int = 2, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Evaluate a trained model on a split and write its report.

    Args:
        checkpoint: a run folder or checkpoint file.
        data: dataset spec; defaults to the one the run was trained on.
        split: defaults to test (val where there is no test).
        out: report folder; defaults to ``<run>/eval-<split>``.
        tta_flip: average the probabilities of the image and its mirror.

    Returns:
        The metrics (confusion matrix included).
    """
    from ..data import eval_split, eval_transform, open_dataset
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .trainer import resolve_device

    model, ckpt = load_checkpoint(checkpoint)
    data = data or ckpt["config"]["data"]["data"]
    split = split or eval_split(data)
    pre = ckpt["preprocess"]
    ds = open_dataset(data, split, eval_transform(pre))
    if ckpt["config"]["data"].get("boxes"):
        from ..layers.proposals import attach_boxes

        attach_boxes(ds, ckpt["config"]["data"]["boxes"], pre["image_size"], pre["resize_ratio"])
    if ds.classes != ckpt["classes"]:
        raise _class_mismatch(ds.classes, ckpt["classes"], data)
    dev = resolve_device(device)
    model.to(dev, memory_format=torch.channels_last)
    loader = make_loader(ds, batch_size, workers, pin=dev.type == "cuda")
    probs, labels, bad = predict_loader(model, loader, dev, tta_flip=tta_flip, amp=dev.type == "cuda",
                                        progress=progress, channels_last=True)
    for p in bad:
        log.warning("skipped unreadable image %s", p)
    metrics = compute_metrics(probs, labels, len(ds.classes))
    ckpt_path = resolve_checkpoint(checkpoint)
    out = Path(out) if out else ckpt_path.parent / f"eval-{split}"
    info = {"checkpoint": str(ckpt_path), "data": data, "split": split, "tta_flip": tta_flip,
            "method": ckpt["method"], "backbone": ckpt["build_args"].get("backbone"), "skipped_images": len(bad),
            "image_size": pre["image_size"], "device": str(dev)}
    write_report(out, metrics, ds.classes, extra=info)
    from ..report import collect_examples, write_html_report

    html = write_html_report(out, metrics, ds.classes, run_dir=ckpt_path.parent, extra=info,
                             examples=collect_examples(ds, probs, labels, skipped=bad))
    metrics["out"] = str(out)
    metrics["html"] = str(html)
    return metrics


def _class_mismatch(found: list[str], expected: list[str], data: str):
    return LookcloserError(
        f"{data} has {len(found)} classes that differ from the checkpoint's {len(expected)} "
        f"(first difference: {next((a, b) for a, b in zip(found + [''] * len(expected), expected + [''] * len(found)) if a != b)}); "
        "evaluate on the data set the model was trained on")
