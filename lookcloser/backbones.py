"""timm backbones as feature extractors at a chosen output stride, with offline weights.

We never re-implement a backbone: every method runs on any timm model. A :class:`Backbone` returns
one feature map B×C×H×W, either the model's last map (``forward_features``, the head convolution
included where the model has one) or the output of one stage (``stage=i``, timm ``features_only``).
``output_stride`` 8 or 16 replaces the last strides by dilation, as the attention methods need.
"""

from __future__ import annotations

import contextlib
import logging

import timm
import torch
from torch import nn

from .errors import LookcloserError

log = logging.getLogger(__name__)

# Packaged ImageNet weights come from TensorFlow: timm's tf_ variants reproduce its padding and BN eps.
_TF_ALIASES = {"efficientnet_lite0": "tf_efficientnet_lite0", "efficientnet_lite2": "tf_efficientnet_lite2"}


_LOAD_WEIGHTS = [True]


@contextlib.contextmanager
def structure_only():
    """Build backbones exactly as their options describe (names, variants) without reading any weights.

    Used to rebuild a trained model from its checkpoint: the architecture must be the one that was
    trained (``pretrained=True`` selects timm's ``tf_`` variant of EfficientNet-Lite), while its weights
    come from the checkpoint, not from a package or a file that may no longer be there.
    """
    _LOAD_WEIGHTS.append(False)
    try:
        yield
    finally:
        _LOAD_WEIGHTS.pop()


def resolve_name(name: str, pretrained: bool) -> str:
    """The timm name to build: the ``tf_`` variant when packaged TF weights will be loaded."""
    return _TF_ALIASES.get(name, name) if pretrained else name


def _create(name: str, **kwargs) -> nn.Module:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise LookcloserError(f"unknown backbone {name!r}{hint}; pass any name from timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise LookcloserError(f"timm cannot build {name!r} with {kwargs} ({e}); try another output_stride or stage") from e


class Backbone(nn.Module):
    """A timm model returning one feature map.

    Args:
        name: timm model name.
        pretrained: load offline ImageNet weights from an installed package (efficientnet_lite0/2).
        weights: path of a local state dict (.pth/.safetensors) to load instead.
        output_stride: 32 (default), 16 or 8; smaller strides dilate the last stages.
        stage: None for the model's last map, else the index of a ``features_only`` stage.
    """

    def __init__(self, name: str, *, pretrained: bool = False, weights: str = "", output_stride: int = 32,
                 stage: int | None = None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise LookcloserError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.name = resolve_name(name, pretrained and not weights)
        self.stage = stage
        kw = {} if output_stride == 32 else {"output_stride": output_stride}
        full = _create(self.name, **kw)
        self.load_report = ""
        if not _LOAD_WEIGHTS[-1]:
            pass
        elif weights:
            from .weights import describe_load, load_weights_file

            missing, unexpected = load_weights_file(full, weights)
            self.load_report = describe_load(missing, unexpected)
            log.info("backbone weights from %s: %s", weights, self.load_report)
        elif pretrained:
            from .weights import load_pretrained

            load_pretrained(full, self.name)
            self.load_report = "all keys matched (packaged ImageNet weights)"
        self.pretrained_cfg = dict(getattr(full, "pretrained_cfg", {}) or {})
        if stage is None:
            full.reset_classifier(0, "")
            if hasattr(full, "pre_logits"):
                # VGG-style heads keep fc6/fc7 as convs in pre_logits, unused by forward_features
                full.pre_logits = nn.Identity()
            self.body = full
            self.channels = full.num_features
            self._features_only = False
        else:
            feats = _create(self.name, features_only=True, out_indices=(stage,), **kw)
            # take the (possibly pretrained) weights of the full model; features_only drops the head
            missing, _ = feats.load_state_dict(full.state_dict(), strict=False)
            if missing:
                raise LookcloserError(f"stage {stage} of {self.name} has weights the full model lacks: {missing[:3]}")
            self.body = feats
            self.channels = feats.feature_info.channels()[0]
            self._features_only = True
        self.output_stride = output_stride

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._features_only:
            return self.body(x)[0]
        return self.body.forward_features(x)
