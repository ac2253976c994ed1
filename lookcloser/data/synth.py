"""A built-in synthetic fine-grained data set, generated deterministically from a seed.

Every image shows the same kind of object, a bird-like figure (body, head, wing, tail) of a random
colour, at a random position, scale and orientation on a cluttered background. Classes differ only in
small local details: the shape of a small mark on the head (disc, square, triangle, cross), the
pattern on the wing (stripes, dots, checker) and, beyond 12 classes, the mark's tone. The head mark
covers a few percent of the object's width, so a whole-image glance at low resolution cannot separate
the classes and looking closer pays.

Image ``i`` of a split is drawn from its own generator seeded by ``(seed, split, i)``: any image can be
made alone, at any data set size, identically on every machine.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import LookcloserError
from .base import ImageDataset
from .files import parse_synth_options

SHAPES = ("disc", "square", "triangle", "cross")
PATTERNS = ("stripes", "dots", "checker")
TONES = ("dark", "light")
MAX_CLASSES = len(SHAPES) * len(PATTERNS) * len(TONES)
_SPLITS = {"train": 0, "test": 1, "val": 2}


def class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes, e.g. ``disc-stripes``; the tone appears past 12."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise LookcloserError(f"synth classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    names = []
    for tone, pattern, shape in itertools.product(TONES, PATTERNS, SHAPES):
        names.append(f"{shape}-{pattern}" + ("" if tone == "dark" else "-light"))
    # order so the first classes differ in head mark and wing pattern, both small details
    return names[:num_classes]


def _attributes(label: int) -> tuple[str, str, str]:
    tone, pattern, shape = list(itertools.product(TONES, PATTERNS, SHAPES))[label]
    return shape, pattern, tone


def _rand_color(rng: np.random.Generator, lo: int = 40, hi: int = 220) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = np.array(_rand_color(rng, 90, 200), dtype=np.float32)
    # smooth colour gradient plus noise, then random clutter shapes
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grad = (rng.uniform(-40, 40, 3)[None, None] * xx[..., None] + rng.uniform(-40, 40, 3)[None, None] * yy[..., None])
    arr = base[None, None] + grad + rng.normal(0, 6, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 16))):
        kind = rng.integers(0, 3)
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.3, 2) * size
        col = _rand_color(rng, 60, 230)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            draw.line([x0, y0, x0 + w * 2, y0 + h * 2], fill=col, width=max(1, int(size * 0.015)))
    return img.filter(ImageFilter.GaussianBlur(radius=size / 256))


def _mark(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color) -> None:
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r * 1.1), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=color)
    else:
        t = r * 0.38
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=color)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=color)


def _object(rng: np.random.Generator, label: int, side: int) -> Image.Image:
    """The figure drawn upright on a transparent side×side canvas (side = 2× supersampled)."""
    shape, pattern, tone = _attributes(label)
    obj = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(obj)
    s = side
    body_col = _rand_color(rng, 50, 210)
    wing_col = tuple(int(c * 0.7) for c in body_col)
    accent = (25, 25, 25) if tone == "dark" else (245, 245, 245)
    # tail, body, head
    d.polygon([(0.12 * s, 0.40 * s), (0.30 * s, 0.50 * s), (0.12 * s, 0.62 * s)], fill=wing_col + (255,))
    d.ellipse([0.22 * s, 0.35 * s, 0.72 * s, 0.67 * s], fill=body_col + (255,))
    d.ellipse([0.62 * s, 0.24 * s, 0.86 * s, 0.48 * s], fill=body_col + (255,))
    d.polygon([(0.85 * s, 0.33 * s), (0.95 * s, 0.37 * s), (0.85 * s, 0.40 * s)], fill=(230, 170, 40, 255))  # beak
    # wing with its pattern (class detail 2)
    wx0, wy0, wx1, wy1 = 0.33 * s, 0.44 * s, 0.60 * s, 0.60 * s
    d.ellipse([wx0, wy0, wx1, wy1], fill=wing_col + (255,))
    step = 0.035 * s
    if pattern == "stripes":
        x = wx0 + step
        while x < wx1 - step * 0.5:
            d.line([(x, wy0 + step * 0.8), (x, wy1 - step * 0.8)], fill=accent + (255,), width=max(1, int(step * 0.45)))
            x += step
    elif pattern == "dots":
        for gx in np.arange(wx0 + step, wx1 - step * 0.5, step * 1.2):
            for gy in np.arange(wy0 + step, wy1 - step * 0.5, step * 1.2):
                r = step * 0.28
                d.ellipse([gx - r, gy - r, gx + r, gy + r], fill=accent + (255,))
    else:
        for i, gx in enumerate(np.arange(wx0 + step * 0.8, wx1 - step, step)):
            for j, gy in enumerate(np.arange(wy0 + step * 0.6, wy1 - step, step)):
                if (i + j) % 2 == 0:
                    d.rectangle([gx, gy, gx + step, gy + step], fill=accent + (255,))
    # head mark (class detail 1), plus the eye
    _mark(d, shape, 0.71 * s, 0.39 * s, 0.042 * s, accent + (255,))
    d.ellipse([0.77 * s, 0.29 * s, 0.805 * s, 0.325 * s], fill=(10, 10, 10, 255))
    return obj


def render(seed: int, split: str, index: int, num_classes: int, size: int) -> tuple[Image.Image, int]:
    """Image ``index`` of ``split`` and its label (balanced: label = index mod classes)."""
    label = index % num_classes
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    img = _background(rng, size)
    scale = rng.uniform(0.55, 0.95)  # object canvas side relative to the image
    side = max(8, int(size * scale))
    obj = _object(rng, label, side * 2).rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC)
    obj = obj.resize((side, side), Image.LANCZOS)
    x = int(rng.integers(-side // 8, size - side + side // 8 + 1))
    y = int(rng.integers(-side // 8, size - side + side // 8 + 1))
    img.paste(obj, (x, y), obj)
    return img, label


class SynthDataset(ImageDataset):
    """The synthetic data set as an :class:`ImageDataset` whose images are drawn on demand."""

    def __init__(self, split: str = "train", *, classes: int = 8, per_class: int | None = None, size: int = 128,
                 seed: int = 0, transform=None):
        if split not in _SPLITS:
            raise LookcloserError(f"synth has splits train, val and test, not {split!r}")
        if per_class is None:
            per_class = 40 if split == "train" else 20
        if per_class < 1 or size < 16:
            raise LookcloserError("synth needs at least 1 image per class and a size of at least 16 pixels")
        self.seed, self.split, self.size = seed, split, size
        names = class_names(classes)
        n = per_class * classes
        samples = [(f"synth://{split}/{i:06d}", i % classes) for i in range(n)]
        super().__init__(samples, names, transform, name=f"synth:{split}")

    def load(self, index: int) -> Image.Image:
        # the drawing's number is in its name, so a subset (a held-out share) draws the same images
        number = int(self.samples[index][0].rsplit("/", 1)[1])
        return render(self.seed, self.split, number, self.num_classes, self.size)[0]

    def known_sizes(self) -> list[tuple[int, int]]:
        return [(self.size, self.size)] * len(self.samples)  # drawn on demand, every one size × size


def open_synth(options: str, split: str, transform=None) -> SynthDataset:
    """The synthetic split described by an option string (see :func:`parse_synth_options`)."""
    o = parse_synth_options(options)
    if split not in _SPLITS:
        raise LookcloserError(f"synth has splits train, val and test, not {split!r}")
    return SynthDataset(split, classes=o["classes"], per_class=o[split], size=o["size"], seed=o["seed"],
                        transform=transform)


def write_synth(out: str | Path, *, classes: int = 8, train: int = 40, test: int = 20, size: int = 128,
                seed: int = 0, progress: bool = True) -> Path:
    """Write the data set as class folders ``out/{train,test}/<class>/<index>.png``."""
    from tqdm import tqdm

    from ..folders import output_folder

    # both splits are built (and their options checked) before anything is written
    splits = [SynthDataset(split, classes=classes, per_class=n, size=size, seed=seed)
              for split, n in (("train", train), ("test", test))]
    out = output_folder(out, "data synth")
    bar = tqdm(total=(train + test) * classes, desc="synth", unit="img", disable=not progress)
    for split, ds in zip(("train", "test"), splits):
        for name in ds.classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(len(ds)):
            img = ds.load(i)
            img.save(out / split / ds.classes[ds.samples[i][1]] / f"{i:06d}.png")
            bar.update(1)
    bar.close()
    return out

