"""A linear probe: how good are a backbone's frozen features for a data set?

The floor every fine-tuning recipe is measured against, and the cheapest answer a user can have. The
backbone sees each image once per view size, as the baseline's glance does (the evaluation view of the
source at ``image_size``, resized to ``view_size``, the last feature map averaged over space); the
features are kept in the output folder, so a second probe of the same images reads them back. A
multinomial logistic regression on the standardized features is solved by L-BFGS; its L2 strength is
chosen on held-out training images (the same images ``--holdout`` holds out of a training run), never on
the evaluation split, and the classifier is then refitted on every training image with that strength.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .engine.linear import (STRENGTHS, _standardize, choose_strength, extract_features, fit_logistic, fit_on_a_tenth,
                            top1)
from .errors import LookcloserError

log = logging.getLogger(__name__)


def linear_probe(data: str, out: str | Path, *, backbone: str = "efficientnet_lite0", pretrained: bool = True,
                 weights: str = "", view_sizes: Sequence[int] = (224,), image_size: int = 224,
                 resize_ratio: float = 1.143, holdout: float = 0.1, strengths: Sequence[float] = STRENGTHS,
                 split: str | None = None, batch_size: int = 64, workers: int = 2, device: str = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Probe a backbone's frozen features on a data set; write ``probe.json`` and, per view size, the
    classifier (``probe-VIEW.pt``, a ``weight``/``bias`` pair on the raw pooled features) into ``out``.

    Args:
        data: dataset spec.
        out: folder for the results and the kept features (``features-VIEW.pt``).
        view_sizes: the glance sizes to probe, each resized from the ``image_size`` source.
        holdout: share of each class's training images the strength is chosen on.
        split: the split scored at the end (default: test, else val).

    Returns:
        The content of ``probe.json``.
    """
    from .backbones import Backbone
    from .benchmark import environment
    from .data import eval_split, eval_transform, holdout_indices, open_dataset
    from .engine.distributed import resolve_device
    from .folders import json_with, output_folder

    if not 0 < holdout <= 0.5:
        raise LookcloserError(f"--holdout must be in (0, 0.5] (the share the strength is chosen on), got {holdout}")
    if not strengths or any(s <= 0 for s in strengths):
        raise LookcloserError(f"--strengths must be positive numbers, got {list(strengths)}")
    split = split or eval_split(data)
    if split in ("train", "holdout"):
        raise LookcloserError(f"--split {split} would score the probe on images it chose its strength on or fitted; "
                              "pick test or val")
    out = output_folder(out, "probe", recognize=lambda p: json_with(p / "probe.json", "views", "backbone", "holdout"))
    dev = resolve_device(device)
    torch.manual_seed(0)  # random weights (where no trained ones are given) are the same every time
    bb = Backbone(backbone, pretrained=pretrained, weights=weights)
    pre = {"image_size": image_size, "resize_ratio": resize_ratio, "mean": list(bb.mean), "std": list(bb.std)}
    sets = {s: open_dataset(data, s, eval_transform(pre)) for s in ("train", split)}
    classes = sets["train"].classes
    if sets[split].classes != classes:
        raise LookcloserError(f"the {split} split of {data} has other classes than its training split; check the data")
    k = len(classes)
    result = {"data": data, "backbone": bb.name, "pretrained": pretrained, "weights": weights, "split": split,
              "image_size": image_size, "resize_ratio": resize_ratio, "holdout": holdout, "views": {},
              "environment": environment()}
    held_set = set(holdout_indices(sets["train"].targets, holdout))
    for view in view_sizes:
        t0 = time.perf_counter()
        feats = _features(bb, sets, view, dev, out, data, pre, batch_size, workers, progress)
        t_feat = time.perf_counter() - t0
        (xtr, ytr, itr), (xte, yte, _) = feats["train"], feats[split]
        held = torch.tensor([int(i) in held_set for i in itr])
        t1 = time.perf_counter()
        _, (xf, xh) = _standardize(xtr[~held], xtr[held])
        strength, scores = choose_strength(xf, ytr[~held], xh, ytr[held], k, strengths)
        (mu, sd), (xs, xts) = _standardize(xtr, xte)
        w, b = fit_logistic(xs, ytr, k, strength)
        t_fit = time.perf_counter() - t1
        from .engine.evaluate import compute_metrics

        m = compute_metrics((xts @ w.T + b).softmax(1), yte, k)
        raw_w = w / sd
        torch.save({"weight": raw_w, "bias": b - (mu / sd) @ w.T, "classes": classes, "view_size": view,
                    "backbone": bb.name}, out / f"probe-{view}.pt")
        result["views"][str(view)] = {
            "strength": strength, "holdout_top1": {f"{s:g}": v for s, v in scores.items()},
            "top1": m["top1"], "top5": m["top5"], "mean_per_class": m["mean_per_class"],
            "train_images": int(len(ytr)), "held_out_images": int(held.sum()), "eval_images": int(len(yte)),
            "feature_time_s": t_feat, "fit_time_s": t_fit}
        log.info("probe %s at %d px: strength %g (held-out top-1 %.2f%%), %s top-1 %.2f%%", bb.name, view, strength,
                 scores[strength], split, m["top1"])
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _features(bb, sets, view, device, out: Path, data, pre, batch_size, workers, progress):
    """Each split's features at ``view``, read back from ``features-VIEW.pt`` when it was made from the
    same images, backbone weights and preprocessing."""
    digest = hashlib.sha256()
    for name in sorted(sets):
        digest.update(json.dumps([name, sets[name].samples]).encode())
    for v in bb.state_dict().values():
        digest.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    key = {"data": data, "backbone": bb.name, "view": view, "preprocess": pre, "digest": digest.hexdigest()}
    path = out / f"features-{view}.pt"
    if path.is_file():
        try:
            kept = torch.load(path, map_location="cpu", weights_only=True)
            if kept.get("key") == key:
                return {s: tuple(kept[s]) for s in sets}
        except Exception:  # an unreadable or foreign file is recomputed
            pass
    feats = {}
    for name, ds in sets.items():
        x, y, idx, skipped = extract_features(bb, ds, view, device, batch_size=batch_size, workers=workers,
                                              progress=progress, desc=f"{name} features at {view} px")
        for p in skipped:
            log.warning("skipping unreadable image %s", p)
        feats[name] = (x, y, idx)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"key": key, **{s: list(v) for s, v in feats.items()}}, tmp)
    tmp.replace(path)
    return feats


def markdown(result: dict[str, Any]) -> str:
    """The probe's result as a Markdown table."""
    lines = [f"Linear probe of {result['backbone']} ({'pretrained' if result['pretrained'] else 'as given'}) on "
             f"{result['data']}, {result['split']} split; strength chosen on {result['holdout']:.0%} of each "
             "class's training images", "",
             "| view | strength | held-out top-1 (%) | top-1 (%) | top-5 (%) | mean per class (%) | features (s) |",
             "|---|---|---|---|---|---|---|"]
    for view, r in result["views"].items():
        held = r["holdout_top1"][f"{r['strength']:g}"]
        lines.append(f"| {view} px | {r['strength']:g} | {held:.2f} | "
                     f"{r['top1']:.2f} | {r['top5']:.2f} | {r['mean_per_class']:.2f} | {r['feature_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


WHERE = "where-it-stands.json"


def where_it_stands(run: str | Path, *, device: str | None = None, batch_size: int | None = None,
                    workers: int | None = None, progress: bool = False) -> dict[str, Any] | None:
    """For a run that started from pretrained weights and was scored every epoch on images it does not train
    on (held out with ``--holdout``, or the data set's val split): the frozen-feature probe's top-1 on those
    images beside the fine-tuned weights' (the last epoch's, and best.pt's with its epoch and phase), written
    as ``RUN/where-it-stands.json``. None for any other run.

    The probe is the run's own backbone as it started (its pretrained weights), at the method's glance size,
    on the run's training images: a logistic regression whose strength is chosen on a tenth of them, then
    refitted on all, scored on the run's held-out (or val) images, which neither it nor its strength saw.
    ``device``, ``batch_size`` and ``workers`` default to the run's own.
    """
    from .backbones import Backbone
    from .config import RunConfig
    from .data import HOLDOUT, eval_transform, open_dataset
    from .engine.distributed import resolve_device

    run = Path(run)
    cfg = RunConfig.from_saved(__import__("yaml").safe_load((run / "config.yaml").read_text()))
    if not cfg.starts_pretrained or not (run / "metrics.jsonl").is_file():
        return None
    held_share = cfg.data.holdout
    split = HOLDOUT if held_share else "val"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    scored = [r for r in records if r.get("eval_split") == split]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["eval_top1"]) if (run / "best.pt").is_file() else None
    dev = resolve_device(device or cfg.train.device)
    batch_size, workers = batch_size or cfg.data.batch_size, cfg.data.workers if workers is None else workers
    torch.manual_seed(0)
    bb = Backbone(cfg.model.backbone, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    view = int(cfg.model.options.get("view_size") or cfg.data.image_size)
    pre = {"image_size": cfg.data.image_size, "resize_ratio": cfg.data.resize_ratio, "squash": cfg.data.squash,
           "mean": list(bb.mean), "std": list(bb.std)}
    sets = {s: open_dataset(cfg.data.data, s, eval_transform(pre), holdout=held_share) for s in ("train", split)}
    k = len(sets["train"].classes)
    xtr, ytr, _, _ = extract_features(bb, sets["train"], view, dev, batch_size=batch_size, workers=workers,
                                      progress=progress, desc="training features (frozen)")
    xho, yho, _, _ = extract_features(bb, sets[split], view, dev, batch_size=batch_size, workers=workers,
                                      progress=progress, desc=f"{'held-out' if held_share else 'val'} features (frozen)")
    strength, _, (mu, sd), wb = fit_on_a_tenth(xtr, ytr, k)
    probe = top1((xho - mu) / sd, yho, wb)
    last = scored[-1]
    result = {"split": split, "held_out_images": int(len(yho)), "view_size": view, "probe_top1": probe,
              "probe_strength": strength,
              "last_top1": last["eval_top1"], "last_epoch": last["epoch"],
              "best_top1": best["eval_top1"] if best else None, "best_epoch": best["epoch"] if best else None,
              "best_phase": best.get("phase") if best else None}
    kept = max(last["eval_top1"], best["eval_top1"] if best else -1.0)
    result["below_probe"] = kept < probe
    (run / WHERE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def stands_lines(r: dict[str, Any]) -> list[str]:
    """The run's statement: the fine-tuned weights against the frozen features on the held-out images."""
    best = (f", {r['best_top1']:.2f}% in best.pt (epoch {r['best_epoch']}"
            f"{', a heads-first epoch' if r['best_phase'] == 'heads' else ''})" if r["best_top1"] is not None else "")
    where = "held-out" if r.get("split", "holdout") == "holdout" else r["split"]
    lines = [f"{where} top-1 ({r['held_out_images']} images): fine-tuned {r['last_top1']:.2f}% at the last epoch "
             f"(epoch {r['last_epoch']}){best}; a linear probe on the frozen pretrained features at "
             f"{r['view_size']} px: {r['probe_top1']:.2f}%"]
    if r["below_probe"]:
        kept = max(r["last_top1"], r["best_top1"] if r["best_top1"] is not None else -1.0)
        lines.append(f"fine-tuning ended below the frozen features ({kept - r['probe_top1']:+.2f} points): with this "
                     "few images the probe is the better model (`lookcloser probe` fits it); see docs/training.md, "
                     "few images per class")
    return lines
