"""Bilinear attention pooling (BAP), the part-feature extractor of WS-BAN / WS-DAN.

Hu & Qi, "Weakly Supervised Bilinear Attention Network for Fine-Grained Visual Classification",
arXiv 1808.02152, and "See Better Before Looking Closer: Weakly Supervised Data Augmentation Network
for Fine-Grained Visual Classification", arXiv 1901.09891 (section 3.1).

Each attention map A_k (h×w) weights the feature map F (C×h×w) element-wise and global average
pooling turns the product into one part feature: f_k = GAP(A_k ⊙ F). Stacked, the M part features are
the M×C matrix B = A·Fᵀ/(h·w), one matrix product per image (an einsum over the batch). As in bilinear
pooling, the matrix then gets a signed square root and an L2 normalization of the whole M·C vector;
the official TensorFlow code finally multiplies it by 100 (``scale``) before the linear classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bilinear_attention_pooling(features: torch.Tensor, attentions: torch.Tensor, *, scale: float = 1.0,
                               eps: float = 1e-12) -> torch.Tensor:
    """Part features from feature maps and attention maps.

    The result keeps its B×M×C shape (flatten it with ``.flatten(1)`` for a classifier); the
    normalization is over the whole M·C vector of each image, so ``out.flatten(1)`` has norm ``scale``
    (or 0 for an image whose part features are all 0).

    Args:
        features: B×C×H×W feature maps.
        attentions: B×M×h×w attention maps; resized bilinearly to H×W when their size differs.
        scale: multiplier applied after the normalization (1 in the paper's formula, 100 in the
            official code, which keeps the logits of a unit-norm input away from 0).
        eps: added under the square root, as in the official code, so its gradient stays finite near 0.

    Returns:
        B×M×C float32 part features: signed square root, then L2-normalized over M·C, times ``scale``.
    """
    if features.ndim != 4 or attentions.ndim != 4 or features.shape[0] != attentions.shape[0]:
        raise ValueError(f"expected B×C×H×W features and B×M×h×w attentions, got {tuple(features.shape)} and "
                         f"{tuple(attentions.shape)}")
    b, _, h, w = features.shape
    if attentions.shape[-2:] != (h, w):
        attentions = F.interpolate(attentions, size=(h, w), mode="bilinear", align_corners=False)
    # B = A·Fᵀ / (h·w): every part feature is the spatial mean of A_k ⊙ F
    parts = torch.einsum("bmhw,bchw->bmc", attentions, features.to(attentions.dtype)).float() / (h * w)  # B×M×C
    # the square root and the norm run in float32 even under bf16 autocast: their gradients are large near 0
    parts = torch.sign(parts) * torch.sqrt(parts.abs() + eps)
    parts = F.normalize(parts.flatten(1), dim=1).view_as(parts)
    return parts * scale if scale != 1.0 else parts
