"""The dataset type every reader returns, and robust image loading.

A reader turns a dataset's own annotation files into a list of ``(path, label)`` samples and a list of
class names; :class:`ImageDataset` does the rest. A file that cannot be decoded is never a crash and
never shifts a label: ``__getitem__`` returns a :class:`Skipped` marker and :func:`collate` drops it
from the batch while reporting its path, so the training loop can warn once per file and count them.
"""

from __future__ import annotations

import copy
import os
import random
import signal
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import BadImageError

from .files import IMAGE_EXTENSIONS  # noqa: E402,F401  (re-exported: where readers used to find it)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, CMYK, palette, RGBA/LA (composited on white) and 16-bit images are converted.

    Raises:
        BadImageError: the file is missing, unreadable, truncated or not an image.
    """
    from .files import not_a_file

    why = not_a_file(path)
    if why is not None:  # never opened: a named pipe would wait for a writer forever
        short = "no such file" if why == "missing" else f"it is {why}, not an image file"
        raise BadImageError(f"cannot read image {path} ({short}); replace or remove it") from OSError(short)
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode so truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot read image {path} ({e}); replace or remove the file") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit or float: rescale the full range of the file's type into 0..255
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class Skipped:
    """Marker returned for a sample whose image could not be read."""

    path: str
    reason: str


class Unreadable(str):
    """The path of an image that could not be read (a ``str``), with ``reason`` saying why."""

    reason: str

    def __new__(cls, path: str, reason: str = ""):
        obj = super().__new__(cls, path)
        obj.reason = reason
        return obj

    def __reduce__(self):  # survives the trip from a loader worker
        return (Unreadable, (str(self), self.reason))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch: the same on every machine and for any number of
    processes or loader workers, so a run's augmentation does not depend on how it is spread."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 7_919) % (2**63 - 1)


def seeded(transform, img, seed: int):
    """``transform(img)`` with every generator a transform may draw from seeded by ``seed`` (torch's, and
    python's and numpy's for timm's policies and erasing), the global random states left as they were."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return transform(img)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ImageDataset(torch.utils.data.Dataset):
    """A list of labelled image files with class names.

    Args:
        samples: ``(path, label)`` pairs; labels index into ``classes``.
        classes: class names, in label order.
        transform: callable applied to the RGB PIL image.
        name: a short description (format and root) used in messages.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable | None = None,
        name: str = "",
    ):
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        # optional per-sample tensors for the model, computed from (index, original (W, H)) before the
        # transform, e.g. precomputed patch boxes; they reach the model as keyword arguments
        self.extras: Callable[[int, tuple[int, int]], dict[str, torch.Tensor]] | None = None
        # each image's object box (x, y, width, height) in its own pixels, by path, where the data set has them
        self.object_boxes: dict[str, tuple[float, float, float, float]] | None = None
        self.cache = None  # a DecodedCache (see use_cache)
        self._after_cache = self._array_steps = None
        n = len(self.classes)
        bad = [y for _, y in self.samples if not 0 <= y < n]
        if bad:
            raise ValueError(f"{name}: label {bad[0]} is outside 0..{n - 1}")

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (raises BadImageError)."""
        return load_image(self.samples[index][0])

    def subset(self, indices: Sequence[int], name: str) -> "ImageDataset":
        """The same data set restricted to ``indices`` (in that order), with the same classes and transform
        and no decoded-image cache; ``load`` of the subset's sample i is ``load`` of the original's
        ``indices[i]``."""
        out = copy.copy(self)
        out.samples = [self.samples[i] for i in indices]
        out.name, out.cache, out._after_cache, out._array_steps = name, None, None, None
        return out

    def known_sizes(self) -> list[tuple[int, int]] | None:
        """Every image's ``(width, height)`` if known without reading the files (None: read the headers)."""
        return None

    def use_cache(self, limit_gb: float):
        """Keep the decoded images, as the transform's first step (the resize) leaves them, in shared memory
        (:class:`lookcloser.data.cache.DecodedCache`); call it after setting the transform and before the
        loader starts its workers. Returns the cache."""
        from .cache import ArraySteps, DecodedCache, check_resize

        resize, rest = check_resize(self.transform)
        self.cache = DecodedCache([p for p, _ in self.samples], self.load, resize, limit_gb, self.name or "the data",
                                  sizes=self.known_sizes())
        self._after_cache = rest
        self._array_steps = ArraySteps.build(rest)  # None: the rest runs on PIL images
        return self.cache

    def __getitem__(self, key):
        """Sample ``key``: an index, or ``(index, seed)`` to draw its random augmentation from ``seed`` (the
        training loop's sampler does this; the global random state is left as it was)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        transform = self.transform
        try:
            if self.cache is not None:
                # already resized: the rest of the transform follows, on the array where it can
                fast = self._array_steps
                img, original = self.cache.get(index, array=fast is not None)
                transform = fast or self._after_cache
            else:
                img = self.load(index)
                original = img.size
        except BadImageError as e:
            return Skipped(path, str(e.__cause__ or e))
        extras = self.extras(index, original) if self.extras is not None else {}
        if transform is not None:
            img = transform(img) if seed is None else seeded(transform, img, seed)
        return img, label, extras

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {self.num_classes} classes)"


class Indexed(torch.utils.data.Dataset):
    """A data set whose samples also carry their index (the extra ``index``), so that the readable ones can be
    matched to their files after a loader has dropped the unreadable ones."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if isinstance(item, Skipped):
            return item
        return (*item[:2], {**item[2], "index": torch.tensor(i)})


def leave_sigterm_to_the_reader(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: the worker ignores SIGTERM, so that a signal sent to the whole process
    group (a job scheduler's time limit, ``kill -- -PGID``) is handled by the process that reads the loader
    alone (training saves and stops; :class:`lookcloser.engine.trainer.Trainer`) instead of that process failing
    on a dead worker. The worker still ends when its reader shuts the loader down, or dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def collate(batch):
    """Stack the good samples and report the skipped ones.

    Returns:
        ``(images B×3×H×W, labels B, skipped paths, extras {name: B×...})``; B may be smaller than the
        requested batch. The skipped paths are :class:`Unreadable` strings that carry their reason.
    """
    good = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [Unreadable(b.path, b.reason) for b in batch if isinstance(b, Skipped)]
    if good:
        first = good[0][0]
        if first.ndim == 3 and first.stride(0) == 1 and first.shape[0] > 1:
            # channels-last images (the decoded-image cache's): stacked in that layout, a plain copy each
            images = torch.empty((len(good), *first.shape), dtype=first.dtype, memory_format=torch.channels_last)
            for i, g in enumerate(good):
                images[i].copy_(g[0])
        else:
            images = torch.stack([g[0] for g in good])
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        extras = {k: torch.stack([g[2][k] for g in good]) for k in good[0][2]}
    else:
        images = torch.empty(0)
        labels = torch.empty(0, dtype=torch.long)
        extras = {}
    return images, labels, skipped, extras
