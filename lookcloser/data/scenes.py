"""Objects in scenes: a fine-grained set of tight crops placed, small, into larger photographs.

The papers read 448 px photographs in which the object is one part of the scene; the fine-grained sets
that can be had offline are tight crops, in which a glance already sees every pixel there is. This builder
makes the papers' regime from such crops: every object image (e.g. a cub100 bird) is pasted at its own
resolution, never enlarged, onto a random crop of a background photograph (e.g. a flowers12 image, resized
to the canvas), its side a random share of the canvas, at a random place, with a feathered edge. Training
objects go onto training backgrounds and test objects onto test backgrounds. The result is written in
CUB-200-2011's format, with ``bounding_boxes.txt`` holding each placed object's box, so every reader and
localization metric of lookcloser (and any CUB tool) reads it.

Image ``i`` is drawn from its own generator, seeded by ``(seed, i)``, so the output does not depend on the
order or the number of processes that build it; the same Pillow and NumPy give the same files on every
machine (``manifest.json`` records a digest of the pixels to compare).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LookcloserError


@dataclass(frozen=True)
class SceneOptions:
    """How the scenes are made.

    Attributes:
        canvas: side of every scene, in pixels.
        scale: the object's side as a share of the canvas, drawn uniformly from this range (the object is
            never enlarged: a share beyond its own side keeps its side).
        background_share: the side of the background crop as a share of the background photograph's
            shorter side, drawn uniformly from this range (the crop is then resized to the canvas).
        feather: width of the object's soft edge as a share of its side.
        seed: the seed every image's generator starts from.
        quality: JPEG quality of the scenes (0: lossless PNG).
    """

    canvas: int = 448
    scale: tuple[float, float] = (0.36, 0.51)
    background_share: tuple[float, float] = (0.6, 1.0)
    feather: float = 0.08
    seed: int = 0
    quality: int = 95

    def __post_init__(self):
        lo, hi = self.scale
        if not 32 <= self.canvas <= 4096:
            raise LookcloserError(f"--canvas must be between 32 and 4096 pixels, got {self.canvas}")
        if not 0 < lo <= hi <= 1:
            raise LookcloserError(f"--scale must be two shares 0 < LOW <= HIGH <= 1 of the canvas, got {lo},{hi}")
        blo, bhi = self.background_share
        if not 0 < blo <= bhi <= 1:
            raise LookcloserError(f"background shares must satisfy 0 < LOW <= HIGH <= 1, got {blo},{bhi}")
        if not 0 <= self.feather < 0.5:
            raise LookcloserError(f"--feather must be in [0, 0.5), got {self.feather}")
        if not 0 <= self.quality <= 100:
            raise LookcloserError(f"--quality must be 0 (PNG) to 100, got {self.quality}")


def feather_mask(width: int, height: int, feather: float) -> np.ndarray:
    """A height×width alpha mask: 1 inside, falling smoothly (a cosine ramp) to 0 at the edges over
    ``feather`` × the longer side."""
    ramp_width = max(1.0, feather * max(width, height))

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float64) + 0.5  # distance to the edge
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(d / ramp_width, 0.0, 1.0))

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def compose(obj: Image.Image, background: Image.Image, rng: np.random.Generator,
            opts: SceneOptions) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One scene: ``obj`` pasted onto a random crop of ``background``; returns it and the object's box
    ``(x, y, width, height)`` in scene pixels."""
    canvas = opts.canvas
    bw, bh = background.size
    share = rng.uniform(*opts.background_share)
    crop = max(1, int(round(share * min(bw, bh))))
    bx, by = int(rng.integers(0, bw - crop + 1)), int(rng.integers(0, bh - crop + 1))
    scene = background.crop((bx, by, bx + crop, by + crop)).resize((canvas, canvas), Image.Resampling.BICUBIC)
    ow, oh = obj.size
    side = int(round(rng.uniform(*opts.scale) * canvas))
    side = max(8, min(side, max(ow, oh), canvas))  # never enlarged, always inside the canvas
    f = side / max(ow, oh)
    w, h = max(1, int(round(ow * f))), max(1, int(round(oh * f)))
    if (w, h) != (ow, oh):
        obj = obj.resize((w, h), Image.Resampling.LANCZOS)
    x, y = int(rng.integers(0, canvas - w + 1)), int(rng.integers(0, canvas - h + 1))
    alpha = feather_mask(w, h, opts.feather)
    region = np.asarray(scene, dtype=np.float32)[y:y + h, x:x + w]
    mixed = alpha[..., None] * np.asarray(obj, dtype=np.float32) + (1 - alpha[..., None]) * region
    out = np.asarray(scene).copy()
    out[y:y + h, x:x + w] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB"), (x, y, w, h)


_OPENED: dict = {}  # (spec, split) -> data set, opened once per process


def _split(spec: str, split: str):
    from . import open_dataset

    if (spec, split) not in _OPENED:
        _OPENED[spec, split] = open_dataset(spec, split)
    return _OPENED[spec, split]


def _build_one(job):
    """Make and write scene ``index`` (a worker's task): ``(index, box, sha256 of its pixels)``."""
    index, objects, split, position, backgrounds, dest, opts = job
    rng = np.random.default_rng([opts.seed, index])
    pool = _split(backgrounds, split)
    background = pool.load(int(rng.integers(0, len(pool))))
    scene, box = compose(_split(objects, split).load(position), background, rng, opts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if opts.quality:
        scene.save(dest, quality=opts.quality, subsampling=0)
    else:
        scene.save(dest)
    # the pixels as a reader decodes them, so the digest says whether two builds read alike
    with Image.open(dest) as im:
        digest = hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()
    return index, box, digest


def write_scenes(objects: str, backgrounds: str, out: str | Path, *, options: SceneOptions | None = None,
                 workers: int = 2, progress: bool = True, limit: int = 0) -> dict:
    """Build the scenes into ``out`` in CUB-200-2011's format; return the manifest.

    Args:
        objects: data spec of the object crops (its train and test splits and classes are kept).
        backgrounds: data spec of the background photographs (train objects on its train split, test
            objects on its test split).
        out: the folder to write (new, empty, or an earlier build of its own).
        options: canvas, scale range, seed, ... (:class:`SceneOptions`).
        workers: processes that build scenes in parallel (the output does not depend on it).
        limit: build only the first ``limit`` objects of each split (0: all), for a quick look.
    """
    from tqdm import tqdm

    from ..folders import output_folder

    opts = options or SceneOptions()
    splits = {s: _split(objects, s) for s in ("train", "test")}
    classes = splits["train"].classes
    if splits["test"].classes != classes:
        raise LookcloserError(f"the train and test splits of {objects} name different classes; the scenes keep "
                              "one class list")
    for split in ("train", "test"):  # train objects go onto train backgrounds, test onto test
        if len(_split(backgrounds, split)) == 0:
            raise LookcloserError(f"the {split} split of the backgrounds {backgrounds} has no images; give a set "
                                  "with train and test images")
    out = output_folder(out, "data scenes", recognize=lambda p: (p / "manifest.json").is_file()
                        and json.loads((p / "manifest.json").read_text()).get("kind") == "scenes")
    jobs, rows = [], []  # rows: (relative path, label, is_train)
    folders = [f"{i + 1:03d}.{_safe(c)}" for i, c in enumerate(classes)]
    for split in ("train", "test"):
        samples = splits[split].samples[:limit] if limit else splits[split].samples
        for position, (obj_path, label) in enumerate(samples):
            index = len(rows)
            rel = f"{folders[label]}/{index + 1:05d}_{_safe(Path(obj_path).stem)}.{'jpg' if opts.quality else 'png'}"
            rows.append((rel, label, split == "train"))
            jobs.append((index, objects, split, position, backgrounds, out / "images" / rel, opts))
    results: list = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc="scenes", unit="img", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for index, box, digest in pool.imap_unordered(_build_one, jobs, chunksize=16):
                results[index] = (box, digest)
                bar.update(1)
    else:
        for job in jobs:
            index, box, digest = _build_one(job)
            results[index] = (box, digest)
            bar.update(1)
    bar.close()
    _write_tables(out, classes, folders, rows, [r[0] for r in results])
    whole = hashlib.sha256("".join(r[1] for r in results).encode()).hexdigest()
    manifest = {"kind": "scenes", "objects": str(objects), "backgrounds": str(backgrounds),
                "options": asdict(opts), "images": {"train": sum(r[2] for r in rows),
                                                     "test": sum(not r[2] for r in rows)},
                "classes": len(classes), "pixels_sha256": whole}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_tables(out: Path, classes, folders, rows, boxes) -> None:
    def table(name: str, lines) -> None:
        (out / name).write_text("".join(f"{i + 1} {v}\n" for i, v in enumerate(lines)))

    table("classes.txt", folders)
    table("images.txt", [r[0] for r in rows])
    table("image_class_labels.txt", [r[1] + 1 for r in rows])
    table("train_test_split.txt", [int(r[2]) for r in rows])
    table("bounding_boxes.txt", [f"{x:.1f} {y:.1f} {w:.1f} {h:.1f}" for x, y, w, h in boxes])
