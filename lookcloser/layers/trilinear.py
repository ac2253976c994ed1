"""Trilinear attention (Zheng et al., "Looking for the Devil in the Details", CVPR 2019, arXiv 1903.06150).

Each channel of a feature map X (C×HW) is turned into one attention map by relating it to every other
channel: M(X) = N2(N1(X)·Xᵀ)·X, where N1 is a softmax over the spatial axis of each channel and N2 a
softmax over each row of the C×C relation matrix. Every row of M is a convex combination of the rows of
X, so the C output channels are C part proposals with the scale of the features.
"""

from __future__ import annotations

import torch


def trilinear_attention(features: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Trilinear attention maps M(X) = N2(N1(X)·Xᵀ)·X.

    Computed in float32 even under autocast: the softmaxes of the C×C relation matrix saturate in bf16.

    Args:
        features: B×C×H×W feature map X.
        scale: multiplies X inside N1 only (the paper uses 1; the official code uses 7 "to obtain an
            appropriate scale for the input of the softmax").

    Returns:
        B×C×H×W float32 attention maps, one per channel.
    """
    if features.ndim != 4:
        raise ValueError(f"trilinear_attention expects B×C×H×W features, got shape {tuple(features.shape)}")
    b, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.float().reshape(b, c, h * w)  # B×C×HW
        n1 = torch.softmax(x * scale, dim=2)  # spatial softmax of each channel
        relation = torch.bmm(n1, x.transpose(1, 2))  # B×C×C
        n2 = torch.softmax(relation, dim=2)  # row softmax
        maps = torch.bmm(n2, x)  # B×C×HW
    return maps.reshape(b, c, h, w)
