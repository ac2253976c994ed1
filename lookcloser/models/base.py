"""What every method shares: a typed forward output and the objective interface.

A method is an ``nn.Module`` whose ``forward(images, labels=None)`` returns a :class:`ModelOutput` (or a
subclass with the method's extras) in train and eval alike, and whose ``loss(output, labels)`` returns
the scalar to minimize and a dict of named terms to log. The engine knows nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelOutput:
    """Forward output of every method.

    Attributes:
        logits: B×K class scores used for prediction.
        attention: optional B×M×h×w maps showing where the method looked.
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None

    def detach(self):
        kw = {f.name: (v.detach() if torch.is_tensor(v := getattr(self, f.name)) else v) for f in fields(self)}
        return type(self)(**kw)


class Method(nn.Module):
    """Base class of the registered methods.

    Subclasses set ``self.backbone`` (a :class:`lookcloser.backbones.Backbone`, or the first of several)
    and implement ``forward`` and ``loss``. ``label_smoothing`` is set by the engine before training.

    Views: the images a method receives are the *source* (the data pipeline's ``image_size``). Every
    method takes its glance — the one backbone pass that sees the whole image — at ``view_size``
    (:meth:`glance`; 0 keeps the source size), and reads its zooms (TASN's sampled images, WS-DAN's
    crops, RRA's patches) from the full-resolution source, so a zoom holds detail the glance lacks.
    """

    label_smoothing: float = 0.0
    view_size: int = 0

    def glance(self, images: torch.Tensor) -> torch.Tensor:
        """The source resized to ``view_size`` × ``view_size`` (antialiased when it shrinks); the source
        itself when ``view_size`` is 0 or already its size."""
        return resize_view(images, self.view_size)

    def ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the run's label smoothing, computed in float32."""
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.ce(output.logits, labels)
        return loss, {"ce": loss.detach().item()}

    def backbone_parameters(self):
        """Parameters that come from pretrained backbones (for a separate learning rate)."""
        ids = set()
        for m in self.modules():
            if m is not self and m.__class__.__name__ == "Backbone":
                for p in m.parameters():
                    if id(p) not in ids:
                        ids.add(id(p))
                        yield p

    @property
    def mean(self):
        return self.backbone.mean

    @property
    def std(self):
        return self.backbone.std


def resize_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """B×C×H×W → B×C×size×size, bilinear, antialiased when shrinking (as the data pipeline's PIL resize);
    unchanged when ``size`` is 0 or the images already have that size."""
    if not size or tuple(images.shape[-2:]) == (size, size):
        return images
    shrink = size < min(images.shape[-2:])
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def check_view_size(view_size: int) -> int:
    """Validate a ``view_size`` option (0, or a side of at least 16 pixels)."""
    from ..errors import LookcloserError

    if view_size != 0 and view_size < 16:
        raise LookcloserError(f"view_size must be 0 (the source size) or at least 16 pixels, got {view_size}")
    return int(view_size)
