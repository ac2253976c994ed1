"""Prediction on image files with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from .data import eval_transform, load_image
from .data.base import IMAGE_EXTENSIONS
from .engine.checkpoint import load_checkpoint
from .errors import BadImageError, LookcloserError


def expand_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files from a mix of files and folders (folders searched recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file() or p.exists() or p.is_symlink():
            files.append(p)  # a pipe or a dangling link is named as unreadable when loaded, never opened
        else:
            raise LookcloserError(f"{p} does not exist; pass image files or folders of images")
    if not files:
        raise LookcloserError("no image files found in the given paths; pass .jpg/.png/.webp files or folders")
    return files


class Predictor:
    """Class probabilities for images, from a checkpoint that carries its preprocessing.

    Args:
        checkpoint: a run folder or checkpoint file.
        device: ``auto`` (default: CUDA when available), ``cpu`` or ``cuda[:N]``.
        tta_flip: also look at the mirrored image.
        channels_last: run the model in the channels-last memory format (faster on CPUs and GPUs).
        bf16: bfloat16 autocast; None: on CUDA and on CPUs that compute bfloat16 natively.
        threshold: for a method that looks closer, when to zoom: ``"run"`` (default) the threshold its
            checkpoint keeps (chosen on held-out images; every image zoomed where it keeps none), ``None``
            every image (the method as published), or a confidence in [0, 1] (0: never zoom).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", tta_flip: bool = False,
                 channels_last: bool = True, bf16: bool | None = None, threshold: float | str | None = "run"):
        from .engine.distributed import resolve_device

        from .engine.evaluate import use_bf16

        self.device = resolve_device(device)  # before loading: a bad device is a quick, clear error
        self.bf16 = use_bf16(self.device, bf16)
        self.model, self.ckpt = load_checkpoint(checkpoint)
        self.channels_last = channels_last
        self.model.to(self.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        self.classes: list[str] = self.ckpt["classes"]
        pre = self.ckpt["preprocess"]
        self.transform = eval_transform(pre)
        self.tta_flip = tta_flip
        if threshold == "run":
            threshold = (self.ckpt.get("adaptive") or {}).get("threshold")
        elif threshold is not None and not 0 <= float(threshold) <= 1:
            raise LookcloserError(f"--threshold must be a confidence between 0 and 1, got {threshold}")
        self.threshold = threshold if self.model.looks_closer else None
        self.adaptive = self.model.looks_closer and self.threshold is not None

    @torch.no_grad()
    def probabilities(self, images: list) -> torch.Tensor:
        """N×K probabilities for RGB PIL images."""
        return self._probabilities_of_batch(torch.stack([self.transform(im) for im in images]))[0]

    def predict(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 32, workers: int = 2,
                probabilities: bool = False) -> list[dict]:
        """One result per image, in the order of ``paths`` (folders expanded, sorted): ``{"image", "label",
        "index", "probability", "top": [(class, probability), ...]}`` (with ``probabilities``, also
        ``"probabilities"``: the whole vector), or ``{"image", "error"}`` for an unreadable file. Images are
        decoded by ``workers`` loader processes (0: in this one).

        Raises:
            LookcloserError: ``top_k`` or ``batch_size`` below 1, no image file found, or none of them readable.
        """
        from .data import ImageDataset, Indexed, collate

        if top_k < 1 or batch_size < 1 or workers < 0:
            raise LookcloserError(f"--top-k and --batch-size must be at least 1 and --workers at least 0, got "
                                  f"{top_k}, {batch_size} and {workers}")
        files = expand_images(paths)
        k = min(top_k, len(self.classes))
        ds = ImageDataset([(str(f), 0) for f in files], self.classes, self.transform, name="the given images")
        loader = torch.utils.data.DataLoader(Indexed(ds), batch_size=batch_size, num_workers=workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda")
        results: list[dict | None] = [None] * len(files)
        for images, _, bad, extras in loader:
            for path in bad:
                i = files.index(Path(path)) if Path(path) in files else None
                if i is not None:
                    why = getattr(path, "reason", "") or "unreadable"
                    results[i] = {"image": str(path), "error": f"cannot read image {path} ({why}); replace or remove "
                                                              "the file"}
            if not len(images):
                continue
            probs, zoomed = self._probabilities_of_batch(images)
            for n, (i, p) in enumerate(zip(extras["index"].tolist(), probs)):
                v, j = p.topk(k)
                best = int(j[0])
                r = {"image": str(files[i]), "label": self.classes[best], "index": best, "probability": float(v[0]),
                     "top": [(self.classes[c], float(q)) for q, c in zip(v, j.tolist())]}
                if zoomed is not None:
                    r["zoomed"] = bool(zoomed[n])
                if probabilities:
                    r["probabilities"] = [float(q) for q in p]
                results[i] = r
        done = [r if r is not None else {"image": str(f), "error": "unreadable"} for r, f in zip(results, files)]
        if all("error" in r for r in done):
            first = done[0]["error"]
            raise LookcloserError(f"none of the {len(done)} image file(s) could be read (e.g. {first}); "
                                  "check the files")
        return done

    @torch.no_grad()
    def _probabilities_of_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probabilities N×K, whether each image was zoomed N)``; the second is None for a one-pass model."""
        from .engine.adaptive import adaptive_predict

        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        zoomed = None
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            views = [x, x.flip(3)] if self.tta_flip else [x]
            if self.model.looks_closer:
                done = [adaptive_predict(self.model, v, self.threshold) for v in views]
                p = sum(d[0] for d in done) / len(done)
                zoomed = torch.stack([d[1] for d in done]).any(0).cpu()
            else:
                p = sum(self.model(v).logits.float().softmax(1) for v in views) / len(views)
        return p.cpu(), zoomed


def write_results(results: list[dict], path: str | Path, classes: list[str] | None = None) -> Path:
    """Write ``predict``'s results to ``path``: ``.csv`` (one row per image: image, label, index, probability,
    the top-k as ``class:probability`` pairs separated by spaces, an error column, and, where the results
    hold whole probability vectors, one ``p:CLASS`` column per class of ``classes``) or ``.json`` (the list as
    it is). Written to a temporary file and renamed, so a failure leaves no half-written file."""
    import csv
    import json
    import os

    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise LookcloserError(f"--out {path}: write results to a .csv or a .json file")
    if path.is_dir():
        raise LookcloserError(f"--out {path} is a folder; name a .csv or .json file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    full = classes is not None and any("probabilities" in r for r in results)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".json":
            json.dump(results, f, indent=1)
        else:
            writer = csv.writer(f)
            writer.writerow(["image", "label", "index", "probability", "top", "error"]
                            + ([f"p:{c}" for c in classes] if full else []))
            for r in results:
                row = [r["image"], r.get("label", ""), r.get("index", ""),
                       f"{r['probability']:.6f}" if "probability" in r else "",
                       " ".join(f"{c}:{q:.6f}" for c, q in r.get("top", [])), r.get("error", "")]
                writer.writerow(row + ([f"{q:.6f}" for q in r.get("probabilities", [])] if full else []))
    os.replace(tmp, path)
    return path
