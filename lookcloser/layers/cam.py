"""Class activation maps (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).

With global average pooling followed by a linear classifier, the score of class k is the spatial mean
of w_k · F; the map w_k · F itself shows where the evidence for class k lies.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def class_activation_map(features: torch.Tensor, classifier: nn.Linear, logits: torch.Tensor) -> torch.Tensor:
    """The CAM of each image's predicted class.

    Args:
        features: B×C×h×w map that the classifier reads after global average pooling.
        classifier: the linear classifier (K×C weights).
        logits: B×K scores; their argmax picks the class of each map.

    Returns:
        B×1×h×w maps, in the features' dtype, without gradient.
    """
    w = classifier.weight[logits.argmax(1)]  # B×C
    return torch.einsum("bc,bchw->bhw", w.to(features.dtype), features).unsqueeze(1)
