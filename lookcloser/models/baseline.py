"""Baseline: a fine-tuned backbone with global average pooling and a linear classifier.

Its class activation maps (Zhou et al., CVPR 2016: the classifier weights of the predicted class
applied to the last feature map) are returned as ``attention``, so every method, the baseline
included, can show where it looked.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..layers.cam import class_activation_map
from .base import STRIDES, VIEW_SIZE, Method, ModelOutput
from .options import Range
from .registry import register_model


class Baseline(Method):
    """Backbone → global average pooling → dropout → linear.

    Args:
        backbone: timm model name.
        num_classes: number of classes.
        pretrained: offline ImageNet weights for the backbone.
        weights: local state dict file for the backbone.
        output_stride: stride of the last feature map (32, 16 or 8).
        view_size: side of the one view the backbone sees, resized from the source (0: the source size).
        drop_rate: dropout before the classifier.
    """

    option_ranges = {"output_stride": STRIDES, "view_size": VIEW_SIZE, "drop_rate": Range(0, 1, hi_open=True)}

    def __init__(self, *, backbone: str, num_classes: int, pretrained: bool = False, weights: str = "",
                 output_stride: int = 32, view_size: int = 0, drop_rate: float = 0.0):
        super().__init__()
        self.view_size = view_size
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                                 strict_stride=output_stride != 32)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.backbone.channels, num_classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        fmap = self.backbone(self.glance(images))  # B×C×h×w
        logits = self.classifier(self.dropout(fmap.mean((2, 3))))  # B×K
        return ModelOutput(logits=logits, attention=class_activation_map(fmap, self.classifier, logits))


register_model("baseline")(Baseline)
