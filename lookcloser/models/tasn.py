"""TASN: Trilinear Attention Sampling Network.

Zheng, Fu, Zha, Luo, "Looking for the Devil in the Details: Learning Trilinear Attention Sampling Network
for Fine-grained Image Recognition", CVPR 2019, arXiv 1903.06150. Official code: researchmm/tasn (MXNet).

Three parts:

1. Details localization: an attention network (a backbone at output stride 8 — the paper's ResNet-18
   with the strides of its last stages removed — followed by the official multi-dilation convolutions,
   trained with its own classifier and cross-entropy) produces a feature map X, and trilinear attention
   M(X) = N2(N1(X)·Xᵀ)·X turns each of its channels into one attention map
   (:func:`lookcloser.layers.trilinear.trilinear_attention`).
2. Details extraction: the attention-based sampler (:func:`lookcloser.layers.sampler.attention_sample`)
   resamples the input twice: from the channel average of M (structure-preserved image) and from one
   channel chosen at random per image (detail-preserved image; at test time the official code uses the
   average). No gradient flows from the sampler back into the attention.
3. Details optimization: one backbone with one classifier serves as part-net (detail image) and
   master-net (structure image), run as one batch. The master learns from the labels and from the
   part-net's soft targets: L_soft = −Σ softmax(z_d/T)·log softmax(z_s/T), T = 10, weight λ.

Views: the attention net sees the glance (``view_size``, paper 224); the sampler reads the full-resolution
source (paper 512) into ``sample_size`` images (paper 224), so the sampled images hold detail the glance lacks.

Inference: attention net → structure-preserved image → master-net (one backbone pass besides the
attention net).

Paper defaults throughout; where the paper is silent the official code is the default (the sampler's
coupled density cap), except the sampler's grid: the official operator's indexing shifts the sampled image
by about one output pixel, an artefact rather than part of the method, so the default ``grid="centered"``
gives back the plain resize under uniform attention. The official code's other choices are options:
``grid="official"``, ``softmax_scale=7``, ``square_structure``, ``distinct_channels``, ``distill_weight=1``,
``detach_soft_targets=False``, ``heads="official"`` and ``attention_strides="remove"``
(``recipes/tasn_paper.yaml`` sets them all).
Differences that stay: the official attention net is a pre-activation ResNet-18 (timm's ResNets are
post-activation); the official sampler computes its grid on the host in per-image loops, ours is
batched on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..draw import attention_overlay
from ..layers.sampler import CAPS, GRIDS, SampleResult, attention_sample, magnified_box, resample
from ..layers.trilinear import trilinear_attention
from .base import STRIDES, VIEW_SIZE, WEIGHT, Glance, Method, ModelOutput
from .options import Range
from .registry import register_model


@dataclass
class TASNOutput(ModelOutput):
    """Forward output of :class:`TASN` (same type in train and eval).

    Attributes:
        logits: B×K master-net scores on the structure-preserved image (the prediction; with official
            heads, those of the shared classifier).
        attention: B×M×h×w trilinear attention maps (M channels of the attention network).
        attention_logits: B×K scores of the attention network's own classifier.
        part_logits: B×K part-net scores on the detail-preserved image (training only, else None); with
            official heads, those of the part classifier.
        master_logits: B×K master classifier on the structure image (official heads only).
        shared_part_logits: B×K shared classifier on the detail image (official heads, training only).
        structure_images: B×3×S×S structure-preserved sampled images.
        detail_images: B×3×S×S detail-preserved sampled images.
        structure_map: B×h×w map that drove the structure sampling.
        detail_map: B×h×w map that drove the detail sampling.
        structure_grid: B×S×S×2 sampling grid of the structure image (``grid_sample`` coordinates).
        detail_grid: B×S×S×2 sampling grid of the detail image.
    """

    attention_logits: torch.Tensor | None = None
    part_logits: torch.Tensor | None = None
    master_logits: torch.Tensor | None = None
    shared_part_logits: torch.Tensor | None = None
    structure_images: torch.Tensor | None = None
    detail_images: torch.Tensor | None = None
    structure_map: torch.Tensor | None = None
    detail_map: torch.Tensor | None = None
    structure_grid: torch.Tensor | None = None
    detail_grid: torch.Tensor | None = None


class MultiDilationConv(nn.Module):
    """The official attention head: two 3×3 convolutions, each applied at several dilations with shared
    weights and the ReLU outputs summed, so the maps see several context sizes at full resolution.

    Args:
        in_channels: channels of the backbone map.
        channels: channels of the attention features (official 512).
        dilations: dilations of the first and of the second convolution (official (1, 2) and (1, 2, 3)).
    """

    def __init__(self, in_channels: int, channels: int,
                 dilations: tuple[tuple[int, ...], tuple[int, ...]] = ((1, 2), (1, 2, 3))):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        self.dilations = dilations
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    @staticmethod
    def _multi(conv: nn.Conv2d, x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
        return sum(F.relu(F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d)) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._multi(self.conv1, x, self.dilations[0])
        return self._multi(self.conv2, x, self.dilations[1])  # B×channels×h×w, non-negative


def distinct_channels_mask(maps: torch.Tensor) -> torch.Tensor:
    """B×C mask of the first channel of each group of channels with equal spatial sums.

    Dead feature channels give identical attention maps; the official code keeps one of each so that the
    random detail channel and the structure sum are not dominated by copies.
    """
    s = maps.sum((2, 3))  # B×C
    sorted_s, order = s.sort(1)
    first = torch.ones_like(sorted_s, dtype=torch.bool)
    first[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    return torch.zeros_like(first).scatter(1, order, first)


HEADS = ("shared", "official")
PREDICTIONS = ("master", "mean")


class TASN(Method):
    """Trilinear attention sampling network with a shared part/master backbone.

    Args:
        backbone: timm model name of the part/master net (paper: ResNet-50).
        num_classes: number of classes.
        pretrained: offline ImageNet weights for both backbones.
        weights: local state dict for the part/master backbone (and for the attention backbone when
            it is the same model and ``attention_weights`` is empty).
        attention_backbone: timm model name of the attention net (paper: ResNet-18); empty means the same
            model as ``backbone`` (separate weights).
        attention_weights: local state dict for the attention backbone.
        view_size: side of the glance, the view of the whole image that the attention net sees (paper
            224); 0 keeps the source size. The sampled images are read from the full source.
        attention_stride: output stride of the attention net (paper 8; 16 is much cheaper on CPUs).
        attention_strides: how the attention net reaches that stride: ``"dilate"`` (timm's dilated last
            stages, any backbone) or ``"remove"`` (the official pattern for ResNets: strides removed,
            no dilation — stride 8 keeps layer3's stride only, 16 removes layer4's).
        sample_size: side of the sampled images (paper 224; official README also 336); 0 keeps the
            source size.
        att_channels: channels of the official multi-dilation head on the attention backbone (512);
            0 uses the backbone map directly.
        softmax_scale: scale of the features inside the spatial softmax N1 (paper 1, official code 7).
        square_structure: square the structure map before sampling (official code).
        distinct_channels: average over, and draw the detail channel from, channels with distinct maps
            only (official code); otherwise all channels (paper).
        dense: largest magnification of the sampler, as a multiple of the uniform rate (official 4).
        iters: cap-and-redistribute rounds of the sampler (official 5).
        cap: the sampler's density cap: ``"coupled"`` (official: both axes together) or ``"per_axis"``
            (each axis at ``dense``, so elongated peaks are zoomed too).
        grid: the sampler's grid convention: ``"centered"`` (default: a uniform map gives back the plain
            resize) or ``"official"`` (the operator's indexing, which shifts the image by about one output
            pixel and samples its first column twice; the paper is silent on it).
        heads: ``"shared"`` (paper: one classifier serves part and master net) or ``"official"`` (the
            official code: separate part and master classifiers that carry the distillation, plus a
            shared classifier on both images, whose output on the structure image is the prediction).
        temperature: distillation temperature T (10).
        distill_weight: λ, weight of the soft-target loss of the master net (paper 2, official code 1).
        detach_soft_targets: stop the distillation gradient at the part-net's soft targets (classic
            distillation; the official graph lets it flow into the part net).
        att_weight: weight of the attention net's cross-entropy.
        part_weight: weight of the part net's cross-entropy (default 1 with shared heads, 0.5 official).
        master_weight: weight of the master net's cross-entropy (default 1 shared, 0.5 official).
        shared_weight: with official heads, weight of the shared classifier's cross-entropy on each of
            the two images (default 0.5, as the official code).
        prediction: what evaluation predicts: ``"master"`` (paper: the master net on the structure image)
            or ``"mean"`` (the mean probability of the master net and the attention net's own classifier
            on the glance, which the attention net computes anyway; its ``.logits`` are then
            log-probabilities). Training is the same either way.
    """

    option_ranges = {
        "view_size": VIEW_SIZE, "attention_stride": STRIDES, "attention_strides": ("dilate", "remove"),
        "sample_size": Range(16, None, also=(0,), why="0: the source size"), "att_channels": Range(0, None),
        "softmax_scale": Range(0, None, lo_open=True), "dense": Range(1, None, also=(0,), why="0 disables the cap"),
        "iters": Range(1, None), "cap": CAPS, "grid": GRIDS, "heads": HEADS,
        "temperature": Range(0, None, lo_open=True), "distill_weight": WEIGHT, "att_weight": WEIGHT,
        "part_weight": WEIGHT, "master_weight": WEIGHT, "shared_weight": WEIGHT, "prediction": PREDICTIONS,
    }

    def __init__(self, *, backbone: str, num_classes: int, pretrained: bool = False, weights: str = "",
                 attention_backbone: str = "", attention_weights: str = "", view_size: int = 224,
                 attention_stride: int = 8, attention_strides: str = "dilate",
                 sample_size: int = 224, att_channels: int = 512, softmax_scale: float = 1.0,
                 square_structure: bool = False, distinct_channels: bool = False, dense: float = 4.0,
                 iters: int = 5, cap: str = "coupled", grid: str = "centered", heads: str = "shared",
                 temperature: float = 10.0, distill_weight: float = 2.0,
                 detach_soft_targets: bool = True, att_weight: float = 1.0, part_weight: float | None = None,
                 master_weight: float | None = None, shared_weight: float | None = None,
                 prediction: str = "master"):
        super().__init__()
        self.view_size = view_size
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=weights)
        self.classifier = nn.Linear(self.backbone.channels, num_classes)
        self.heads = heads
        self.prediction = prediction
        if heads == "official":
            self.part_classifier = nn.Linear(self.backbone.channels, num_classes)
            self.master_classifier = nn.Linear(self.backbone.channels, num_classes)
        same = not attention_backbone or attention_backbone == backbone
        att_w = attention_weights or (weights if same else "")
        self.attention_backbone = Backbone(attention_backbone or backbone, pretrained=pretrained, weights=att_w,
                                           output_stride=attention_stride, dilate=attention_strides == "dilate",
                                           strict_stride=attention_stride != 8 or attention_strides != "dilate",
                                           stride_option="attention_stride")
        c = self.attention_backbone.channels
        if att_channels > 0:
            self.att_head = MultiDilationConv(c, att_channels)
            # the official net classifies BN+ReLU of the head output; trilinear attention reads it raw
            self.att_post = nn.Sequential(nn.BatchNorm2d(att_channels), nn.ReLU(inplace=True))
            c = att_channels
        else:
            self.att_head = nn.Identity()
            self.att_post = nn.Identity()
        self.att_classifier = nn.Linear(c, num_classes)

        # the attention backbone may expect another normalization than the master's (shared input)
        m_mean, m_std = torch.tensor(self.backbone.mean), torch.tensor(self.backbone.std)
        a_mean, a_std = torch.tensor(self.attention_backbone.mean), torch.tensor(self.attention_backbone.std)
        self._renorm = not (torch.equal(m_mean, a_mean) and torch.equal(m_std, a_std))
        self.register_buffer("_renorm_scale", (m_std / a_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_renorm_shift", ((m_mean - a_mean) / a_std).view(1, 3, 1, 1), persistent=False)

        official = heads == "official"
        self.sample_size = sample_size
        self.softmax_scale = softmax_scale
        self.square_structure = square_structure
        self.distinct_channels = distinct_channels
        self.dense, self.iters, self.cap, self.grid = dense, iters, cap, grid
        self.temperature = temperature
        self.distill_weight = distill_weight
        self.detach_soft_targets = detach_soft_targets
        self.att_weight = att_weight
        self.part_weight = part_weight if part_weight is not None else (0.5 if official else 1.0)
        self.master_weight = master_weight if master_weight is not None else (0.5 if official else 1.0)
        self.shared_weight = shared_weight if shared_weight is not None else 0.5

    def _attention_input(self, images: torch.Tensor) -> torch.Tensor:
        x = self.glance(images)
        if self._renorm:
            x = x * self._renorm_scale.to(x.dtype) + self._renorm_shift.to(x.dtype)
        return x

    def _select_maps(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Structure map (channel average) and detail map (random channel in training, average in eval)."""
        b, c = maps.shape[:2]
        if self.distinct_channels:
            keep = distinct_channels_mask(maps)  # B×C
            w = keep.to(maps.dtype)
            structure = torch.einsum("bc,bchw->bhw", w, maps) / w.sum(1).view(b, 1, 1)
        else:
            keep = None
            structure = maps.mean(1)  # B×h×w
        if not self.training:
            return structure, maps.mean(1) if self.distinct_channels else structure
        if keep is None:
            idx = torch.randint(c, (b,), device=maps.device)
        else:
            # uniform among the kept channels, drawn on the device without a host sync
            idx = (torch.rand(b, c, device=maps.device) * keep).argmax(1)
        detail = maps[torch.arange(b, device=maps.device), idx]  # B×h×w
        return structure, detail

    def sample(self, images: torch.Tensor, attention: torch.Tensor, size: tuple[int, int],
               power: float = 1.0) -> SampleResult:
        """The attention sampler with this model's settings (``images`` is the full-resolution source)."""
        return attention_sample(images, attention, size, self.dense, self.iters, power=power, cap=self.cap,
                                grid=self.grid)

    def _localize(self, images: torch.Tensor):
        """Details localization: the attention net on the glance, with its own classifier; the trilinear maps
        (float32, no gradient) and the structure and detail maps chosen from them."""
        feats = self.att_head(self.attention_backbone(self._attention_input(images)))  # B×C×h'×w'
        attention_logits = self.att_classifier(self.att_post(feats).mean((2, 3)))  # B×K
        maps = trilinear_attention(feats.detach(), self.softmax_scale)  # B×C×h'×w' float32, no gradient
        return attention_logits, maps, *self._select_maps(maps)

    def _sample_size(self, images: torch.Tensor) -> tuple[int, int]:
        return (self.sample_size, self.sample_size) if self.sample_size else tuple(images.shape[-2:])

    def _master(self, x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the shared backbone on sampled images ``x`` (in ``images``' memory format)."""
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)  # grid_sample drops the input's memory format
        return self.backbone(x).mean((2, 3))

    def _predict(self, z: torch.Tensor, attention_logits: torch.Tensor) -> torch.Tensor:
        """The evaluation prediction from the shared classifier's logits on the structure image."""
        if self.prediction != "mean":
            return z
        probs = (z.float().softmax(1) + attention_logits.float().softmax(1)) / 2
        return probs.clamp_min(1e-12).log()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> TASNOutput:
        b = images.shape[0]
        attention_logits, maps, structure_map, detail_map = self._localize(images)

        # details extraction: non-uniform sampling of the full-resolution source
        size = self._sample_size(images)
        power = 2.0 if self.square_structure else 1.0
        s = self.sample(images, structure_map, size, power)
        if detail_map is structure_map and power == 1.0:
            d = s  # eval without the official options: the detail image is the structure image
        else:
            d = self.sample(images, detail_map, size)

        # details optimization: one shared backbone; part and master as one batch in training (as the
        # official code does, so they also share batch-norm statistics)
        f = self._master(torch.cat([d.images, s.images]) if self.training else s.images, images)  # 2B or B ×C
        z = self.classifier(f)  # the shared classifier: the prediction on the structure image
        shared_part_logits = master_logits = None
        if self.heads == "official":
            f_s = f[b:] if self.training else f
            master_logits = self.master_classifier(f_s)
            part_logits = self.part_classifier(f[:b]) if self.training else None
            shared_part_logits, logits = (z[:b], z[b:]) if self.training else (None, z)
        else:
            part_logits, logits = (z[:b], z[b:]) if self.training else (None, z)
        if not self.training:
            logits = self._predict(logits, attention_logits)
        return TASNOutput(logits=logits, attention=maps, attention_logits=attention_logits,
                          part_logits=part_logits, master_logits=master_logits,
                          shared_part_logits=shared_part_logits, structure_images=s.images,
                          detail_images=d.images, structure_map=structure_map, detail_map=detail_map,
                          structure_grid=s.grid, detail_grid=d.grid)

    # ---- glance and zoom (inference) --------------------------------------------------------
    looks_closer = True

    def look(self, images: torch.Tensor, **inputs) -> Glance:
        """The attention net: its classifier's prediction and the structure map the sampler reads."""
        attention_logits, maps, structure_map, _ = self._localize(images)
        return Glance(attention_logits, maps, {"structure_map": structure_map})

    def _structure_sample(self, images: torch.Tensor, glance: Glance) -> SampleResult:
        return self.sample(images, glance.state["structure_map"], self._sample_size(images),
                           2.0 if self.square_structure else 1.0)

    def closer(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The master net on the structure-sampled source (and, with ``prediction="mean"``, its mean with
        the glance's own prediction)."""
        z = self.classifier(self._master(self._structure_sample(images, glance).images, images))
        return self._predict(z, glance.logits)

    def zoom_boxes(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The region the structure sampler magnifies (:func:`lookcloser.layers.sampler.magnified_box`)."""
        return magnified_box(self._structure_sample(images, glance).grid, tuple(images.shape[-2:]), self.grid)

    def distillation(self, master_logits: torch.Tensor, part_logits: torch.Tensor) -> torch.Tensor:
        """Soft-target cross-entropy −Σ softmax(z_part/T)·log softmax(z_master/T), averaged over the batch."""
        t = self.temperature
        target = part_logits.float()
        if self.detach_soft_targets:
            target = target.detach()
        q_d = torch.softmax(target / t, dim=1)
        return -(q_d * torch.log_softmax(master_logits.float() / t, dim=1)).sum(1).mean()

    def loss(self, output: TASNOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Attention CE + part CE + master CE + λ·soft-target CE (part → master).

        With official heads the part and master terms use their own classifiers (which also carry the
        distillation), and the shared classifier adds ``shared_weight``·CE on each image. Without part
        logits (eval mode) only the attention and master terms are computed.
        """
        att = self.ce(output.attention_logits, labels)
        official = self.heads == "official"
        master_logits = output.master_logits if official else output.logits
        master = self.ce(master_logits, labels)
        total = self.att_weight * att + self.master_weight * master
        names, values = ["att_ce", "master_ce"], [att, master]
        if official:
            shared = self.ce(output.logits, labels)
            total = total + self.shared_weight * shared
            names.append("shared_master_ce")
            values.append(shared)
        if output.part_logits is not None:
            part = self.ce(output.part_logits, labels)
            soft = self.distillation(master_logits, output.part_logits)
            total = total + self.part_weight * part + self.distill_weight * soft
            names += ["part_ce", "distill"]
            values += [part, soft]
            if official and output.shared_part_logits is not None:
                shared_part = self.ce(output.shared_part_logits, labels)
                total = total + self.shared_weight * shared_part
                names.append("shared_part_ce")
                values.append(shared_part)
        terms = torch.stack([v.detach().float() for v in values]).tolist()  # one host sync for all terms
        return total, dict(zip(names, terms))

    def panels(self, output: TASNOutput, index: int, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Structure and detail maps over the image, and the two sampled images (drawn from ``image``
        through the sampling grids, so they show the de-normalized source).

        At test time the detail map is the channel average, the same as the structure map; the pictures
        then show the channel with the highest peak instead, so that one part proposal is visible.
        """
        img = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]  # 1×3×H×W
        s_map, s_grid = output.structure_map[index], output.structure_grid[index:index + 1]
        d_map, d_grid, d_name = output.detail_map[index], output.detail_grid[index:index + 1], "detail map"
        if output.part_logits is None and output.attention is not None:
            maps = output.attention[index].detach().float().cpu()  # C×h×w
            c = int(maps.flatten(1).amax(1).argmax())
            d_map, d_name = maps[c], f"detail map (channel {c})"
            d_grid = self.sample(img, d_map[None], tuple(d_grid.shape[1:3])).grid
        out = [("structure map", attention_overlay(image, s_map.detach().float().cpu())),
               (d_name, attention_overlay(image, d_map.detach().float().cpu()))]
        for name, grid in (("structure-preserved", s_grid), ("detail-preserved", d_grid)):
            s = resample(img, grid.detach().float().cpu(), self.grid)
            out.append((name, s[0].permute(1, 2, 0).clamp(0, 1).numpy()))
        return out


register_model("tasn")(TASN)
