"""WS-BAN and WS-DAN: bilinear attention pooling with attention cropping, dropping and center loss.

Papers:
    Hu & Qi, "Weakly Supervised Bilinear Attention Network for Fine-Grained Visual Classification",
    arXiv 1808.02152 (WS-BAN).
    Hu, Qi, Huang & Lu, "See Better Before Looking Closer: Weakly Supervised Data Augmentation Network
    for Fine-Grained Visual Classification", arXiv 1901.09891 (WS-DAN).
Official code: tau-yihouxiang/WS_DAN (TensorFlow 1). PyTorch re-implementations: GuYuc/WS-DAN.PyTorch,
wvinzh/WS_DAN_PyTorch.

One module, :class:`BilinearAttentionNet`, serves both; two variants are registered at the end:

* ``wsdan``: one map sampled per image (p ∝ sqrt(mean A_k)) guides a crop and another a drop; the
  loss is the mean of the raw, crop and drop cross-entropies plus the center loss; the prediction
  averages the raw and crop probabilities.
* ``wsban``: the average map guides the crop; attention dropout (whole maps zeroed at random before
  pooling) replaces the image-region dropping; the raw and crop part features are concatenated into
  one joint classifier (``joint="concat"``).

The pieces:

* Feature map F from a chosen backbone stage (``feature_stage``; the paper's Inception-v3 Mixed_6e is
  timm ``features_only`` index 3, 768 channels at stride 16) and M attention maps from a 1×1 conv + BN +
  ReLU on F.
* Part features by bilinear attention pooling (:func:`lookcloser.layers.bap.bilinear_attention_pooling`),
  unit-norm over the M·C vector; the classifier sees them times ``feature_scale`` (100 in the official
  code; the papers give no scale, and unit-norm inputs would keep the logits near 0).
* Center loss ("attention regularization"): per-class part-feature centers, a buffer saved with the
  checkpoint, updated from the raw images' features with ``center_beta`` (0.05) in training; loss = mean
  over the batch of ‖f − ĉ_y‖² with ĉ_y the normalized center (the papers' Σ_k ‖f_k − c_k‖²). The update
  (``center_update``) is the official one by default (TF code and GuYuc's port): the stored center is
  not normalized and moves by c_y ← c_y + β·Σ_i (f_i − ĉ_y) over the batch's images of class y, so after
  each step ĉ_y points exactly at the class's previous feature (‖c_y‖ = β). ``"normalized"`` keeps a
  normalized moving average of the class's mean feature instead (c ← normalize(ĉ + β(f̄ − ĉ))), whose
  target drifts slowly. Only the rows of the batch's classes are touched.
* Inference: the raw image, plus the object crop from the mean map (θ = 0.1, padding 0.05). ``.logits``
  must be logits, so the mean of the two probabilities is returned as its log (argmax and softmax are
  those of the mean probability, as in the official evaluation); ``combine="logit"`` averages logits.

Views: the raw image is the glance (``view_size``, 0 keeps the source size); the crop is cut from the
full-resolution source and resized to ``crop_size`` (default: the glance's size), so it holds detail the
glance lacks; the drop erases a region of the glance.

Where the toolkit chose (documented at the option): under DistributedDataParallel the centers move with
the whole global batch (labels and features are gathered, so every process keeps the same centers); a
box covers whole pixels and is clamped to the image (the official
code lets ``crop_and_resize`` pad with zeros); a map without localization falls back to the whole image
(crop) or to no drop; attention dropout acts on the classifier's input only, the center loss sees every
map (a dropped map has no feature to pull toward its center).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone, resolve_name
from ..draw import attention_overlay, draw_box, image_to_tensor, mosaic, tensor_to_image
from ..errors import LookcloserError
from ..layers.bap import bilinear_attention_pooling
from ..layers.crop_drop import (attention_boxes, attention_drop, attention_drop_mask, crop_resize, select_attention,
                                uniform_thresholds)
from .base import FRACTION, STRIDES, VIEW_SIZE, WEIGHT, Glance, Method, ModelOutput
from .options import Range

CENTER_UPDATES = ("official", "normalized")
from .registry import register_model


@dataclass
class WSDANOutput(ModelOutput):
    """Forward output of WS-BAN / WS-DAN (same type in train and eval; unused fields are None).

    Attributes:
        logits: B×K prediction: log of the mean raw/crop probability (``combine="prob"``), the mean
            logit (``"logit"``) or the joint classifier's logits (``joint="concat"``).
        attention: B×M×h×w attention maps of the raw image.
        raw_logits: B×K part classifier on the raw image.
        crop_logits: B×K part classifier on the attention crop.
        drop_logits: B×K part classifier on the attention-dropped image (training, WS-DAN).
        features: B×M×C unit-norm part features of the raw image (without attention dropout).
        centers: B×M×C normalized class centers of the labels before this step's update (training
            with labels); the center loss pulls ``features`` toward them.
        crop_box: B×4 ``(x0, y0, x1, y1)`` crop box in source pixels.
        crop_images: B×3×S×S the crops the classifier saw (cut from the source).
        crop_index: B index of the map that guided the crop (-1: the mean map).
        drop_mask: B×h×w bool, the erased region of the glance (training, WS-DAN).
        drop_index: B index of the map that guided the drop.
    """

    raw_logits: torch.Tensor | None = None
    crop_logits: torch.Tensor | None = None
    drop_logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    centers: torch.Tensor | None = None
    crop_box: torch.Tensor | None = None
    crop_images: torch.Tensor | None = None
    crop_index: torch.Tensor | None = None
    drop_mask: torch.Tensor | None = None
    drop_index: torch.Tensor | None = None


class BilinearAttentionNet(Method):
    """Backbone → 1×1 attention → bilinear attention pooling → classifier, with crop/drop augmentation.

    Args:
        backbone: timm model name.
        num_classes: number of classes.
        pretrained: offline ImageNet weights for the backbone.
        weights: local state dict file for the backbone.
        feature_stage: -1 for the backbone's last feature map, else a timm ``features_only`` index
            (Inception-v3: 3 is Mixed_6e, the paper's choice).
        output_stride: 32, 16 (default: the papers' Mixed_6e is at stride 16) or 8; dilates the last
            stages for a larger map.
        view_size: side of the glance, the raw image the network sees (0 keeps the source size).
        crop_size: side the crop is resized to (0: the glance's size).
        num_maps: M, the number of attention maps (32 in WS-DAN; WS-BAN reports up to 128).
        attention_init: ``"random"`` (a new 1×1 conv + BN) or ``"pretrained"`` (the official TF code: the
            first M channels of the backbone's next 1×1 conv + BN after the feature stage, Inception-v3's
            Mixed_7a branch 0, with its pretrained weights).
        feature_scale: multiplier on the unit-norm part features before the classifier (official: 100).
        attention_dropout: WS-BAN's attention dropout: in training each map of each image is zeroed with
            this probability before pooling (the center loss still sees every map). 0 disables it.
        crop_map: map guiding the training crop: ``"sample"`` (WS-DAN) or ``"mean"`` (WS-BAN).
        crop_theta: (low, high) of the crop threshold θ_c ~ U(low, high), a fraction of the map's max.
        crop_padding: crop box padding, a fraction of the image side on every side.
        drop_images: WS-DAN's attention dropping: a third pass on the image with a region erased.
        drop_map: map guiding the drop: ``"sample"`` (WS-DAN, drawn independently of the crop's) or ``"mean"``.
        drop_theta: (low, high) of the drop threshold θ_d ~ U(low, high).
        joint: ``"mean"`` (WS-DAN: average the raw and crop predictions) or ``"concat"`` (WS-BAN: one
            joint classifier on the concatenated raw and crop part features, trained with its own CE
            term beside the raw/crop terms of the shared part classifier).
        combine: for ``joint="mean"``: ``"prob"`` (official: log of the mean probability) or ``"logit"``.
        eval_theta: threshold of the object crop at inference, on the mean map.
        eval_padding: padding of the object crop at inference.
        center_beta: momentum β of the center update.
        center_update: ``"official"`` (unnormalized centers, c ← c + β·Σ(f − ĉ)) or ``"normalized"`` (a
            normalized moving average of the class mean).
        center_weight: weight of the center loss (0 disables the loss; centers are still updated).
        raw_weight: weight of the raw image's cross-entropy.
        crop_weight: weight of the crop's cross-entropy.
        drop_weight: weight of the dropped image's cross-entropy.
        joint_weight: weight of the joint classifier's cross-entropy (``joint="concat"``).
        bap_eps: ε under the signed square root of the pooling (official 1e-12).

    The cross-entropies present are averaged: (w_raw·CE_raw + w_crop·CE_crop + w_drop·CE_drop
    [+ w_joint·CE_joint]) / number of terms, then ``center_weight``·center loss is added.
    """

    option_ranges = {
        "feature_stage": Range(-1, None, why="-1: the last map"), "output_stride": STRIDES, "view_size": VIEW_SIZE,
        "crop_size": Range(16, None, also=(0,), why="0: the glance's size"), "num_maps": Range(1, None),
        "attention_init": ("random", "pretrained"), "feature_scale": Range(0, None, lo_open=True),
        "attention_dropout": Range(0, 1, hi_open=True), "crop_map": ("sample", "mean"), "crop_theta": FRACTION,
        "crop_padding": FRACTION, "drop_map": ("sample", "mean"), "drop_theta": FRACTION,
        "joint": ("mean", "concat"), "combine": ("prob", "logit"), "eval_theta": FRACTION, "eval_padding": FRACTION,
        "center_beta": FRACTION, "center_update": CENTER_UPDATES, "center_weight": WEIGHT, "raw_weight": WEIGHT,
        "crop_weight": WEIGHT, "drop_weight": WEIGHT, "joint_weight": WEIGHT, "bap_eps": Range(0, None),
    }

    def __init__(self, *, backbone: str, num_classes: int, pretrained: bool = False, weights: str = "",
                 feature_stage: int = -1, output_stride: int = 16, view_size: int = 0, crop_size: int = 0,
                 num_maps: int = 32, attention_init: str = "random", feature_scale: float = 100.0,
                 attention_dropout: float = 0.0, crop_map: str = "sample",
                 crop_theta: tuple[float, float] = (0.4, 0.6), crop_padding: float = 0.1, drop_images: bool = True,
                 drop_map: str = "sample", drop_theta: tuple[float, float] = (0.2, 0.5), joint: str = "mean",
                 combine: str = "prob", eval_theta: float = 0.1, eval_padding: float = 0.05,
                 center_beta: float = 0.05, center_update: str = "official", center_weight: float = 1.0,
                 raw_weight: float = 1.0,
                 crop_weight: float = 1.0, drop_weight: float = 1.0, joint_weight: float = 1.0,
                 bap_eps: float = 1e-12):
        super().__init__()
        self.view_size, self.crop_size = view_size, crop_size
        stage = None if feature_stage == -1 else feature_stage
        source = _attention_source(resolve_name(backbone, pretrained and not weights), stage) \
            if attention_init == "pretrained" else None
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                                 stage=stage, borrow=(source,) if source else (), strict_stride=output_stride != 16)
        channels = self.backbone.channels
        self.num_maps = num_maps
        self.attention = nn.Sequential(nn.Conv2d(channels, num_maps, 1, bias=False), nn.BatchNorm2d(num_maps),
                                       nn.ReLU(inplace=True))
        if source:
            _init_attention_from(self.attention, self.backbone.borrowed.pop(source), source, num_maps, channels)
        self.fc = nn.Linear(num_maps * channels, num_classes)
        # the joint classifier of WS-BAN sees the raw and the crop part features side by side
        self.joint_fc = nn.Linear(2 * num_maps * channels, num_classes) if joint == "concat" else None
        # centers of the unit-norm part features, per class; a buffer, so checkpoints carry them
        self.register_buffer("centers", torch.zeros(num_classes, num_maps, channels))
        self.feature_scale = feature_scale
        self.attention_dropout = attention_dropout
        self.crop_map, self.crop_theta, self.crop_padding = crop_map, tuple(crop_theta), crop_padding
        self.drop_images, self.drop_map, self.drop_theta = drop_images, drop_map, tuple(drop_theta)
        self.joint, self.combine = joint, combine
        self.eval_theta, self.eval_padding = eval_theta, eval_padding
        self.center_beta, self.center_weight, self.center_update = center_beta, center_weight, center_update
        self.raw_weight, self.crop_weight, self.drop_weight, self.joint_weight = (raw_weight, crop_weight, drop_weight,
                                                                                  joint_weight)
        self.bap_eps = bap_eps

    # ---- the network ------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, *, with_parts: bool = True):
        """Attention maps and part features of a batch.

        Args:
            images: B×3×H×W.
            with_parts: also return the part features without attention dropout (for the center loss).

        Returns:
            (maps B×M×h×w, parts B×M×C or None, pooled B×M×C): ``pooled`` feeds the classifier and is
            ``parts`` with attention dropout applied in training.
        """
        fmap = self.backbone(images)  # B×C×h×w
        maps = self.attention(fmap)  # B×M×h×w
        if self.training and self.attention_dropout > 0:
            keep = torch.rand(maps.shape[0], maps.shape[1], 1, 1, device=maps.device) >= self.attention_dropout
            pooled = bilinear_attention_pooling(fmap, maps * keep.to(maps.dtype), eps=self.bap_eps)
            parts = bilinear_attention_pooling(fmap, maps, eps=self.bap_eps) if with_parts else None
        else:
            pooled = bilinear_attention_pooling(fmap, maps, eps=self.bap_eps)  # B×M×C
            parts = pooled if with_parts else None
        return maps, parts, pooled

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """B×M×C part features → B×K logits of the shared part classifier."""
        return self.fc(pooled.flatten(1) * self.feature_scale)

    def _combine(self, raw: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        if self.combine == "prob":
            # log((p_raw + p_crop) / 2), stably: its softmax is the mean probability
            both = torch.stack([raw.float().log_softmax(1), crop.float().log_softmax(1)])
            return torch.logsumexp(both, 0) - math.log(2.0)
        return (raw.float() + crop.float()) / 2

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Move the centers of the batch's classes toward their features; return the old targets.

        ``center_update="official"``: c_y ← c_y + β·Σ_{i: y_i = y} (f_i − ĉ_y), with ĉ_y = normalize(c_y)
        before the step and the stored c_y left unnormalized (a zero center stays zero under
        normalization, so a class seen for the first time gets c_y = β·Σ f_i). ``"normalized"``:
        c_y ← normalize(ĉ_y + β·(f̄_y − ĉ_y)) with f̄_y the mean of the class's features in the batch.
        Only the rows of the batch's classes are read and written, on the device, with no host
        synchronization; under DistributedDataParallel the features and labels of every process are
        gathered first, so all processes apply the same global-batch step.

        Args:
            features: B×M×C part features of the raw images.
            labels: B class indices.

        Returns:
            B×M×C normalized centers of ``labels`` before the update (the center loss targets).
        """
        k = self.centers.shape[0]
        flat = self.centers.view(k, -1)  # K×D, a view: writes go to the buffer
        targets = F.normalize(flat[labels], dim=1)  # B×D
        feats = features.detach().float().flatten(1)  # B×D
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            labels, feats = _gather_batches(labels, feats)  # padded rows carry label -1
        valid = (labels >= 0).to(feats.dtype)[:, None]  # N×1
        rows = labels.clamp_min(0)
        old = F.normalize(flat[rows], dim=1)  # N×D
        if self.center_update == "official":
            # index_add_ sums the steps of a class that appears several times, as TF's scatter_sub does
            flat.index_add_(0, rows, self.center_beta * (feats - old) * valid)
        else:
            same = (labels[:, None] == labels[None, :]).to(feats.dtype) * valid * valid.T  # N×N
            mean = (same @ feats) / same.sum(1, keepdim=True).clamp_min(1)  # each image's class mean
            moved = F.normalize(old + self.center_beta * (mean - old), dim=1)
            # padded rows write their own row back unchanged; duplicate rows write identical values
            flat.index_copy_(0, rows, torch.where(valid > 0, moved, flat[rows]))
        return targets.view_as(features)

    def _crop_side(self, images: torch.Tensor) -> int:
        """The crop's side: ``crop_size``, else the glance's."""
        return self.crop_size or self.view_size or images.shape[-1]

    def _zoom(self, images: torch.Tensor, boxes: torch.Tensor, pooled: torch.Tensor, raw_logits: torch.Tensor):
        """The crops of ``boxes`` cut from the full-resolution source and classified; the prediction that
        combines them with the raw image. Returns ``(logits, crop_logits, crops)``."""
        size = self._crop_side(images)
        crops = crop_resize(images, boxes, (size, size))
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            crops = crops.contiguous(memory_format=torch.channels_last)  # roi_align drops the memory format
        _, _, crop_pooled = self.encode(crops, with_parts=False)
        crop_logits = self.classify(crop_pooled)
        if self.joint == "concat":
            logits = self.joint_fc(torch.cat([pooled, crop_pooled], 1).flatten(1) * self.feature_scale)
        else:
            logits = self._combine(raw_logits, crop_logits)
        return logits, crop_logits, crops

    def _object_boxes(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The test-time object box: the mean map at ``eval_theta``, padded by ``eval_padding``."""
        with torch.no_grad():
            crop_map, _ = select_attention(maps.detach().float(), "mean")
            return attention_boxes(crop_map, size, self.eval_theta, self.eval_padding)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> WSDANOutput:
        b = images.shape[0]
        device = images.device
        raw = self.glance(images)  # B×3×v×v
        maps, parts, pooled = self.encode(raw)
        raw_logits = self.classify(pooled)
        centers = None
        if self.training and labels is not None:
            centers = self.update_centers(parts, labels)
        dropped = drop_mask = drop_index = None
        if self.training:
            with torch.no_grad():
                guide = maps.detach().float()  # B×M×h×w, no gradient into the maps through the augmentation
                crop_map, crop_index = select_attention(guide, self.crop_map)
                theta = uniform_thresholds(b, *self.crop_theta, device)
                boxes = attention_boxes(crop_map, images.shape[-2:], theta, self.crop_padding)
                if self.drop_images:
                    drop_map, drop_index = select_attention(guide, self.drop_map)
                    theta = uniform_thresholds(b, *self.drop_theta, device)
                    dropped, drop_mask = attention_drop(raw, drop_map, theta)
                    drop_index = drop_index[:, 0]
        else:
            boxes = self._object_boxes(maps, images.shape[-2:])
            crop_index = torch.full((b, 1), -1, dtype=torch.long, device=device)  # the mean map
        # the crop reads the full-resolution source: boxes are in source pixels
        logits, crop_logits, crops = self._zoom(images, boxes, pooled, raw_logits)
        drop_logits = self.classify(self.encode(dropped, with_parts=False)[2]) if dropped is not None else None
        return WSDANOutput(logits=logits, attention=maps, raw_logits=raw_logits, crop_logits=crop_logits,
                           drop_logits=drop_logits, features=parts, centers=centers, crop_box=boxes,
                           crop_images=crops, crop_index=crop_index[:, 0], drop_mask=drop_mask,
                           drop_index=drop_index)

    # ---- glance and zoom (inference) --------------------------------------------------------
    looks_closer = True

    def look(self, images: torch.Tensor, **inputs) -> Glance:
        """The raw image: its part features through the shared classifier, and its attention maps."""
        maps, _, pooled = self.encode(self.glance(images), with_parts=False)
        return Glance(self.classify(pooled), maps, {"pooled": pooled})

    def closer(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The object crop from the mean map, combined with the raw image (mean probability, or WS-BAN's
        joint classifier)."""
        boxes = self._object_boxes(glance.attention, images.shape[-2:])
        return self._zoom(images, boxes, glance.state["pooled"], glance.logits)[0]

    def zoom_boxes(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The test-time object crop box."""
        return self._object_boxes(glance.attention, images.shape[-2:])

    # ---- the objective ----------------------------------------------------------------------
    def loss(self, output: WSDANOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        names, terms = [], []
        weighted = []
        branches = (("ce_raw", output.raw_logits, self.raw_weight), ("ce_crop", output.crop_logits, self.crop_weight),
                    ("ce_drop", output.drop_logits, self.drop_weight),
                    ("ce_joint", output.logits if self.joint == "concat" else None, self.joint_weight))
        for name, logits, weight in branches:
            if logits is not None:
                ce = self.ce(logits, labels)
                names.append(name)
                terms.append(ce)
                weighted.append(weight * ce)
        loss = torch.stack(weighted).sum() / len(weighted)
        if output.features is not None and self.center_weight > 0:
            targets = output.centers
            if targets is None:  # a forward without labels did not gather the targets
                targets = F.normalize(self.centers[labels].flatten(1), dim=1).view_as(output.features)
            center = (output.features.float() - targets.float()).pow(2).sum((1, 2)).mean()
            names.append("center")
            terms.append(center)
            loss = loss + self.center_weight * center
        values = torch.stack([t.detach().float() for t in terms]).tolist()  # one host sync for all terms
        return loss, dict(zip(names, values))

    # ---- pictures ---------------------------------------------------------------------------
    def panels(self, output: WSDANOutput, index: int, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The strongest attention maps, the crop box and the crop, and the dropped region.

        In eval mode there is no drop; the panel then shows the region the drop rule would erase with
        the most probable map at the middle of the ``drop_theta`` range.
        """
        h, w = image.shape[:2]
        maps = output.attention[index].detach().float().cpu()  # M×h×w
        order = maps.mean((1, 2)).argsort(descending=True)[:4].tolist()
        tiles = [attention_overlay(image, maps[k]) for k in order]
        shown = [f"{k}" for k in order]
        panels = [(f"maps {', '.join(shown)} of {maps.shape[0]}", mosaic(tiles))]
        if output.crop_box is not None:
            box = output.crop_box[index].detach().float().cpu()
            which = "mean map" if output.crop_index is None or int(output.crop_index[index]) < 0 \
                else f"map {int(output.crop_index[index])}"
            panels.append((f"crop box ({which})", draw_box(np.array(image, copy=True), box)))
            crop = crop_resize(image_to_tensor(image), box[None], (h, w))
            panels.append(("crop", tensor_to_image(crop)))
        if output.drop_mask is not None:
            mask = output.drop_mask[index].detach().cpu()
            title = f"dropped (map {int(output.drop_index[index])})"
        else:
            chosen, k = select_attention(maps[None], "max")
            theta = sum(self.drop_theta) / 2
            mask = attention_drop_mask(chosen[:, 0], (h, w), theta)[0]
            title = f"drop region (map {int(k[0, 0])}, θ={theta:.2f}·max)"
        if mask.shape != (h, w):
            mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].bool()
        fill = np.asarray(self.mean, dtype=image.dtype)  # a normalized 0 is the mean colour
        panels.append((title, np.where(mask.numpy()[..., None], fill, image)))
        return panels


# the pretrained layer whose first channels the official code takes as attention maps, per (architecture,
# feature stage): Inception-v3's Mixed_7a branch 0 (1×1 conv 768 → 192 + BN + ReLU) reads Mixed_6e
_ATTENTION_SOURCES = {("inception_v3", 3): "Mixed_7a.branch3x3_1"}


def _attention_source(name: str, stage: int | None) -> str:
    arch = name.split(".")[0]
    for prefix in ("tf_", "adv_", "gluon_"):
        arch = arch.removeprefix(prefix)
    source = _ATTENTION_SOURCES.get((arch, stage))
    if source is None:
        known = ", ".join(f"{a} with feature_stage={s}" for a, s in _ATTENTION_SOURCES)
        raise LookcloserError(f"attention_init=pretrained needs a backbone with a pretrained 1×1 layer after its "
                              f"feature stage ({known}), not {name} at stage {stage}; use attention_init=random")
    return source


def _init_attention_from(attention: nn.Sequential, layer: nn.Module, path: str, num_maps: int, channels: int) -> None:
    """Copy the first ``num_maps`` output channels of a pretrained conv + BN (timm ``BasicConv2d``)."""
    conv, bn = getattr(layer, "conv", None), getattr(layer, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or conv.kernel_size != (1, 1):
        raise LookcloserError(f"{path} is not a 1×1 conv + BN layer; use attention_init=random")
    if conv.in_channels != channels or conv.out_channels < num_maps:
        raise LookcloserError(f"{path} maps {conv.in_channels} → {conv.out_channels} channels; attention_init="
                              f"pretrained needs {channels} inputs and at least num_maps={num_maps} outputs")
    new_conv, new_bn = attention[0], attention[1]
    with torch.no_grad():
        new_conv.weight.copy_(conv.weight[:num_maps])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[:num_maps])
    new_bn.eps = bn.eps


def _gather_batches(labels: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's labels and features, padded to the largest batch (padded labels are -1)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    n = torch.tensor([labels.numel()], device=labels.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))  # batches differ only when unreadable images were skipped
    pad = most - labels.numel()
    labels = F.pad(labels, (0, pad), value=-1)
    feats = F.pad(feats, (0, 0, 0, pad))
    all_labels = [torch.empty_like(labels) for _ in range(world)]
    all_feats = [torch.empty_like(feats) for _ in range(world)]
    dist.all_gather(all_labels, labels)
    dist.all_gather(all_feats, feats)
    return torch.cat(all_labels), torch.cat(all_feats)


def _variant(name: str, doc: str, **defaults):
    """A factory for :class:`BilinearAttentionNet` with other defaults and the same keyword options.

    The registry reads a factory's signature to list and check its options, so the factory carries
    the class's signature with the variant's defaults.
    """
    sig = inspect.signature(BilinearAttentionNet, eval_str=True)
    unknown = set(defaults) - set(sig.parameters)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")

    def build(**options) -> BilinearAttentionNet:
        return BilinearAttentionNet(**{**defaults, **options})

    build.__signature__ = sig.replace(parameters=[p.replace(default=defaults.get(p.name, p.default))
                                                  for p in sig.parameters.values()])
    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    build.option_ranges = BilinearAttentionNet.option_ranges
    return build


wsdan = _variant("wsdan", "WS-DAN (arXiv 1901.09891): sampled-map crop and drop, mean of raw and crop probabilities.")
wsban = _variant("wsban", "WS-BAN (arXiv 1808.02152): mean-map crop, attention dropout, joint classifier on raw + crop "
                 "part features.", crop_map="mean", drop_images=False, attention_dropout=0.5, joint="concat")

register_model("wsdan")(wsdan)
register_model("wsban")(wsban)
