"""Pictures of what a model looked at.

For each image: the input, the method's attention (the mean of its maps, or the baseline's class
activation map) over the image, and the top predictions. A method can add panels of its own by
defining ``panels(output, index, image) -> list[(title, HxWx3 float array)]`` (see
:meth:`lookcloser.models.Method.panels`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .data import load_image
from .draw import attention_overlay, use_agg
from .folders import output_folder


def _denorm(x: torch.Tensor, mean, std) -> np.ndarray:
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu().float() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def _earlier_pictures(folder: Path) -> bool:
    """A folder of pictures from before output folders were marked: a gallery and numbered pictures only."""
    from .report import GALLERY_NAME

    names = [p.name for p in folder.iterdir()]
    return GALLERY_NAME in names and all(n == GALLERY_NAME or re.fullmatch(r"\d{3}_.+\.png", n) for n in names)


@torch.no_grad()
def visualize(checkpoint: str | Path, images: list[str | Path], out: str | Path, *, labels: list[int] | None = None,
              device: str = "cpu", threshold: float | str | None = "run") -> list[Path]:
    """Write one picture per image into ``out``, and ``gallery.html`` showing them all; return the pictures' paths.

    For a method that looks closer, the prediction shown is the one ``predict`` gives: with the run's
    threshold (``threshold``, as :class:`lookcloser.predict.Predictor` takes it), a confident glance keeps
    its answer and the title says so; the pictures still show where the zoom would have looked.

    Args:
        checkpoint: a run folder or checkpoint file.
        images: image files.
        out: output folder.
        labels: optional true labels, shown in the title.
    """
    from .predict import Predictor

    plt = use_agg()

    pred = Predictor(checkpoint, device=device, threshold=threshold)
    model, ckpt = pred.model, pred.ckpt
    pre = ckpt["preprocess"]
    out = output_folder(out, "visualize", recognize=_earlier_pictures)
    written, captions = [], []
    for n, path in enumerate(images):
        x = pred.transform(load_image(path))[None].to(pred.device)
        o = model(x)
        p, zoomed = pred._probabilities_of_batch(x)
        probs = p[0]
        how = ""
        if zoomed is not None and pred.threshold is not None:
            confidence = model.look(x).logits.float().softmax(1).amax().item()
            how = (f"   (zoomed: glance {confidence:.0%} < {pred.threshold:g})" if zoomed[0] else
                   f"   (answered at the glance: {confidence:.0%} >= {pred.threshold:g})")
        img = _denorm(x[0], pre["mean"], pre["std"])
        panels = [("input", img)]
        if o.attention is not None:
            panels.append(("attention", attention_overlay(img, o.attention[0].float().mean(0).cpu())))
        panels += model.panels(o, 0, img)
        v, i = probs.topk(min(3, len(probs)))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
        for ax, (title, arr) in zip(np.atleast_1d(axes), panels):
            ax.imshow(np.clip(arr, 0, 1))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        lines = [f"{ckpt['classes'][j]} {q:.0%}" for q, j in zip(v.tolist(), i.tolist())]
        truth = f"true: {ckpt['classes'][labels[n]]}   " if labels is not None else ""
        fig.suptitle(truth + "predicted: " + ", ".join(lines) + how, fontsize=9)
        fig.tight_layout()
        dest = out / f"{n:03d}_{Path(path).stem}.png"
        fig.savefig(dest, dpi=90)
        plt.close(fig)
        written.append(dest)
        captions.append(f"{Path(path).name}\n{truth}predicted: {', '.join(lines)}{how}")
    from .report import write_gallery

    write_gallery(out, written, captions)
    return written
