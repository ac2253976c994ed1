"""Attention-based non-uniform sampler (Zheng et al., "Looking for the Devil in the Details", CVPR 2019).

Resamples an image so that regions of high attention get more output pixels. The sampling is separable:
the attention map (upsampled to the image size) is reduced to a marginal per axis — the maximum over the
other axis, which the paper finds more robust than the sum — each marginal is normalized to a density over
the input pixels, and its cumulative distribution is inverted at uniform quantiles, so output column j
reads input column F⁻¹((j + ½)/out). The outer product of the two axis mappings is the sampling grid and
the image is read with bilinear interpolation.

As in the official code (``dense=4``, 5 iterations), the density of each axis is capped at ``dense`` times
the uniform density and the clipped mass is spread uniformly over all input pixels, repeated ``iters``
times; a last step gives the remaining excess only to pixels below the cap, in proportion to their room,
so that no input region is ever magnified more than ``dense`` times the uniform rate (the official loop can
overshoot the cap by its last redistribution).

Everything is batched tensor algebra (max, cumsum, a comparison count for the inverse CDF, gather,
grid_sample): no loop over the batch and no host synchronization, so it runs on CPU and GPU alike and
exports to ONNX. No gradient reaches the attention (the official operator returns zero for it); the
image still receives the gradient of bilinear sampling.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SampleResult(NamedTuple):
    """Output of :func:`attention_sample`.

    Attributes:
        images: B×C×out_h×out_w resampled images.
        grid: B×out_h×out_w×2 sampling grid in ``grid_sample`` coordinates ((x, y) in [-1, 1],
            ``align_corners=False``): output pixel (i, j) reads the input at ``grid[b, i, j]``.
    """

    images: torch.Tensor
    grid: torch.Tensor


def cap_density(p: torch.Tensor, dense: float, iters: int) -> torch.Tensor:
    """Cap a density at ``dense`` times uniform and redistribute the clipped mass.

    Args:
        p: B×n densities, each row non-negative and summing to 1.
        dense: the cap as a multiple of the uniform density 1/n (≥ 1); 0 disables the cap.
        iters: rounds of clip-then-spread-uniformly (the official code's loop).

    Returns:
        B×n densities summing to 1, none above ``dense / n``.
    """
    if dense <= 0:
        return p
    n = p.shape[-1]
    cap = dense / n
    for _ in range(iters):
        p = p.clamp_max(cap)
        p = p + (1.0 - p.sum(-1, keepdim=True)) / n
    # the uniform spread above can lift clipped bins past the cap again; spreading the last excess in
    # proportion to each bin's room keeps every bin at or below it (room sums to dense - mass ≥ excess)
    p = p.clamp_max(cap)
    room = cap - p
    excess = 1.0 - p.sum(-1, keepdim=True)
    return p + room * (excess / room.sum(-1, keepdim=True).clamp_min(1e-12))


def inverse_cdf(p: torch.Tensor, out: int) -> torch.Tensor:
    """Input coordinates at which a piecewise-uniform density reaches the quantiles (j + ½)/out.

    Input pixel k covers [k, k + 1) in pixel-edge units and holds mass ``p[:, k]``; the CDF is linear
    inside each pixel. A uniform density gives the coordinates of plain bilinear resizing.

    Args:
        p: B×n positive densities summing to 1.
        out: number of output samples.

    Returns:
        B×out increasing coordinates in [0, n] (pixel-edge units).
    """
    b, n = p.shape
    cdf = torch.cat([p.new_zeros(b, 1), p.cumsum(-1)], dim=1)  # B×(n+1), cdf[:, k] = mass left of edge k
    cdf = cdf / cdf[:, -1:]
    u = (torch.arange(out, device=p.device, dtype=p.dtype) + 0.5) / out  # out
    # the pixel holding quantile u is the number of interior edges at or below it (searchsorted written
    # as a comparison count so that every exporter knows it): B×out×(n-1) → B×out in [0, n-1]
    idx = (cdf[:, None, 1:-1] <= u[None, :, None]).sum(-1)
    lo = cdf.gather(1, idx)
    hi = cdf.gather(1, idx + 1)
    return idx.to(p.dtype) + (u[None] - lo) / (hi - lo).clamp_min(1e-12)


def _density(marginal: torch.Tensor, power: float) -> torch.Tensor:
    # B×n non-negative scores → densities; a floor relative to the peak keeps every pixel reachable and
    # turns an all-zero map into the uniform density
    m = marginal.clamp_min(0)
    m = m / m.amax(-1, keepdim=True).clamp_min(1e-12)
    if power != 1.0:
        m = m.pow(power)
    m = m + 1e-6
    return m / m.sum(-1, keepdim=True)


def attention_sample(images: torch.Tensor, attention: torch.Tensor, out_size: int | tuple[int, int],
                     dense: float = 4.0, iters: int = 5, power: float = 1.0) -> SampleResult:
    """Resample images non-uniformly so that high-attention regions get more output pixels.

    Args:
        images: B×C×H×W images.
        attention: B×h×w non-negative attention maps, any h and w (bilinearly upsampled to H×W, as the
            official code does, before the per-axis max). Negative values count as zero. Detached.
        out_size: side of the square output, or (out_h, out_w).
        dense: the largest magnification of any region, as a multiple of the uniform rate (official 4);
            0 disables the cap.
        iters: rounds of cap-and-redistribute (official 5).
        power: raise the normalized marginals to this power (2 reproduces the official code's squared
            structure map, since squaring commutes with the per-axis max of a non-negative map).

    Returns:
        :class:`SampleResult` with ``images`` (B×C×out_h×out_w) and ``grid`` (B×out_h×out_w×2).
    """
    if images.ndim != 4 or attention.ndim != 3 or attention.shape[0] != images.shape[0]:
        raise ValueError(f"attention_sample expects images B×C×H×W and attention B×h×w with the same B, got "
                         f"{tuple(images.shape)} and {tuple(attention.shape)}")
    if 0 < dense < 1:
        raise ValueError(f"dense must be at least 1 (the uniform rate) or 0 to disable the cap, got {dense}")
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    b, _, h, w = images.shape
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        att = F.interpolate(attention.detach().float()[:, None], size=(h, w), mode="bilinear",
                            align_corners=False)[:, 0]  # B×H×W
        px = cap_density(_density(att.amax(1), power), dense, iters)  # B×W: max over rows
        py = cap_density(_density(att.amax(2), power), dense, iters)  # B×H: max over columns
        gx = inverse_cdf(px, ow) * (2.0 / w) - 1.0  # B×out_w, normalized x of each output column
        gy = inverse_cdf(py, oh) * (2.0 / h) - 1.0  # B×out_h, normalized y of each output row
        grid = torch.stack([gx[:, None, :].expand(b, oh, ow), gy[:, :, None].expand(b, oh, ow)], dim=-1)
    sampled = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)  # B×C×out_h×out_w
    return SampleResult(sampled, grid)
