"""Drawing primitives shared by the methods' pictures and the reports: heat-map overlays, boxes,
mosaics and bar charts on H×W×3 float arrays in [0, 1], and matplotlib's off-screen backend.

A leaf module: it imports neither the models nor the engine, so a method can draw its own panels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def use_agg():
    """matplotlib's ``pyplot`` on the off-screen Agg backend (no display needed); returns ``pyplot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def separate_labels(fig, labels, *, gap: float = 2.0, rounds: int = 30) -> int:
    """Move overlapping text labels of a figure apart, vertically, so that each one stays readable.

    ``labels`` are matplotlib ``Annotation`` objects placed with ``textcoords="offset points"``. Their
    boxes are measured on the drawn figure; while two labels in the same axes overlap or come closer
    than ``gap`` points, the lower one moves down until they are ``gap`` points apart (the upper one
    keeps its place, so a label moves only when it must). Returns the number of moves made.
    """
    moves = 0
    for _ in range(rounds):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        points_per_pixel = 72.0 / fig.dpi
        pad = gap / points_per_pixel / 2  # half the gap around every box, in pixels
        boxes = [(label, label.get_window_extent(renderer).padded(pad)) for label in labels]
        moved = False
        for i, (upper, a) in enumerate(boxes):
            for lower, b in boxes[i + 1:]:
                if upper.axes is not lower.axes or not a.overlaps(b):
                    continue
                if b.y0 > a.y0:  # keep ``lower`` the one drawn lower
                    upper, lower, a, b = lower, upper, b, a
                shift = (b.y1 - a.y0) * points_per_pixel + 0.01
                x, y = lower.xyann
                lower.xyann = (x, y - shift)
                moves, moved = moves + 1, True
                break
            if moved:
                break
        if not moved:
            return moves
    return moves


def attention_overlay(image: np.ndarray, attention: torch.Tensor) -> np.ndarray:
    """Blend a heat map of ``attention`` (h×w, any scale) over ``image`` (H×W×3 in [0, 1])."""
    import matplotlib

    h, w = image.shape[:2]
    a = F.interpolate(attention[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    a = a - a.min()
    a = (a / a.max().clamp_min(1e-8)).numpy()
    heat = matplotlib.colormaps["jet"](a)[..., :3]
    return 0.55 * image + 0.45 * heat


def draw_box(canvas: np.ndarray, box, color=(1.0, 0.0, 0.0), width: int | None = None) -> np.ndarray:
    """Draw the outline of a box in place and return the canvas.

    Args:
        canvas: H×W×3 picture.
        box: ``(x0, y0, x1, y1)`` in pixel-edge coordinates of the canvas (pixel i spans [i, i + 1]); the
            outline covers every pixel the box touches and is clamped to the canvas.
        color: RGB in [0, 1].
        width: line width in pixels (default: 1 % of the shorter side, at least 1).
    """
    h, w = canvas.shape[:2]
    t = width or max(1, round(min(h, w) / 100))
    x0, y0 = (int(math.floor(float(v))) for v in list(box)[:2])
    x1, y1 = (int(math.ceil(float(v))) for v in list(box)[2:4])
    x0, x1 = max(0, min(x0, w - 1)), max(1, min(x1, w))
    y0, y1 = max(0, min(y0, h - 1)), max(1, min(y1, h))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    c = np.asarray(color, dtype=canvas.dtype)
    canvas[y0:y0 + t, x0:x1] = c
    canvas[max(y0, y1 - t):y1, x0:x1] = c
    canvas[y0:y1, x0:x0 + t] = c
    canvas[y0:y1, max(x0, x1 - t):x1] = c
    return canvas


def crop_box(image: np.ndarray, box) -> np.ndarray:
    """The pixels of ``image`` inside ``(x0, y0, x1, y1)`` (pixel-edge coordinates, at least one pixel)."""
    h, w = image.shape[:2]
    x0, y0 = (max(0, int(math.floor(float(v)))) for v in list(box)[:2])
    x1, y1 = (int(math.ceil(float(v))) for v in list(box)[2:4])
    x0, y0 = min(x0, w - 1), min(y0, h - 1)
    return image[y0:max(y0 + 1, min(y1, h)), x0:max(x0 + 1, min(x1, w))]


def mosaic(tiles: list[np.ndarray]) -> np.ndarray:
    """Up to four H×W×3 pictures as one 2×2 grid of half-size tiles (one picture is returned as is)."""
    if len(tiles) == 1:
        return tiles[0]
    h, w = tiles[0].shape[:2]
    small = [F.interpolate(torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1)[None].float(),
                           size=(max(1, h // 2), max(1, w // 2)), mode="bilinear", align_corners=False)[0]
             .permute(1, 2, 0).numpy() for t in tiles[:4]]
    small += [np.zeros_like(small[0])] * (4 - len(small))
    return np.concatenate([np.concatenate(small[:2], 1), np.concatenate(small[2:], 1)], 0)


def bar_chart(weights: np.ndarray, h: int, w: int) -> np.ndarray:
    """An H×W picture with one bar per value, heights proportional (the tallest bar fills the panel)."""
    canvas = np.ones((h, w, 3), dtype=np.float32)
    n = len(weights)
    top = max(float(np.max(weights)), 1e-8)
    margin = max(1, h // 20)
    slot = w / n
    for i, v in enumerate(weights):
        bar = int(round((h - 2 * margin) * float(v) / top))
        xa, xb = int(round(i * slot + slot * 0.15)), int(round((i + 1) * slot - slot * 0.15))
        canvas[h - margin - bar:h - margin, xa:max(xa + 1, xb)] = (0.2, 0.4, 0.8)
    canvas[h - margin:h - margin + 1, :] = 0.0  # baseline
    return canvas


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 array → 1×3×H×W float tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """1×3×H×W or 3×H×W tensor → H×W×3 float array clipped to [0, 1]."""
    if x.ndim == 4:
        x = x[0]
    return x.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
