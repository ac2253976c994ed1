"""What every method shares: a typed forward output and the interface the engine uses.

A method is an ``nn.Module`` whose ``forward(images, labels=None, **inputs)`` returns a
:class:`ModelOutput` (or a subclass with the method's extras) in train and eval alike, and whose
``loss(output, labels)`` returns the scalar to minimize and a dict of named terms to log. Everything else
the engine, the reports and the pictures may use is declared on :class:`Method`: the number of classes,
the extra per-sample inputs a method needs and how a data set provides them (:meth:`sample_inputs`),
its pictures (:meth:`panels`), its label smoothing, and whether DistributedDataParallel must look for
unused parameters. A new method that needs something extra changes only its own file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .options import Range


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


@dataclass
class Glance:
    """What a method's glance gives at inference: its own prediction, where it looked, and what its zoom
    needs, per image (every tensor's first axis is the batch), so the zoom can run on any subset.

    Attributes:
        logits: B×K the glance's own prediction (TASN's attention net, WS-DAN/WS-BAN's raw image, RRA's
            global stream).
        attention: B×M×h×w maps of where it looked (None: none).
        state: ``{name: B×...}`` what the zoom reads besides the source images.
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def take(self, index: torch.Tensor) -> "Glance":
        """The glance of the images ``index`` selects (indices or a boolean mask), in that order."""
        return Glance(self.logits[index], None if self.attention is None else self.attention[index],
                      {k: v[index] for k, v in self.state.items()})


# ranges shared by several methods (see lookcloser.models.options)
VIEW_SIZE = Range(16, None, also=(0,), why="0: the source size")
STRIDES = (8, 16, 32)
WEIGHT = Range(0, None)
FRACTION = Range(0, 1)


@dataclass
class SampleInputs:
    """Per-sample inputs a method needs beside the image, and how a data set provides them.

    Attributes:
        per_sample: called as ``per_sample(index, original_size)`` for sample ``index`` of the data set,
            ``original_size`` being the image file's ``(width, height)``; returns ``{name: tensor}``, the
            tensors of one sample (batched by the loader and passed to ``forward`` as ``name=``).
        fixed_view: the inputs refer to the evaluation view of the image, so training must use that view
            too (no random crop or flip).
    """

    per_sample: Callable[[int, tuple[int, int]], dict[str, torch.Tensor]]
    fixed_view: bool = False


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
    looks_closer: ClassVar[bool] = False
    """Whether the method is a glance and a zoom (:meth:`look`, :meth:`closer`): what adaptive inference and
    the zoom's localization metrics need. At inference ``closer(images, look(images))`` is ``forward``'s
    prediction."""
    ddp_find_unused_parameters: ClassVar[bool] = False
    """Whether some trainable parameter may get no gradient in a training step (DistributedDataParallel
    must then look for unused parameters every step, which costs time)."""

    @property
    def num_classes(self) -> int:
        """Size of the prediction (``create_model``'s ``num_classes``)."""
        return int(self.build_args["num_classes"])

    def set_label_smoothing(self, value: float) -> None:
        """Label smoothing of the cross-entropy terms of :meth:`loss` (the engine sets the run's)."""
        self.label_smoothing = float(value)

    def sample_inputs(self, dataset, preprocess: dict[str, Any]) -> SampleInputs | None:
        """The extra per-sample inputs this method needs from ``dataset`` (None: only the images).

        Args:
            dataset: the :class:`lookcloser.data.ImageDataset` that will be read (its ``samples`` name the
                files).
            preprocess: the evaluation preprocessing (``image_size``, ``resize_ratio``, ``squash``, ...),
                so that inputs given in image coordinates can be mapped onto the view.
        """
        return None

    def panels(self, output: ModelOutput, index: int, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Pictures of what the method did for image ``index`` of a batch: ``(title, H×W×3 array in
        [0, 1])`` pairs, ``image`` being that image de-normalized. The generic picture (the input and the
        mean attention) is drawn by :mod:`lookcloser.viz`; methods add their own here."""
        return []

    def look(self, images: torch.Tensor, **inputs) -> Glance:
        """The glance alone (inference): its prediction and what the zoom needs."""
        raise NotImplementedError(f"{type(self).__name__} is one pass, not a glance and a zoom")

    def closer(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The method's prediction (B×K logits, as ``forward``'s) for the source ``images`` whose glance is
        ``glance``: the zoom, and how the method combines it with the glance."""
        raise NotImplementedError(f"{type(self).__name__} is one pass, not a glance and a zoom")

    def zoom_boxes(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """B×4 ``[x0, y0, x1, y1]`` in source pixels: the region the zoom reads (WS-DAN's crop, RRA's patch,
        the region TASN's sampler magnifies)."""
        raise NotImplementedError(f"{type(self).__name__} is one pass, not a glance and a zoom")

    def glance(self, images: torch.Tensor) -> torch.Tensor:
        """The source resized to ``view_size`` × ``view_size`` (antialiased when it shrinks); the source
        itself when ``view_size`` is 0 or already its size."""
        return resize_view(images, self.view_size)

    def ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the run's label smoothing, computed in float32. Soft targets (B×K, from mixup or
        cutmix) carry their own smoothing."""
        if labels.is_floating_point():
            return F.cross_entropy(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.ce(output.logits, labels)
        return loss, {"ce": loss.detach().item()}

    def backbone_parameters(self):
        """Parameters that come from pretrained backbones (for a separate learning rate)."""
        from ..backbones import Backbone

        ids = set()
        for m in self.modules():
            if isinstance(m, Backbone):
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
