"""Evaluation: predictions over a split and their metrics.

Metrics are top-1, top-5, per-class accuracy, mean per-class accuracy and the confusion matrix. Writing
them down (JSON, CSV, pictures, the HTML page) is :mod:`lookcloser.report`'s job, a floor above.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data import collate, leave_sigterm_to_the_reader
from ..errors import LookcloserError

log = logging.getLogger(__name__)


def readable_batches(loader, device, skipped: list, *, progress: bool = True, desc: str = "eval",
                     channels_last: bool = False):
    """A loader's batches that hold a readable image, on ``device``: ``(images, labels, extras)``, with a
    progress bar; the unreadable images' paths are appended to ``skipped``."""
    bar = tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for images, y, bad, extras in loader:
            skipped += bad
            bar.update(len(y) + len(bad))
            if len(y) == 0:
                continue
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, y, {k: v.to(device) for k, v in extras.items()}
    finally:
        bar.close()


@torch.no_grad()
def predict_loader(model, loader, device, *, tta_flip: bool = False, amp: bool = False, progress: bool = True,
                   desc: str = "eval", channels_last: bool = False,
                   amp_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class probabilities for every readable image of a loader.

    ``channels_last`` passes the images in that memory format (give the model the same format).

    Returns:
        ``(probs N×K, labels N, skipped paths)``.
    """
    model.eval()
    probs, labels, skipped = [], [], []
    for images, y, extras in readable_batches(loader, device, skipped, progress=progress, desc=desc,
                                              channels_last=channels_last):
        if extras and tta_flip:
            raise LookcloserError("flip test-time augmentation cannot be combined with precomputed boxes; "
                                  "drop --tta-flip")
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            p = model(images, **extras).logits.float().softmax(1)
            if tta_flip:
                p = (p + model(images.flip(3)).logits.float().softmax(1)) / 2
        probs.append(p.cpu())
        labels.append(y)
    if not probs:
        return torch.empty(0, model.num_classes), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(probs), torch.cat(labels), skipped


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere CPU bf16 is emulated."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older PyTorch without the probes
        return False


def use_bf16(device: torch.device, requested: bool | None) -> bool:
    """bfloat16 autocast for inference: as requested, else on CUDA only, as training autocasts there. A CPU
    trains in float32 and chooses its thresholds (best.pt, the zoom and crop thresholds) in float32, so it
    is scored in float32 too: the same figures on every CPU, whether it computes bfloat16 natively or not
    (bfloat16 moved a held-out figure by 1.7 points on 293 images where the CPU had it natively)."""
    if requested is not None:
        return bool(requested)
    return device.type == "cuda"


def predict_dataset(model, dataset, device, *, batch_size: int, workers: int, dist=None, tta_flip: bool = False,
                    amp: bool = False, progress: bool = True, desc: str = "eval", channels_last: bool = False,
                    amp_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class probabilities for every readable image of a data set, in the data set's order.

    Under torchrun (``dist`` enabled) each process predicts every ``world_size``-th image, starting at its
    rank, and the shares are gathered on every process, so the result equals a one-process pass (any
    data set size; the predictions of one image do not depend on its batch).

    Returns:
        ``(probs N×K, labels N, skipped paths)``, as :func:`predict_loader`.
    """
    world = dist.world_size if dist is not None and dist.enabled else 1
    rank = dist.rank if world > 1 else 0
    share = list(range(rank, len(dataset), world))
    loader = make_loader(torch.utils.data.Subset(dataset, share) if world > 1 else dataset, batch_size, workers,
                         pin=device.type == "cuda")
    probs, labels, bad = predict_loader(model, loader, device, tta_flip=tta_flip, amp=amp, progress=progress,
                                        desc=desc, channels_last=channels_last, amp_dtype=amp_dtype)
    if world == 1:
        return probs, labels, bad
    from .distributed import gather_objects

    unreadable = set(map(str, bad))
    kept = [i for i in share if dataset.samples[i][0] not in unreadable]
    parts = gather_objects((kept, probs.numpy(), labels.numpy(), [(str(b), getattr(b, "reason", "")) for b in bad]),
                           dist)
    order = np.argsort(np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]), kind="stable")
    probs = torch.from_numpy(np.concatenate([p[1].reshape(-1, model.num_classes) for p in parts])[order])
    labels = torch.from_numpy(np.concatenate([p[2] for p in parts])[order])
    from ..data import Unreadable

    position = {s[0]: i for i, s in enumerate(dataset.samples)} if any(p[3] for p in parts) else {}
    skipped = sorted((Unreadable(path, why) for p in parts for path, why in p[3]), key=lambda x: position.get(x, 0))
    return probs, labels, skipped


def make_loader(dataset, batch_size: int, workers: int, *, sampler=None, shuffle: bool = False,
                generator=None, drop_last: bool = False, pin: bool = False):
    """A DataLoader that skips unreadable images (see :func:`lookcloser.data.collate`)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, collate_fn=collate, generator=generator, drop_last=drop_last, pin_memory=pin,
        persistent_workers=False, worker_init_fn=leave_sigterm_to_the_reader)


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5, per-class and mean per-class accuracy (in %), and the confusion matrix."""
    n = len(labels)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_per_class": 0.0, "per_class": [None] * num_classes,
                "confusion": np.zeros((num_classes, num_classes), dtype=np.int64), "n": 0}
    k = min(5, probs.shape[1])
    topk = probs.topk(k, dim=1).indices
    # the first of the top classes, as argmax takes it everywhere else (topk's order among ties is arbitrary:
    # a row of equal probabilities came out as class 135 of 200, not 0)
    pred = probs.argmax(1)
    top1 = (pred == labels).float().mean().item() * 100
    top5 = (topk == labels[:, None]).any(1).float().mean().item() * 100
    conf = confusion_matrix(labels, pred, num_classes)
    support = conf.sum(1)
    per_class = [float(conf[c, c] / support[c] * 100) if support[c] else None for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return {"top1": top1, "top5": top5, "mean_per_class": float(np.mean(present)), "per_class": per_class,
            "confusion": conf, "n": n}


def confusion_matrix(labels: torch.Tensor, pred: torch.Tensor, num_classes: int) -> np.ndarray:
    """K×K counts: row = true class, column = predicted class."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (np.asarray(labels), np.asarray(pred)), 1)
    return conf


def check_classes(found: list[str], expected: list[str], data: str) -> None:
    """Refuse a data set whose classes differ from a checkpoint's, naming the first difference."""
    if found == expected:
        return
    first = next((a, b) for a, b in zip(found + [""] * len(expected), expected + [""] * len(found)) if a != b)
    raise LookcloserError(
        f"{data} has {len(found)} classes that differ from the checkpoint's {len(expected)} "
        f"(first difference: {first}); evaluate on the data set the model was trained on")
