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
        device: ``cpu`` (default) or ``cuda``.
        tta_flip: also look at the mirrored image.
        channels_last: run the model in the channels-last memory format (faster on CPUs and GPUs).
        bf16: bfloat16 autocast; None: on CUDA and on CPUs that compute bfloat16 natively.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu", tta_flip: bool = False,
                 channels_last: bool = True, bf16: bool | None = None):
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

    @torch.no_grad()
    def probabilities(self, images: list) -> torch.Tensor:
        """N×K probabilities for RGB PIL images."""
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            p = self.model(x).logits.float().softmax(1)
            if self.tta_flip:
                p = (p + self.model(x.flip(3)).logits.float().softmax(1)) / 2
        return p.cpu()

    def predict(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 32) -> list[dict]:
        """One result per image: ``{"image", "top": [(class, probability), ...]}`` or ``{"image", "error"}``.

        Raises:
            LookcloserError: ``top_k`` or ``batch_size`` below 1, no image file found, or none of them readable.
        """
        if top_k < 1 or batch_size < 1:
            raise LookcloserError(f"--top-k and --batch-size must be at least 1, got {top_k} and {batch_size}")
        files = expand_images(paths)
        k = min(top_k, len(self.classes))
        results: list[dict] = []
        for start in range(0, len(files), batch_size):
            chunk, images, errors = files[start:start + batch_size], [], {}
            for f in chunk:
                try:
                    images.append(load_image(f))
                except BadImageError as e:
                    errors[f] = str(e)
            probs = iter(self.probabilities(images)) if images else iter(())
            for f in chunk:
                if f in errors:
                    results.append({"image": str(f), "error": errors[f]})
                    continue
                p = next(probs)
                v, i = p.topk(k)
                results.append({"image": str(f), "top": [(self.classes[j], float(q)) for q, j in zip(v, i.tolist())]})
        if all("error" in r for r in results):
            first = results[0]["error"]
            raise LookcloserError(f"none of the {len(results)} image file(s) could be read (e.g. {first}); "
                                  "check the files")
        return results
