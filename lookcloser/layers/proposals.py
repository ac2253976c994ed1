"""Patch proposals: boxes around the peaks of an activation map, crops, and precomputed boxes.

RRA (Shroff et al., arXiv 2005.10979) classifies a patch of the image with a second network. The paper
takes its patches from another weakly supervised method and the official code ships precomputed boxes
for CUB only; these blocks let any data set work:

* :func:`peak_proposals`: top-k boxes around the peaks of a class activation / attention map, with
  non-maximum suppression, a box side relative to the image, shifted to lie inside it. Batched: the
  loop runs over the k picks, never over the batch. No randomness, so it is deterministic.
* :func:`crop_patches`: crop boxes out of a batch and resize them (``roi_align``), all at once.
* :func:`nested_boxes`: progressively tighter boxes around each box (RRA's "refine" mode).
* The official box format and a JSON file for a whole data set (:class:`BoxFile`).

Box conventions: boxes are ``[x0, y0, x1, y1]`` floats in continuous pixel coordinates of the image the
model sees, pixel ``i`` spanning ``[i, i + 1]`` (so ``[0, 0, W, H]`` is the whole image and
``roi_align(aligned=True)`` samples exactly the pixels inside).

Official format: per image a list of ``[y0, y1, x0, x1, label]`` integers in the coordinates of the
image resized (squashed) to 448×448; the official loader crops ``image[:, y0:y1, x0:x1]``, i.e. pixels
``y0 .. y1 - 1``, which is the continuous box ``[x0, y0, x1, y1]`` in that 448×448 frame.

Box file (``.json``), one for a whole data set::

    {"format": "lookcloser-boxes", "version": 1, "source_size": 448,
     "images": {"<image key>": [[y0, y1, x0, x1, label], ...], ...}}

An image key is the image's path relative to the data set root (``001.Black_footed_Albatross/x.jpg``;
a longer or absolute path also matches by its trailing components) or its index in the split as a
string (``"0"``, ``"1"``, ...). ``source_size`` is the side of the square frame of the coordinates.
:func:`convert_official_npy` writes such a file from the official ``.npy`` arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from ..data.transforms import view_geometry
from ..errors import LookcloserError

__all__ = [
    "BoxFile",
    "DatasetBoxes",
    "Proposals",
    "box_iou",
    "convert_official_npy",
    "crop_patches",
    "nested_boxes",
    "official_to_view",
    "official_to_xyxy",
    "peak_proposals",
]

OFFICIAL_SIZE = 448


class Proposals(NamedTuple):
    """Proposed boxes for a batch, best first.

    Attributes:
        boxes: B×k×4 ``[x0, y0, x1, y1]`` in image pixels.
        scores: B×k map value at each box centre, the map scaled to [0, 1] per image; 0 where invalid.
        valid: B×k, False for slots NMS left empty (those repeat the first box).
    """

    boxes: Tensor
    scores: Tensor
    valid: Tensor


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes that broadcast against each other (``...×4`` each)."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


def _boxes_around(cy: Tensor, cx: Tensor, side_h: float, side_w: float, height: int, width: int) -> Tensor:
    """Boxes of a fixed side centred at (cy, cx), shifted (not shrunk) to lie inside the image."""
    # shifting keeps every patch the same size, so patches stay comparable in scale
    x0 = (cx - side_w / 2).clamp(0.0, width - side_w)
    y0 = (cy - side_h / 2).clamp(0.0, height - side_h)
    return torch.stack([x0, y0, x0 + side_w, y0 + side_h], -1)


@torch.no_grad()
def peak_proposals(cam: Tensor, image_size: int | Sequence[int], *, k: int = 4, box_size: float = 0.5,
                   nms_iou: float = 0.3, peaks_only: bool = True) -> Proposals:
    """Top-k boxes around the peaks of an activation map, with non-maximum suppression.

    Every position of the map is a candidate: a box of side ``box_size`` × the image side centred on
    it, shifted inside the image. Candidates are taken greedily by map value; each pick removes the
    candidates whose box overlaps it by more than ``nms_iou``. With ``peaks_only`` the local maxima
    (3×3) of the map come before every other position, so a broad bright blob cannot crowd out a
    second, weaker peak; other positions are used only when fewer than k peaks survive.

    Args:
        cam: B×h×w or B×1×h×w activation map (any scale; larger means more relevant).
        image_size: side (or ``(H, W)``) of the image the boxes refer to.
        k: number of boxes per image.
        box_size: box side as a fraction of the image side, in (0, 1].
        nms_iou: largest IoU allowed between two returned boxes.
        peaks_only: rank the map's local maxima before the other positions.

    Returns:
        :class:`Proposals`; slots that NMS leaves empty repeat the first box with ``valid`` False.
    """
    if not 0 < box_size <= 1:
        raise LookcloserError(f"box_size must be in (0, 1], got {box_size}")
    if cam.dim() == 4:
        cam = cam[:, 0]
    cam = cam.float()
    b, h, w = cam.shape
    height, width = _pair(image_size)
    # the map scaled to [0, 1] per image, so scores compare across images
    flat = cam.reshape(b, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    score = (flat - lo) / (hi - lo).clamp_min(1e-12)  # B×hw
    priority = score.clone()
    if peaks_only:
        is_peak = F.max_pool2d(cam[:, None], 3, stride=1, padding=1)[:, 0].reshape(b, -1) <= flat
        priority = priority + is_peak.float()  # peaks in [1, 2], the rest in [0, 1]
    # one candidate box per map position, centred on the position's cell in image pixels
    gy, gx = torch.meshgrid(torch.arange(h, device=cam.device, dtype=torch.float32),
                            torch.arange(w, device=cam.device, dtype=torch.float32), indexing="ij")
    cand = _boxes_around((gy.reshape(-1) + 0.5) * height / h, (gx.reshape(-1) + 0.5) * width / w,
                         box_size * height, box_size * width, height, width)  # hw×4
    boxes, scores, valid = [], [], []
    rows = torch.arange(b, device=cam.device)
    for _ in range(k):
        best, idx = priority.max(1)  # B
        ok = best > float("-inf")
        box = cand[idx]  # B×4
        boxes.append(box)
        scores.append(torch.where(ok, score[rows, idx], torch.zeros_like(best)))
        valid.append(ok)
        # suppress the pick and every candidate overlapping it too much
        over = box_iou(box[:, None], cand[None]) > nms_iou  # B×hw
        over[rows, idx] = True
        priority = priority.masked_fill(over, float("-inf"))
    boxes_t, scores_t, valid_t = torch.stack(boxes, 1), torch.stack(scores, 1), torch.stack(valid, 1)  # B×k(×4)
    boxes_t = torch.where(valid_t[..., None], boxes_t, boxes_t[:, :1].expand_as(boxes_t))
    return Proposals(boxes_t, scores_t, valid_t)


def nested_boxes(boxes: Tensor, scales: Sequence[float] | Tensor) -> Tensor:
    """Boxes shrunk about their centres: one per scale.

    Args:
        boxes: ...×4 ``[x0, y0, x1, y1]``.
        scales: T side multipliers (1 keeps the box).

    Returns:
        ...×T×4.
    """
    s = torch.as_tensor(scales, dtype=boxes.dtype, device=boxes.device)  # T
    c = (boxes[..., :2] + boxes[..., 2:]) / 2  # ...×2
    half = (boxes[..., 2:] - boxes[..., :2]) / 2
    half = half[..., None, :] * s[:, None]  # ...×T×2
    return torch.cat([c[..., None, :] - half, c[..., None, :] + half], -1)


def crop_patches(images: Tensor, boxes: Tensor, size: int | Sequence[int], *, sampling_ratio: int = -1) -> Tensor:
    """Crop boxes out of a batch and resize them, in one ``roi_align`` call.

    Bilinear samples averaged within each output cell (``sampling_ratio=-1`` adapts the number to the
    box size), so shrinking a large box does not alias.

    Args:
        images: B×C×H×W.
        boxes: B×4 or B×N×4 ``[x0, y0, x1, y1]`` in pixels of ``images``.
        size: output side or ``(h, w)``.

    Returns:
        B×C×h×w for B×4 boxes, (B·N)×C×h×w (image-major) for B×N×4.
    """
    b = images.shape[0]
    bx = boxes.reshape(b, -1, 4).to(images.dtype)
    n = bx.shape[1]
    idx = torch.arange(b, device=images.device, dtype=images.dtype).repeat_interleave(n)[:, None]
    rois = torch.cat([idx, bx.reshape(-1, 4)], 1)  # (B·N)×5
    return roi_align(images, rois, output_size=_pair(size), spatial_scale=1.0, sampling_ratio=sampling_ratio,
                     aligned=True)


# ---- the official box format ----------------------------------------------------------------

def _rows(rows) -> Tensor:
    t = torch.as_tensor(np.asarray(rows, dtype=np.float64))  # float64: integer pixel rows map exactly
    if t.dim() == 1:
        t = t[None]
    if t.shape[-1] not in (4, 5):
        raise LookcloserError(f"official boxes are rows of [y0, y1, x0, x1, label], got shape {tuple(t.shape)}")
    return t


def official_to_xyxy(rows, size: int | Sequence[int], *, source: int = OFFICIAL_SIZE) -> tuple[Tensor, Tensor]:
    """Map official rows onto the whole image resized (squashed) to ``size``, as the official loader does.

    Args:
        rows: N×5 (or ...×5) ``[y0, y1, x0, x1, label]`` in ``source``×``source`` pixels (label optional).
        size: side or ``(H, W)`` of the resized image.
        source: side of the frame of the coordinates (448 in the official files).

    Returns:
        ``(boxes ...×4 [x0, y0, x1, y1] clamped inside the image, labels ...)``; labels are -1 when absent.
    """
    t = _rows(rows)
    height, width = _pair(size)
    y0, y1, x0, x1 = t.unbind(-1)[:4]
    boxes = torch.stack([x0 * width, y0 * height, x1 * width, y1 * height], -1) / source
    boxes = _clamp(boxes, height, width).float()
    labels = t[..., 4].long() if t.shape[-1] == 5 else torch.full(t.shape[:-1], -1, dtype=torch.long)
    return boxes, labels


def official_to_view(rows, original_size: Sequence[int], image_size: int, *, resize_ratio: float = 1.143,
                     source: int = OFFICIAL_SIZE, squash: bool = False) -> tuple[Tensor, Tensor]:
    """Map official rows onto the toolkit's evaluation view of an image (resize short side, center crop).

    The official coordinates refer to the original image squashed to ``source``×``source``; the toolkit
    resizes the short side to ``round(image_size * resize_ratio)`` and center-crops ``image_size``
    (:func:`lookcloser.data.build_transform` with ``train=False``), or with ``squash`` resizes the whole
    image to ``image_size``×``image_size`` (the official view, scaled). Boxes are clamped to the view.

    Args:
        rows: N×5 ``[y0, y1, x0, x1, label]``.
        original_size: ``(width, height)`` of the image file (PIL's ``Image.size``).
        image_size: side of the square view.
        resize_ratio: as in the data configuration.
        source: side of the frame of the coordinates.
        squash: the view is the whole image squashed to a square.

    Returns:
        ``(boxes N×4 [x0, y0, x1, y1], labels N)``.
    """
    if squash:
        return official_to_xyxy(rows, image_size, source=source)
    w1, h1, left, top = view_geometry(original_size, image_size, resize_ratio)
    boxes, labels = official_to_xyxy(rows, (h1, w1), source=source)
    boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)  # exact: integer offsets
    return _clamp(boxes, image_size, image_size), labels


def _clamp(boxes: Tensor, height: int, width: int) -> Tensor:
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


class BoxFile:
    """Precomputed patch boxes for a whole data set (the JSON format in this module's docstring).

    Args:
        path: the ``.json`` file.
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        if not p.is_file():
            raise LookcloserError(f"box file {p} does not exist; write one with convert_official_npy or by hand")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LookcloserError(f"box file {p} is not valid JSON ({e}); see lookcloser.layers.proposals") from e
        if not isinstance(d, dict) or not isinstance(d.get("images"), dict):
            raise LookcloserError(f"box file {p} must hold a mapping with an 'images' mapping of key -> rows")
        self.path = p
        self.source_size = int(d.get("source_size", OFFICIAL_SIZE))
        self.images: dict[str, list] = d["images"]
        # trailing path components -> key, so absolute or differently rooted paths still match
        self._tails: dict[str, str] = {}
        for key in self.images:
            parts = Path(key).parts
            for n in (2, 1):
                if len(parts) >= n:
                    self._tails.setdefault("/".join(parts[-n:]), key)

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, path: str | None = None, index: int | None = None) -> np.ndarray:
        """The N×5 official rows of one image, found by path (exact, then trailing components) or index."""
        key = None
        if path is not None:
            path = str(path)
            if path in self.images:
                key = path
            else:
                parts = Path(path).parts
                key = self._tails.get("/".join(parts[-2:])) or self._tails.get(parts[-1] if parts else "")
        if key is None and index is not None and str(index) in self.images:
            key = str(index)
        if key is None:
            raise LookcloserError(f"box file {self.path} has no boxes for image {path if path is not None else index}; "
                                  "regenerate it for this data set")
        return np.asarray(self.images[key], dtype=np.float64).reshape(-1, 5)

    def batch(self, paths: Sequence[str], size: int | Sequence[int]) -> Tensor:
        """Boxes of several images on the whole image resized to ``size`` (the official view).

        Images with fewer boxes than the most in the batch repeat their first box.

        Returns:
            B×N×4 ``[x0, y0, x1, y1]``.
        """
        per = [official_to_xyxy(self.rows(p), size, source=self.source_size)[0] for p in paths]
        n = max(len(x) for x in per)
        return torch.stack([torch.cat([x, x[:1].expand(n - len(x), 4)]) for x in per])


def convert_official_npy(npy: str | Path, keys: Sequence[str], out: str | Path, *,
                         source: int = OFFICIAL_SIZE) -> Path:
    """Write a box file from an official ``Patches/*_patches.npy`` array.

    Args:
        npy: N×P×5 array (official: P = 10 boxes per image), in the image order of ``keys``.
        keys: one key per image (the official order is torchvision ImageFolder's: sorted class
            folders, sorted files; pass the paths relative to the image folder in that order).
        out: the ``.json`` to write.
        source: side of the frame of the coordinates.
    """
    arr = np.load(npy)
    if arr.ndim != 3 or arr.shape[-1] != 5:
        raise LookcloserError(f"{npy} should hold an N×P×5 array of [y0, y1, x0, x1, label], got {arr.shape}")
    if len(arr) != len(keys):
        raise LookcloserError(f"{npy} has boxes for {len(arr)} images but {len(keys)} keys were given")
    images = {str(k): a.astype(int).tolist() for k, a in zip(keys, arr)}
    out = Path(out)
    out.write_text(json.dumps({"format": "lookcloser-boxes", "version": 1, "source_size": source, "images": images}))
    return out


class DatasetBoxes:
    """Per-sample ``{"boxes": N×4}`` of a data set on its evaluation view, padded to the file's largest count.

    Args:
        box_file: the boxes.
        dataset: the data set whose ``samples`` name the images (looked up by path, then by index).
        preprocess: the evaluation view (``image_size``, ``resize_ratio``, ``squash``).
    """

    def __init__(self, box_file: BoxFile, dataset, preprocess: dict):
        self.box_file, self.dataset = box_file, dataset
        self.image_size, self.resize_ratio = preprocess["image_size"], preprocess.get("resize_ratio", 1.143)
        self.squash = bool(preprocess.get("squash", False))
        self.n = max((len(np.asarray(r).reshape(-1, 5)) for r in box_file.images.values()), default=1)

    def __call__(self, index: int, original_size: tuple[int, int]) -> dict[str, Tensor]:
        rows = self.box_file.rows(self.dataset.samples[index][0], index)
        boxes, _ = official_to_view(rows, original_size, self.image_size, resize_ratio=self.resize_ratio,
                                    source=self.box_file.source_size, squash=self.squash)
        pad = boxes[:1].expand(self.n - len(boxes), 4)  # repeat the best box so batches stack
        return {"boxes": torch.cat([boxes, pad]).float()}
