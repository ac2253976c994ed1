"""An opt-in cache of decoded images, shared by the loader workers without copying.

Decoding a JPEG and resizing it costs most of a training image's preprocessing (about 1.2 ms of CPU per
CUB image at 224 px, against 0.2 ms for the rest). The cache keeps each image as it leaves the first
transform step (the resize) in one shared-memory buffer of ``uint8`` pixels, allocated before the loader
starts its workers, so every worker reads and fills the same memory. The first epoch decodes and fills;
later epochs skip the decoding and resizing. Its size is known before anything is decoded (from the
image headers), so a cache that would not fit in ``limit_gb`` is refused at the start, not halfway.
The images are bit-identical to the uncached ones: the same resize runs once, and the random steps
after it run every epoch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import BadImageError, LookcloserError


def resized_size(width: int, height: int, size) -> tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(size)``: an int sets the short side (the long side is
    scaled and truncated), a pair is ``(height, width)``."""
    if isinstance(size, (tuple, list)):
        if len(size) == 1:
            size = size[0]
        else:
            return int(size[1]), int(size[0])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size), int(int(size) * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _header_size(path: str) -> tuple[int, int] | None:
    """An image's ``(width, height)`` as :func:`lookcloser.data.load_image` returns it (EXIF rotation
    applied), read from its header alone; None when it cannot be read (or is no regular file)."""
    from .files import not_a_file

    if not_a_file(path) is not None:
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90°: the loaded image is h × w
                w, h = h, w
            return w, h
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


class DecodedCache:
    """Decoded, resized images of a data set in shared memory.

    Args:
        paths: the image files, in the data set's order.
        load: ``load(index)`` returns the RGB PIL image of a sample (raises BadImageError).
        resize: the first transform step (a ``torchvision.transforms.Resize``).
        limit_gb: the most memory the cache may take.
        name: what the cache holds, for messages.
        sizes: every image's ``(width, height)`` where the data set knows them without reading files.
    """

    def __init__(self, paths: list[str], load: Callable[[int], Image.Image], resize, limit_gb: float, name: str,
                 sizes: list[tuple[int, int]] | None = None):
        self.load, self.resize = load, resize
        # the images' (width, height): given (a generated data set knows them) or read from the headers
        sizes = list(sizes) if sizes is not None else [_header_size(p) for p in paths]
        self.original = [s or (0, 0) for s in sizes]
        shapes = [resized_size(w, h, resize.size)[::-1] if s else (0, 0) for s, (w, h) in zip(sizes, self.original)]
        nbytes = np.array([h * w * 3 for h, w in shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(nbytes)])
        self.shapes = shapes
        total = int(self.offsets[-1])
        if total > limit_gb * 2**30:
            raise LookcloserError(
                f"caching the decoded images of {name} needs {total / 2**30:.1f} GB, over the cache limit of "
                f"{limit_gb:g} GB; raise --cache-gb, lower --image-size, or train without --cache")
        self.nbytes = total
        self.pixels = torch.empty(max(total, 1), dtype=torch.uint8).share_memory_()
        self.filled = torch.zeros(len(paths), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.shapes)

    def get(self, index: int, array: bool = False) -> tuple[Image.Image | np.ndarray, tuple[int, int]]:
        """The resized image of sample ``index`` (a PIL image, or with ``array`` an H×W×3 ``uint8`` array
        that views the cache) and the original ``(width, height)``; decodes and stores it the first time
        (raises BadImageError for an unreadable file)."""
        h, w = self.shapes[index]
        start = int(self.offsets[index])
        if self.filled[index]:
            arr = self.pixels[start:start + h * w * 3].numpy().reshape(h, w, 3)
            return (arr if array else Image.fromarray(arr)), self.original[index]
        img = self.load(index)
        original = img.size
        out = self.resize(img)
        if h and out.size == (w, h) and original == self.original[index]:
            self.pixels[start:start + h * w * 3] = torch.from_numpy(np.array(out, dtype=np.uint8).reshape(-1))
            self.filled[index] = 1  # after the pixels: a reader never sees a half-written image
        return (np.asarray(out) if array else out), original


class ArraySteps:
    """The steps after the resize, run on the cached ``uint8`` array instead of a PIL image, where every step
    is a crop, a flip, ``ToTensor`` and ``Normalize``, or ``PILToTensor`` (the uint8 path; the training and
    evaluation transforms without colour
    jitter, rotation or PCA lighting): the same random draws in the same order as torchvision's, the same
    arithmetic, so the tensors are bit-identical, at a fraction of the cost (no PIL image, no transposing
    copy: the result keeps the cache's H×W×C layout, the channels-last layout the model runs in).
    ``build`` returns None for any other transform, which then runs as it is."""

    def __init__(self, steps: list):
        self.steps = steps

    @classmethod
    def build(cls, compose):
        from torchvision import transforms as T

        steps = list(getattr(compose, "transforms", []))
        for step in steps:
            if isinstance(step, T.RandomCrop) and (step.padding is not None or step.pad_if_needed):
                return None
            if not isinstance(step, (T.RandomCrop, T.CenterCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize,
                                     T.PILToTensor)):
                return None
        if not steps:
            return None
        if isinstance(steps[-1], T.PILToTensor):  # the uint8 path: normalized on the device
            return cls(steps)
        if not isinstance(steps[-1], T.Normalize) or not any(isinstance(s, T.ToTensor) for s in steps):
            return None
        return cls(steps)

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        from torchvision import transforms as T

        x = torch.from_numpy(arr) if arr.flags.writeable else torch.from_numpy(arr.copy())  # H×W×3 uint8
        for step in self.steps:
            h, w = x.shape[:2]
            if isinstance(step, T.RandomCrop):
                th, tw = step.size
                top, left, _, _ = T.RandomCrop.get_params(torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, h, w),
                                                          (th, tw))  # draws as torchvision does
                x = x[top:top + th, left:left + tw]
            elif isinstance(step, T.CenterCrop):
                th, tw = step.size
                top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
                x = x[top:top + th, left:left + tw]
            elif isinstance(step, T.RandomHorizontalFlip):
                if torch.rand(1) < step.p:
                    x = x.flip(1)
            elif isinstance(step, T.PILToTensor):
                x = x.contiguous()  # uint8, as the PIL path's PILToTensor
            elif isinstance(step, T.ToTensor):
                x = x.contiguous().to(torch.float32).div_(255)  # still H×W×C: every pass below is contiguous
            else:  # Normalize, as torchvision's: subtract, then divide, per channel
                x = x.sub_(torch.as_tensor(step.mean, dtype=x.dtype)).div_(torch.as_tensor(step.std, dtype=x.dtype))
        return x.permute(2, 0, 1)  # C×H×W of H×W×C memory: the channels-last layout the model runs in

def check_resize(transform):
    """The first step of ``transform`` if it is a resize the cache can hold (else a clear error), and the rest."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not steps or not isinstance(steps[0], T.Resize):
        raise LookcloserError("the decoded-image cache needs a transform that starts with a Resize "
                              "(lookcloser.data.build_transform makes one); train without --cache")
    return steps[0], T.Compose(steps[1:])


__all__ = ["ArraySteps", "BadImageError", "DecodedCache", "check_resize", "resized_size"]
