"""Attention-guided cropping and dropping of images (WS-BAN / WS-DAN data augmentation), batched.

Hu & Qi, "See Better Before Looking Closer: Weakly Supervised Data Augmentation Network for
Fine-Grained Visual Classification", arXiv 1901.09891 (section 3.2), and its predecessor WS-BAN,
arXiv 1808.02152.

* **Map choice** (:func:`select_attention`): the average of the M maps (WS-BAN's crop, and the object
  map used at test time) or one map per image drawn with probability ∝ sqrt(mean activation) (WS-DAN).
* **Cropping** (:func:`attention_boxes`, :func:`crop_resize`, :func:`attention_crop`): the chosen map
  is upsampled to the image size and thresholded at θ_c·max (θ_c ~ U(0.4, 0.6) in training, 0.1 at
  test time); the bounding box of the mask, padded by a fraction of the image side, is cut out and
  resized back to the image size.
* **Dropping** (:func:`attention_drop_mask`, :func:`attention_drop`): pixels where the upsampled map is
  at least θ_d·max (θ_d ~ U(0.2, 0.5)) are set to 0, which for normalized images is the mean colour.

Everything is batched: the boxes come from row/column reductions of the masks, the crops from one
``torchvision.ops.roi_align`` call, and no value goes back to the host, so there is no per-image Python
loop and no GPU synchronization. A map that carries no localization (all zeros, constant, not finite,
or a threshold no pixel reaches) falls back to the whole image for cropping and to no drop at all,
where the PyTorch re-implementations crash on an empty ``nonzero()``. Random draws use torch's global
generator of the maps' device, so a seeded run is reproducible.

Boxes are ``(x0, y0, x1, y1)`` in input pixels with pixel *edges* as coordinates: a mask spanning
columns i..j gives x0 = i and x1 = j + 1, so the box covers every masked pixel; ``roi_align`` with
``aligned=True`` samples on the same convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def uniform_thresholds(batch: int, low: float, high: float, device: torch.device | str) -> torch.Tensor:
    """``batch`` thresholds drawn from U(low, high) with the global generator of ``device``."""
    return low + (high - low) * torch.rand(batch, device=device)


def select_attention(attentions: torch.Tensor, mode: str = "mean", num: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the map(s) that guide cropping and dropping.

    Args:
        attentions: B×M×h×w non-negative attention maps.
        mode: ``"mean"``: the average of the M maps (WS-BAN; the object map at test time);
            ``"sample"``: per image, ``num`` maps drawn independently (with replacement) with probability
            ∝ sqrt(mean activation of the map) (WS-DAN); ``"max"``: the most probable map under that
            distribution (a deterministic stand-in for ``"sample"``, e.g. for pictures).
        num: maps to return per image.

    Returns:
        B×num×h×w maps and B×num indices of the chosen maps (-1 for the mean).
    """
    b, m = attentions.shape[:2]
    if mode == "mean":
        mean = attentions.mean(1, keepdim=True)  # B×1×h×w
        return mean.expand(b, num, *mean.shape[2:]), torch.full((b, num), -1, dtype=torch.long,
                                                                 device=attentions.device)
    if mode not in ("sample", "max"):
        raise ValueError(f"mode must be mean, sample or max, got {mode!r}")
    weights = attentions.float().mean((2, 3)).clamp_min(0).sqrt()  # B×M
    weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0)
    # an image whose maps are all zero draws uniformly instead of making multinomial fail
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
    if mode == "max":
        index = weights.argmax(1, keepdim=True).expand(b, num)
    else:
        index = torch.multinomial(weights, num, replacement=True)  # B×num
    chosen = attentions.gather(1, index[:, :, None, None].expand(-1, -1, *attentions.shape[2:]))
    return chosen, index


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×h×w or B×1×h×w maps → B×H×W float32, bilinear, as the official code resizes them."""
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"expected B×h×w or B×1×h×w maps, got {tuple(maps.shape)}")
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _localizes(peak: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """B bools: the map has a finite, positive peak above its minimum (so it points somewhere)."""
    return (peak > low) & (peak > 0) & torch.isfinite(peak) & torch.isfinite(low)


def _thresholds(theta: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=torch.float32, device=device)
    return theta.expand(batch) if theta.ndim == 0 else theta.reshape(batch)


def attention_boxes(maps: torch.Tensor, size: tuple[int, int], theta: float | torch.Tensor,
                    padding: float = 0.1) -> torch.Tensor:
    """Bounding boxes of the thresholded maps, in image pixels.

    Args:
        maps: B×h×w or B×1×h×w attention maps (one per image).
        size: (H, W) of the image the boxes refer to; the maps are upsampled to it.
        theta: the threshold as a fraction of each map's maximum: a float, or B values.
        padding: added on every side, as a fraction of the image height (top/bottom) and width.

    Returns:
        B×4 float32 boxes ``(x0, y0, x1, y1)`` clamped to the image; the whole image
        ``(0, 0, W, H)`` for a map that is all zeros, constant, not finite or has no pixel at the threshold.
    """
    h, w = size
    a = _upsample(maps, size)  # B×H×W
    b = a.shape[0]
    peak = a.amax((1, 2))
    low = a.amin((1, 2))
    mask = a >= (_thresholds(theta, b, a.device) * peak)[:, None, None]  # B×H×W
    rows, cols = mask.any(2), mask.any(1)  # B×H, B×W
    ys = torch.arange(h, device=a.device)
    xs = torch.arange(w, device=a.device)
    # first and last True of each row/column profile, without nonzero() (which syncs and loops)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()  # B×4
    pad = torch.tensor([-padding * w, -padding * h, padding * w, padding * h], device=a.device)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32, device=a.device)
    boxes = torch.minimum((boxes + pad).clamp_min(0), limit)
    valid = rows.any(1) & _localizes(peak, low)
    full = torch.tensor([0.0, 0.0, w, h], device=a.device).expand(b, 4)
    return torch.where(valid[:, None], boxes, full)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Cut ``boxes`` out of ``images`` and resize each to ``size``, in one batched call.

    ``roi_align`` with ``aligned=True`` samples bilinearly at the centres of an output grid laid over
    the box (pixel-edge coordinates, like ``F.interpolate(..., align_corners=False)``); with an
    adaptive sampling ratio a box larger than ``size`` is averaged rather than aliased.

    Args:
        images: B×C×H×W.
        boxes: B×4 ``(x0, y0, x1, y1)`` in pixels, one box per image.
        size: output (H', W'); the input size by default.

    Returns:
        B×C×H'×W' crops, in the images' dtype.
    """
    b = images.shape[0]
    size = tuple(size) if size is not None else tuple(images.shape[-2:])
    index = torch.arange(b, device=images.device, dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.to(device=images.device, dtype=torch.float32)], 1)  # B×5
    crops = roi_align(images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops.to(images.dtype)


def attention_crop(images: torch.Tensor, maps: torch.Tensor, theta: float | torch.Tensor,
                   padding: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention cropping: crop each image around its thresholded map and resize it to the input size.

    Args:
        images: B×C×H×W.
        maps: B×h×w or B×1×h×w, one map per image.
        theta: threshold as a fraction of each map's maximum (float or B values).
        padding: box padding as a fraction of the image side.

    Returns:
        B×C×H×W crops and the B×4 boxes ``(x0, y0, x1, y1)`` they were cut from.
    """
    boxes = attention_boxes(maps, images.shape[-2:], theta, padding)
    return crop_resize(images, boxes), boxes


def attention_drop_mask(maps: torch.Tensor, size: tuple[int, int], theta: float | torch.Tensor) -> torch.Tensor:
    """The region attention dropping erases: pixels where the upsampled map is at least θ_d·max.

    Args:
        maps: B×h×w or B×1×h×w, one map per image.
        size: (H, W) of the image.
        theta: threshold as a fraction of each map's maximum (float or B values).

    Returns:
        B×H×W bool, True where the image is dropped; all False for a map that is all zeros, constant or
        not finite (erasing the whole image would teach nothing).
    """
    a = _upsample(maps, size)  # B×H×W
    peak = a.amax((1, 2))
    low = a.amin((1, 2))
    valid = _localizes(peak, low)
    mask = a >= (_thresholds(theta, a.shape[0], a.device) * peak)[:, None, None]
    return mask & valid[:, None, None]


def attention_drop(images: torch.Tensor, maps: torch.Tensor,
                   theta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention dropping: zero the pixels of each image where its map is at least θ_d·max.

    Args:
        images: B×C×H×W (normalized, so 0 is the mean colour, as in the official code).
        maps: B×h×w or B×1×h×w, one map per image.
        theta: threshold as a fraction of each map's maximum (float or B values).

    Returns:
        B×C×H×W images with the region erased and the B×H×W bool mask of that region.
    """
    mask = attention_drop_mask(maps, images.shape[-2:], theta)
    return images * (~mask)[:, None].to(images.dtype), mask
