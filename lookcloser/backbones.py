"""timm backbones as feature extractors at a chosen output stride, with pretrained weights.

We never re-implement a backbone: every method runs on any timm model. A :class:`Backbone` returns
one feature map B×C×H×W, either the model's last map (``forward_features``, the head convolution
included where the model has one) or the output of one stage (``stage=i``, through timm's
``forward_intermediates`` on the one model, whose layers after that stage are pruned away).
``output_stride`` 8 or 16 replaces the last strides by dilation, as the attention methods need, or, with
``dilate=False`` on a ResNet, removes them without dilation (TASN's official attention net).

Transformers (models timm builds with ``dynamic_img_size``: ViT, DeiT, EVA, DINOv2, CLIP, Swin, ...) and
other models whose features are not NCHW (MambaOut's NHWC) give their last map through timm's
``forward_intermediates`` as NCHW, the final norm applied and class and register tokens dropped, at any
input size: position embeddings follow the image. Their stride is their own (a ViT's patch size, Swin's
32) and cannot be dilated: an ``output_stride`` that differs is an error when the user asked for it
(``strict_stride``) and gives way to the native stride, with a log line, when it is a method's default.
Their input is resized to the nearest multiple of that stride, so that the map covers the image exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import timm
import torch
import torch.nn.functional as F
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
    except RuntimeError as e:
        if "pretrained tag" in str(e):
            base = name.split(".", 1)[0]
            tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{base}.*")][:8]
            raise LookcloserError(f"timm knows no pretrained tag {name.split('.', 1)[1]!r} for {base} (its tags: "
                                  f"{', '.join(tags) or 'none'}); name one of them, or {base} alone for its "
                                  "default") from e
        raise LookcloserError(f"timm cannot build {name!r} with {kwargs} ({e}); try another output_stride or stage") from e
    except (TypeError, ValueError, AssertionError) as e:
        raise LookcloserError(f"timm cannot build {name!r} with {kwargs} ({e}); try another output_stride or stage") from e


def _create_token_model(name: str) -> nn.Module | None:
    """The model built with a dynamic image size where timm's class takes one (transformers), else None
    (every other model refuses the keyword)."""
    if not timm.is_model(name):
        return None
    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True)
    except TypeError as e:
        if "dynamic_img_size" in str(e):
            return None
        raise LookcloserError(f"timm cannot build {name!r} ({e}); pick another backbone") from e
    except (RuntimeError, ValueError, AssertionError):
        return None  # the plain route below raises its own, clearer error


def _is_token_model(model: nn.Module) -> bool:
    """Whether ``model``'s features are tokens (B×N×C) or NHWC rather than an NCHW map."""
    return bool(getattr(model, "dynamic_img_size", False)) or getattr(model, "output_fmt", "NCHW") != "NCHW"


def _fixed_size_transformer(name: str) -> LookcloserError:
    return LookcloserError(
        f"{name} is a transformer that timm cannot build with a dynamic image size, so its tokens cannot follow "
        "the glances and zooms of other sizes that the methods take; pick one that can (ViT, DeiT, EVA, DINOv2, "
        "CLIP ViTs, Swin, SwinV2: see `lookcloser models`) or a CNN")


# stages whose first stride is removed (no dilation) to reach an output stride: TASN's official attention
# net keeps resolution this way (its ResNet-18 strides per stage are 1, 1, 2, 1 for output stride 8)
_REMOVED_STRIDES = {8: ("layer2", "layer4"), 16: ("layer4",)}


def remove_strides(model: nn.Module, output_stride: int) -> None:
    """Bring a timm ResNet to ``output_stride`` (8 or 16) by setting stride-2 convolutions and pools of the
    first block of some stages to stride 1, without dilation (in place)."""
    stages = _REMOVED_STRIDES.get(output_stride, ())
    if not all(isinstance(getattr(model, s, None), nn.Sequential) for s in ("layer1", "layer2", "layer3", "layer4")):
        raise LookcloserError(f"removing strides without dilation works on ResNet backbones (layer1..layer4), "
                              f"not on {type(model).__name__}; use dilation (attention_strides=dilate) instead")
    for stage in stages:
        for m in getattr(model, stage)[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                m.stride = (1, 1)
            elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) and m.stride not in (1, (1, 1)):
                m.stride = 1


class Backbone(nn.Module):
    """A timm model returning one feature map.

    Args:
        name: timm model name.
        pretrained: load pretrained weights: from an installed package (efficientnet_lite0/2), else by
            timm's own route (the Hugging Face hub's local cache, the hub once where it lacks them).
        weights: path of a local state dict (.pth/.safetensors) to load instead.
        output_stride: 32 (default), 16 or 8; smaller strides dilate the last stages.
        stage: None for the model's last map, else the index of a stage in timm's ``feature_info``.
        dilate: reach ``output_stride`` by dilation (any model) or, if False, by removing strides (ResNets).
        borrow: names of sub-modules to keep a copy of, with their (pretrained) weights, before the
            layers after ``stage`` are pruned (WS-DAN initialises its attention maps from one); read them
            from :attr:`borrowed`.
    """

    def __init__(self, name: str, *, pretrained: bool = False, weights: str = "", output_stride: int = 32,
                 stage: int | None = None, dilate: bool = True, borrow: tuple[str, ...] = (),
                 strict_stride: bool = False, stride_option: str = "output_stride"):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise LookcloserError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.name = resolve_name(name, pretrained and not weights)
        self.stage = stage
        kw = {} if output_stride == 32 or not dilate else {"output_stride": output_stride}
        # transformers first; every other model refuses the keyword at once, before any layer is drawn, so a
        # CNN's random initialization is the same as without this step
        full = _create_token_model(self.name)
        if full is not None and not _is_token_model(full):
            full = None
        if full is not None:
            kw = {}
        if stage is not None and kw:
            # a stage that is already at (or finer than) the stride needs no dilation (Inception-v3's
            # Mixed_6e is at 16, and Inception-v3 cannot dilate)
            plain = _create(self.name)
            info = plain.feature_info
            if isinstance(info, list) and 0 <= stage < len(info) and info[stage]["reduction"] <= output_stride:
                kw = {}
            del plain
        try:
            full = full if full is not None else _create(self.name, **kw)
        except LookcloserError:
            # VGG-style models take no output_stride; stride 16 there means dropping the last max-pool
            full = _create(self.name)
            if _is_token_model(full):  # NHWC models (MambaOut) take none either: their stride is their own
                kw = {}
            features = getattr(full, "features", None)
            if not kw:
                pass
            elif not (kw.get("output_stride") == 16 and isinstance(features, nn.Sequential)
                      and isinstance(features[-1], nn.MaxPool2d)):
                raise
            else:
                features[-1] = nn.Identity()
        self.load_report = ""
        if not _LOAD_WEIGHTS[-1]:
            pass
        elif weights:
            from .weights import describe_load, load_weights_file

            missing, unexpected = load_weights_file(full, weights)
            self.load_report = describe_load(missing, unexpected)
            log.info("backbone weights from %s: %s", weights, self.load_report)
        elif pretrained:
            from .weights import has_packaged_weights, load_pretrained, load_timm_pretrained

            if has_packaged_weights(self.name):
                load_pretrained(full, self.name)
                self.load_report = "all keys matched (packaged ImageNet weights)"
            else:
                load_timm_pretrained(full, self.name)
                self.load_report = f"all keys matched (timm's pretrained {self.name})"
            log.info("backbone %s: %s", self.name, self.load_report)
        self.tokens = _is_token_model(full)
        if not self.tokens and (getattr(full, "cls_token", None) is not None or getattr(full, "num_prefix_tokens", 0)):
            raise _fixed_size_transformer(self.name)
        if not dilate and output_stride != 32 and not self.tokens:
            remove_strides(full, output_stride)
        self.pretrained_cfg = dict(getattr(full, "pretrained_cfg", {}) or {})
        # plain attribute, not a registered sub-module: borrowed layers are no parameters of the backbone
        self.__dict__["borrowed"] = {}
        for path in borrow:
            try:
                self.borrowed[path] = copy.deepcopy(full.get_submodule(path))
            except AttributeError as e:
                raise LookcloserError(f"{self.name} has no layer {path!r} to borrow; pick another backbone") from e
        if stage is None and self.tokens and hasattr(full, "prune_intermediate_layers"):
            full.prune_intermediate_layers(indices=1, prune_head=True, prune_norm=False)  # head and fc_norm go
            self.channels = full.num_features
        elif stage is None:
            full.reset_classifier(0, "")
            if hasattr(full, "pre_logits"):
                # VGG-style heads keep fc6/fc7 as convs in pre_logits, unused by forward_features
                full.pre_logits = nn.Identity()
            self.channels = full.num_features
        else:
            info = full.feature_info
            if not isinstance(info, list) or not hasattr(full, "forward_intermediates"):
                raise LookcloserError(f"{self.name} cannot return the map of one stage; use stage -1 (the last map)")
            if not 0 <= stage < len(info):
                raise LookcloserError(f"{self.name} has stages 0..{len(info) - 1}, not {stage}")
            full.prune_intermediate_layers(indices=[stage], prune_head=True, prune_norm=True)
            self.channels = info[stage]["num_chs"]
        self.body = full
        self.output_stride = output_stride
        self.pad_multiple = 1
        if self.tokens:
            self._native_stride(full, output_stride, dilate, strict_stride, stride_option)

    def _native_stride(self, model: nn.Module, requested: int, dilate: bool, strict: bool, option: str) -> None:
        """Set :attr:`output_stride` to a token model's own stride, checking it against the request."""
        info = model.feature_info if isinstance(getattr(model, "feature_info", None), list) else []
        index = self.stage if self.stage is not None else len(info) - 1
        native = int(info[index]["reduction"]) if info else int(getattr(model, "patch_embed").patch_size[0])
        if requested != native:
            if strict or not dilate:
                how = "" if dilate else " and no strides to remove"
                fix = f"set {option}={native} or leave" if native in (8, 16, 32) and dilate else "leave"
                raise LookcloserError(
                    f"{self.name} is a transformer whose map keeps its own stride {native} (no dilation{how}), so "
                    f"it cannot give {option}={requested}{'' if dilate else ' without dilation'}: {fix} "
                    f"{option} at the method's default, which gives way to the native stride")
            if requested != 32:  # 32 asks for no dilation: nothing to say
                log.info("%s: a transformer's map keeps its own stride %d (the method's default %s %d does not "
                         "apply)", self.name, native, option, requested)
        self.output_stride = native
        self.pad_multiple = native
    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return self._token_map(x)
        if self.stage is not None:
            return self.body.forward_intermediates(x, indices=[self.stage], intermediates_only=True)[0]
        fmap = self.body.forward_features(x)
        if fmap.dim() != 4:  # tokens from a model that timm cannot build with a dynamic image size
            raise _fixed_size_transformer(self.name)
        return fmap

    def _token_map(self, x: torch.Tensor) -> torch.Tensor:
        """A transformer's patch tokens as B×C×h×w, the input first resized to a multiple of its stride."""
        m = self.pad_multiple
        h, w = int(x.shape[-2]), int(x.shape[-1])  # plain numbers under tracing too: exports fix the side
        size = (max(m, round(h / m) * m), max(m, round(w / m) * m))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h)
        if self.stage is not None:
            return self.body.forward_intermediates(x, indices=[self.stage], output_fmt="NCHW",
                                                   intermediates_only=True)[0]
        return self.body.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[0]

