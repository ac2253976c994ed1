"""Zoom only when unsure, and what the attention found: adaptive inference and localization.

Every method that looks closer is a glance and a zoom (:attr:`lookcloser.models.Method.looks_closer`):
``look`` gives the glance's own prediction, ``closer`` the method's prediction from the zoom. As GFNet
("Glance and Focus", Wang et al., NeurIPS 2020) does, an image whose glance is confident — its top
softmax probability at or above a threshold — keeps the glance's answer and skips the zoom; the zoom runs
on the batch's unsure images only, so its compute is really skipped. ``threshold`` None zooms every image
(the method as published); 0 never zooms.

A run's threshold is chosen on held-out training images (:func:`choose_threshold`: the lowest mean cost
whose accuracy is within ``tolerance`` points of always zooming) and kept in its checkpoint (``adaptive``),
where ``predict`` and ``visualize`` read it. Before it, WS-BAN/WS-DAN's test crop threshold is chosen on the
same images (:func:`choose_eval_theta`) and written into the checkpoint's build arguments.

Localization, where a data set has object boxes: the pointing game (the share of images whose attention
peak lies in the box) and the mean IoU of what the zoom read (WS-DAN's crop, RRA's patch, the region TASN's
sampler magnifies) with the box.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import make_loader, readable_batches

# confidence thresholds an evaluation sweeps (None: always zoom)
THRESHOLDS: tuple[float | None, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, None)
TOLERANCE = 0.5  # points of top-1 the chosen threshold may give up against always zooming
# WS-BAN/WS-DAN's test crop thresholds a run with held-out images chooses among (the published one is 0.1)
EVAL_THETAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@torch.no_grad()
def adaptive_predict(model, images: torch.Tensor, threshold: float | None,
                     **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of a batch, zooming only where the glance is unsure.

    Returns:
        ``(probs B×K, zoomed B bool)``: the glance's probabilities where its confidence is at or above
        ``threshold``, the method's where it is below (``threshold`` None: every image zoomed).
    """
    glance = model.look(images, **inputs)
    probs = glance.logits.float().softmax(1)
    unsure = torch.ones_like(probs[:, 0], dtype=torch.bool) if threshold is None else probs.amax(1) < threshold
    index = unsure.nonzero().squeeze(1)
    if len(index):
        probs[index] = model.closer(images[index], glance.take(index)).float().softmax(1)
    return probs, unsure


def attention_peaks(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×2 ``(x, y)``: where the channel-mean of B×M×h×w maps, upsampled to ``size`` (H, W), peaks, in pixel
    centres of that size (the first maximum in reading order)."""
    h, w = size
    mean = F.interpolate(attention.float().mean(1, keepdim=True), size=(h, w), mode="bilinear",
                         align_corners=False)[:, 0]
    flat = mean.flatten(1).argmax(1)
    return torch.stack([(flat % w).float() + 0.5, (flat // w).float() + 0.5], 1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes B×4 ``[x0, y0, x1, y1]`` (0 where both are empty)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]).clamp_min(0) * (x[:, 3] - x[:, 1]).clamp_min(0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Whether each point B×2 ``(x, y)`` lies in its box B×4 (edges included)."""
    x, y = points[:, 0], points[:, 1]
    return (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])


@torch.no_grad()
def look_closer_pass(model, loader, device, *, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16,
                     channels_last: bool = False, progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """One inference pass that keeps what adaptive inference and localization need, per readable image.

    For a method that looks closer: the glance's probabilities, the method's (``closer`` on every image:
    equal to ``forward``'s), where the glance's attention peaks and the box the zoom read. For a one-pass
    model (the baseline): its probabilities and where its attention (class activation map) peaks. Where
    the loader's extras carry ``object_box`` (B×4 on the view), it is kept too and not passed to the model.

    Returns:
        ``{"probs", "labels", "skipped", "glance_probs"?, "peaks"?, "zoom_boxes"?, "object_boxes"?}``.
    """
    model.eval()
    keep: dict[str, list] = {"probs": [], "labels": [], "glance_probs": [], "peaks": [], "zoom_boxes": [],
                             "object_boxes": []}
    skipped: list = []
    for images, y, extras in readable_batches(loader, device, skipped, progress=progress, desc=desc,
                                              channels_last=channels_last):
        if "object_box" in extras:
            keep["object_boxes"].append(extras.pop("object_box").float().cpu())
        size = tuple(images.shape[-2:])
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            if model.looks_closer:
                glance = model.look(images, **extras)
                logits = model.closer(images, glance)
                keep["glance_probs"].append(glance.logits.float().softmax(1).cpu())
                keep["zoom_boxes"].append(model.zoom_boxes(images, glance).float().cpu())
                attention = glance.attention
            else:
                out = model(images, **extras)
                logits, attention = out.logits, out.attention
        keep["probs"].append(logits.float().softmax(1).cpu())
        keep["labels"].append(y)
        if attention is not None:
            keep["peaks"].append(attention_peaks(attention, size).cpu())
    result: dict[str, Any] = {k: torch.cat(v) for k, v in keep.items() if v}
    result.setdefault("probs", torch.empty(0, model.num_classes))
    result.setdefault("labels", torch.empty(0, dtype=torch.long))
    result["skipped"] = skipped
    return result


def sweep(glance_probs: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, cost: dict[str, float],
          thresholds: Sequence[float | None] = THRESHOLDS) -> list[dict[str, Any]]:
    """Accuracy, share zoomed and mean GFLOPs per image at each threshold, from one pass's glance and full
    probabilities (the adaptive prediction of an image is one of the two; which one depends only on the
    glance's confidence). ``cost``: ``{"glance_gflops", "zoom_gflops"}`` per image."""
    confidence = glance_probs.amax(1)
    rows = []
    for t in thresholds:
        zoomed = torch.ones_like(confidence, dtype=torch.bool) if t is None else confidence < t
        pred = torch.where(zoomed, probs.argmax(1), glance_probs.argmax(1))
        share = zoomed.float().mean().item() if len(labels) else 0.0
        rows.append({"threshold": t, "top1": (pred == labels).float().mean().item() * 100 if len(labels) else 0.0,
                     "zoomed": share, "gflops": cost["glance_gflops"] + share * cost["zoom_gflops"]})
    return rows


def choose_threshold(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The sweep row with the lowest mean cost whose top-1 is within ``tolerance`` points of always
    zooming (ties: the more accurate); the always-zoom row where none is cheaper."""
    always = next(r for r in rows if r["threshold"] is None)
    fit = [r for r in rows if r["top1"] >= always["top1"] - tolerance]
    return min(fit, key=lambda r: (r["gflops"], -r["top1"]))


@torch.no_grad()
def stage_cost(model, image_size: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Forward GFLOPs of one ``image_size`` source image in the glance and in the zoom
    (``torch.utils.flop_counter``); the baseline's whole pass is its glance."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.randn(1, 3, image_size, image_size, device=device)

    def counted(fn) -> tuple[float, Any]:
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return counter.get_total_flops() / 1e9, out

    if not model.looks_closer:
        return {"glance_gflops": counted(lambda: model(x))[0], "zoom_gflops": 0.0}
    g_flops, glance = counted(lambda: model.look(x))
    z_flops, _ = counted(lambda: model.closer(x, glance))
    return {"glance_gflops": g_flops, "zoom_gflops": z_flops}


@torch.no_grad()
def time_thresholds(model, batches: list[torch.Tensor], thresholds: Sequence[float | None] = THRESHOLDS,
                    rounds: int = 3) -> dict[float | None, float]:
    """Images/s of :func:`adaptive_predict` at each threshold over preloaded ``batches`` (data loading
    excluded): the median of ``rounds`` rounds, each timing every threshold once, interleaved, after an
    untimed warm-up."""
    model.eval()
    n = sum(len(b) for b in batches)
    for t in (None, 0.0):  # warm-up: both stages
        adaptive_predict(model, batches[0], t)
    times: dict[float | None, list[float]] = {t: [] for t in thresholds}
    for _ in range(rounds):
        for t in thresholds:
            t0 = time.perf_counter()
            for images in batches:
                adaptive_predict(model, images, t)
            times[t].append(time.perf_counter() - t0)
    return {t: n / statistics.median(v) for t, v in times.items()}


def localization(peaks: torch.Tensor | None, zoom_boxes: torch.Tensor | None,
                 object_boxes: torch.Tensor) -> dict[str, float]:
    """Pointing game (% of images whose attention peak lies in the object box) and the mean IoU (%) of the
    zoom's box with it, where each is known."""
    out = {"boxes": int(len(object_boxes))}
    if peaks is not None and len(peaks) == len(object_boxes):
        out["pointing_game"] = inside(peaks, object_boxes).float().mean().item() * 100
    if zoom_boxes is not None and len(zoom_boxes) == len(object_boxes):
        out["zoom_iou"] = box_iou(zoom_boxes, object_boxes).mean().item() * 100
    return out


def threshold_label(t: float | None) -> str:
    return "always" if t is None else ("never" if t == 0 else f"{t:g}")


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep rows with plain floats (NumPy and torch scalars turned into Python's)."""
    return [{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in r.items()} for r in rows]


def calibrate(model, dataset, device, *, image_size: int, batch_size: int = 32, workers: int = 0,
              amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16, progress: bool = False,
              tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Choose a run's threshold on ``dataset`` (its held-out images): the sweep and the chosen row, as kept
    in a checkpoint's ``adaptive`` entry."""
    loader = make_loader(dataset, batch_size, workers, pin=device.type == "cuda")
    res = look_closer_pass(model, loader, device, amp=amp, amp_dtype=amp_dtype, progress=progress,
                           desc="choosing the zoom threshold")
    cost = stage_cost(model, image_size, device)
    rows = sweep(res["glance_probs"], res["probs"], res["labels"], cost)
    return kept_choice(rows, cost, dataset.name, len(res["labels"]), tolerance)


def kept_choice(rows: list[dict[str, Any]], cost: dict[str, float], chosen_on: str, images: int,
                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """A checkpoint's ``adaptive`` entry: the threshold :func:`choose_threshold` picks from a sweep on held-out
    images, what it keeps and saves there, and the sweep itself."""
    chosen = choose_threshold(rows, tolerance)
    always = next(r for r in rows if r["threshold"] is None)
    return {"threshold": chosen["threshold"], "chosen_on": chosen_on, "images": int(images),
            "rule": f"the lowest mean GFLOPs within {tolerance:g} points of always zooming",
            "tolerance": tolerance, "top1": chosen["top1"], "top1_always": always["top1"],
            "zoomed": chosen["zoomed"], "gflops": chosen["gflops"], "gflops_always": always["gflops"], **cost,
            "sweep": as_json(rows)}


@torch.no_grad()
def choose_eval_theta(model, dataset, device, *, batch_size: int = 32, workers: int = 0, amp: bool = False,
                      amp_dtype: torch.dtype = torch.bfloat16,
                      thetas: Sequence[float] = EVAL_THETAS) -> dict[str, Any] | None:
    """For a method whose test-time object crop has a threshold (WS-BAN/WS-DAN's ``eval_theta``, a share of
    the mean attention map's maximum): top-1 on ``dataset`` (held-out images) at each of ``thetas`` and the
    best, ties kept at the model's own value; None for any other method. The model is left as it was.

    One pass: each batch is read and glanced at once (the glance does not depend on the threshold), and
    only the zoom (``closer``, equal to ``forward``'s prediction) runs once per threshold.

    The published 0.1 suits tight crops; in a scene it can keep the whole image, so the zoom reads nothing
    the glance lacks (cub100 in scenes: WS-BAN's held-out top-1 68.60 % at 0.1, 80.20 % at 0.5)."""
    if not hasattr(model, "eval_theta"):
        return None
    own = float(model.eval_theta)
    candidates = sorted(set(thetas) | {own})
    correct = dict.fromkeys(candidates, 0)
    seen = 0
    model.eval()
    loader = make_loader(dataset, batch_size, workers, pin=device.type == "cuda")
    try:
        for images, y, extras in readable_batches(loader, device, [], progress=False):
            extras.pop("object_box", None)  # a data set's boxes are for scoring the attention, not the model
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                glance = model.look(images, **extras)
                for t in candidates:
                    model.eval_theta = t
                    correct[t] += int((model.closer(images, glance).argmax(1).cpu() == y).sum())
            seen += len(y)
    finally:
        model.eval_theta = own
    rows = [{"eval_theta": t, "top1": 100.0 * correct[t] / max(seen, 1)} for t in candidates]
    best = max(rows, key=lambda r: (r["top1"], r["eval_theta"] == own))
    return {"eval_theta": best["eval_theta"], "was": own, "chosen_on": dataset.name, "images": seen,
            "top1": best["top1"], "top1_was": 100.0 * correct[own] / max(seen, 1), "sweep": rows}


def keep_run_thresholds(out, model, dataset, device, *, image_size: int, batch_size: int, workers: int,
                        amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16) -> None:
    """At the end of a run that held out images, in ``out``'s best.pt and last.pt, each with its own weights
    (``model`` holds the last): WS-BAN/WS-DAN's test crop threshold (:func:`choose_eval_theta`), written into
    the checkpoint's build arguments so every command that loads it crops so, then when to zoom
    (:func:`calibrate`, with that crop)."""
    import copy
    import logging
    from pathlib import Path

    from .checkpoint import atomic_save, load_checkpoint_file

    log = logging.getLogger(__name__)
    for name in ("best.pt", "last.pt"):
        path = Path(out) / name
        if not path.is_file():
            continue
        ckpt = load_checkpoint_file(path)
        weights = model
        if name == "best.pt":  # its own weights, which may be an earlier epoch's
            weights = copy.deepcopy(model)
            weights.load_state_dict(ckpt.get("model_ema", ckpt["model"]))
        own = getattr(weights, "eval_theta", None)
        theta = choose_eval_theta(weights, dataset, device, batch_size=batch_size, workers=workers, amp=amp,
                                  amp_dtype=amp_dtype)
        try:
            if theta is not None:
                ckpt["eval_theta_choice"] = theta
                ckpt["build_args"] = {**ckpt["build_args"], "eval_theta": theta["eval_theta"]}
                weights.eval_theta = theta["eval_theta"]
                log.info("%s: test crop threshold %g (chosen on %d images of %s: top-1 %.2f%% against %.2f%% at %g)",
                         name, theta["eval_theta"], theta["images"], theta["chosen_on"], theta["top1"],
                         theta["top1_was"], theta["was"])
            ckpt["adaptive"] = calibrate(weights, dataset, device, image_size=image_size, batch_size=batch_size,
                                         workers=workers, amp=amp, amp_dtype=amp_dtype)
        finally:
            if own is not None:
                weights.eval_theta = own  # the trainer's model as it trained
        atomic_save(ckpt, path)
        log.info("%s: %s", name, describe(ckpt["adaptive"]))


def describe(adaptive: dict[str, Any]) -> str:
    """One line on a chosen threshold: where it was chosen and what it keeps and saves there."""
    t = adaptive["threshold"]
    what = ("zoom every image" if t is None else "never zoom" if t == 0 else
            f"zoom when the glance's confidence is below {t:g}")
    return (f"{what} (chosen on {adaptive['images']} images of {adaptive['chosen_on']}: top-1 "
            f"{adaptive['top1']:.2f}% against {adaptive['top1_always']:.2f}% always zooming, "
            f"{100 * adaptive['zoomed']:.0f}% zoomed, {adaptive['gflops']:.2f} of {adaptive['gflops_always']:.2f} "
            "GFLOPs per image)")
