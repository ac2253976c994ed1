"""RRA: Recursively Refined Attention ("Focus Longer to See Better").

Shroff, Chen, Wei, Wang, "Focus Longer to See Better: Recursively Refined Attention for Fine-Grained
Image Classification", CVPR Workshops 2020, arXiv 2005.10979. Official code:
VITA-Group/Focus-Longer-to-See-Better (PyTorch).

Two streams:

* **Global:** a backbone on the whole image, global average pooling, a linear classifier.
* **Local:** a second backbone (its own weights) on a patch cropped and resized (224 in the paper),
  pooled to a vector; a stacked LSTM unrolled over T steps; attention over the steps (a learned score
  per step, softmax over T, weighted sum of the LSTM outputs); a linear classifier.

Loss: CE(global) + λ·CE(local). Prediction: a weighted combination of both streams.

Where this differs from the official code, and why:

* Patches: the paper takes them from another weakly supervised method and the official code reads
  precomputed boxes for CUB only. Here they are proposed on the fly from the global stream's class
  activation map (:func:`lookcloser.layers.proposals.peak_proposals`: top-k peaks with NMS), so RRA
  runs on any data set; precomputed boxes in the official format can still be passed to ``forward``.
* Patch choice: in training one random proposal per image, as the official code; at evaluation the top
  proposal, where the official code draws a random one even at test time (not deterministic).
* ``mode="official"`` (the default) feeds the same patch embedding at every step, as the official code
  does; ``mode="refine"`` gives step t a progressively tighter crop around the patch (the paper's
  "focus longer" idea made literal), at T local backbone passes per image instead of one. Official is
  the default: on the synthetic set (8 classes, 320/160 images at 96 px, pretrained EfficientNet-Lite0,
  patches 64, T = 10, AdamW 1e-3, 8 epochs, seed 0, CPU) it reached 44.4% fused / 33.1% local-stream
  test top-1 against refine's 41.9% / 26.3% (same global stream: 40.6%), while training 3.2× faster
  (about 40 vs 12.5 images/s).
* Patch size: fixed squares of ``box_size`` = 0.32 of the image side, the median side of the official
  CUB patches (measured from the shipped arrays: median 0.32, 5–95 % 0.25–0.75), so the local stream
  sees its patch magnified (×1.56 with the paper's 448 image and 224 patches) as the official one does.
* The global stream is GAP + FC on the backbone's last map by default; ``global_head="official"`` adds
  the official code's two 1×1 convs with ReLU (C→1024→1024) before pooling. The local stream pools the
  backbone's map at ``local_stride`` (32 by default; 16 keeps VGG's 14×14 map at 224 by dropping its
  last max-pool, as the official code does).
* Views: the global stream sees the glance (``view_size``, 0 keeps the source size); patches are cut
  from the full-resolution source, so a patch holds detail the glance lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..draw import bar_chart, crop_box, draw_box
from ..layers.cam import class_activation_map
from ..layers.proposals import BoxFile, DatasetBoxes, crop_patches, nested_boxes, peak_proposals
from .base import FRACTION, STRIDES, VIEW_SIZE, WEIGHT, Glance, Method, ModelOutput, SampleInputs
from .options import Range
from .registry import register_model

MODES = ("official", "refine")
FUSIONS = ("logits", "probs")


@dataclass
class RRAOutput(ModelOutput):
    """Forward output of :class:`RRA`.

    Attributes:
        logits: B×K fused prediction (logits for ``fusion="logits"``, log-probabilities for ``"probs"``).
        attention: B×1×h×w class activation map of the global stream (the proposals' source).
        global_logits: B×K global stream.
        local_logits: B×K local stream.
        boxes: B×k×4 proposed patches ``[x0, y0, x1, y1]`` in source pixels, best first.
        box_scores: B×k their map values (map scaled to [0, 1]).
        box_valid: B×k False for slots non-maximum suppression left empty.
        patch_index: B index into ``boxes`` of the patch the local stream saw.
        step_boxes: B×T×4 the box seen at each time step (all equal in official mode).
        step_weights: B×T attention over time steps (sums to 1 over T).
        patches: B×3×P×P the patch the local stream saw (its first step in refine mode).
    """

    global_logits: torch.Tensor | None = None
    local_logits: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    box_scores: torch.Tensor | None = None
    box_valid: torch.Tensor | None = None
    patch_index: torch.Tensor | None = None
    step_boxes: torch.Tensor | None = None
    step_weights: torch.Tensor | None = None
    patches: torch.Tensor | None = None


class TimeAttention(nn.Module):
    """Attention over time steps: a learned score per step, softmax over T, weighted sum.

    Args:
        dim: size of each step's vector.
    """

    def __init__(self, dim: int):
        super().__init__()
        # no bias: softmax over T ignores a shift shared by all steps, so a bias would get no gradient
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``seq`` B×T×D → (pooled B×D, weights B×T)."""
        weights = self.score(seq).squeeze(-1).float().softmax(1)  # B×T
        pooled = (seq * weights.to(seq.dtype).unsqueeze(-1)).sum(1)  # B×D
        return pooled, weights


class RRA(Method):
    """Global stream + recurrent local stream over a proposed patch.

    Args:
        backbone: timm model of the global stream.
        num_classes: number of classes.
        pretrained: offline ImageNet weights for both backbones.
        weights: local state dict file for both backbones (the local one only if it is the same model).
        local_backbone: timm model of the local stream; empty uses ``backbone`` (with separate weights).
        output_stride: stride of the global stream's last map (finer maps give finer proposals).
        view_size: side of the glance, the whole image the global stream sees (0 keeps the source size).
        patch_size: side the patch is resized to for the local stream (224 in the paper).
        global_head: ``"gap"`` (pooling + linear) or ``"official"`` (two 1×1 convs C→1024→1024 with ReLU
            before the pooling, as the official code).
        local_stride: output stride of the local stream's map (32; 16 drops VGG's last max-pool, official).
        steps: LSTM time steps T (10 in the paper).
        lstm_layers: stacked LSTM layers (2 in the official code).
        hidden_size: LSTM hidden size (512 in the official code).
        mode: ``"official"`` (the same patch embedding at every step) or ``"refine"`` (step t sees a
            tighter crop around the patch).
        refine_scale: in refine mode, the side of the last step's crop relative to the patch (the
            sides shrink linearly from 1 to this).
        num_proposals: proposals per image (the official files hold 10).
        box_size: proposal side as a fraction of the image side (0.32: the official patches' median side).
        nms_iou: largest IoU between two proposals.
        local_weight: λ, the weight of CE(local) in the loss.
        fusion_weight: weight of the local stream in the prediction, ``global + w·local``.
        fusion: ``"logits"`` adds the logits (the official code; ``.logits`` are logits) or ``"probs"``
            takes ``log((p_global + w·p_local) / (1 + w))`` (``.logits`` are log-probabilities).
        drop_rate: dropout before both classifiers.
        box_file: a box file of precomputed patches (:class:`lookcloser.layers.proposals.BoxFile`, e.g. the
            official CUB boxes) that replaces the proposals in training and evaluation; training then uses
            the evaluation view (the boxes refer to it). Empty: patches come from the proposals.
    """

    option_ranges = {
        "output_stride": STRIDES, "view_size": VIEW_SIZE, "patch_size": Range(16, None), "global_head": ("gap", "official"),
        "local_stride": STRIDES, "steps": Range(1, None), "lstm_layers": Range(1, None), "hidden_size": Range(1, None),
        "mode": MODES, "refine_scale": Range(0, 1, lo_open=True), "num_proposals": Range(1, None),
        "box_size": Range(0, 1, lo_open=True), "nms_iou": FRACTION, "local_weight": WEIGHT, "fusion_weight": WEIGHT,
        "fusion": FUSIONS, "drop_rate": Range(0, 1, hi_open=True),
    }

    def __init__(self, *, backbone: str, num_classes: int, pretrained: bool = False, weights: str = "",
                 local_backbone: str = "", output_stride: int = 32, view_size: int = 0, patch_size: int = 224,
                 global_head: str = "gap", local_stride: int = 32, steps: int = 10,
                 lstm_layers: int = 2, hidden_size: int = 512, mode: str = "official", refine_scale: float = 0.5,
                 num_proposals: int = 4, box_size: float = 0.32, nms_iou: float = 0.3, local_weight: float = 1.0,
                 fusion_weight: float = 1.0, fusion: str = "logits", drop_rate: float = 0.0, box_file: str = ""):
        super().__init__()
        self.view_size = view_size
        local_backbone = local_backbone or backbone
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                                 strict_stride=output_stride != 32)
        self.local_backbone = Backbone(local_backbone, pretrained=pretrained, output_stride=local_stride,
                                       strict_stride=local_stride != 32, stride_option="local_stride",
                                       weights=weights if local_backbone == backbone else "")
        self.dropout = nn.Dropout(drop_rate)
        channels = self.backbone.channels
        if global_head == "official":
            self.global_head = nn.Sequential(nn.Conv2d(channels, 1024, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True))
            for conv in (self.global_head[0], self.global_head[2]):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as the official code
                nn.init.zeros_(conv.bias)
            channels = 1024
        else:
            self.global_head = nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        self.lstm = nn.LSTM(self.local_backbone.channels, hidden_size, lstm_layers, batch_first=True)
        self.time_attention = TimeAttention(hidden_size)
        self.local_classifier = nn.Linear(hidden_size, num_classes)
        for fc in (self.classifier, self.local_classifier):
            nn.init.normal_(fc.weight, 0, 0.01)  # as the official code
            nn.init.zeros_(fc.bias)
        self.mode, self.steps, self.patch_size = mode, steps, patch_size
        self.refine_scale, self.num_proposals = refine_scale, num_proposals
        self.box_size, self.nms_iou = box_size, nms_iou
        self.local_weight, self.fusion_weight, self.fusion = local_weight, fusion_weight, fusion
        self.box_file = BoxFile(box_file) if box_file else None  # read now: a missing file fails early

    def sample_inputs(self, dataset, preprocess: dict) -> SampleInputs | None:
        """With a box file, each sample's precomputed boxes, mapped onto its evaluation view (``boxes=``)."""
        if self.box_file is None:
            return None
        return SampleInputs(DatasetBoxes(self.box_file, dataset, preprocess), fixed_view=True)

    def step_scales(self) -> torch.Tensor:
        """Crop side of each step relative to the patch: all 1 (official) or 1 → ``refine_scale`` (refine)."""
        if self.mode == "official" or self.steps == 1:
            return torch.ones(self.steps)
        return torch.linspace(1.0, self.refine_scale, self.steps)

    def _global(self, images: torch.Tensor):
        """The global stream on the glance: its logits and the class activation map of its prediction."""
        fmap = self.global_head(self.backbone(self.glance(images)))  # B×C×h×w
        global_logits = self.classifier(self.dropout(fmap.mean((2, 3))))  # B×K
        # where the global stream saw the evidence for its prediction
        return global_logits, class_activation_map(fmap, self.classifier, global_logits)  # B×1×h×w

    def _candidates(self, images: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor | None):
        """Patch candidates in source pixels (the map scaled onto the source, whatever the glance's size),
        or the precomputed ``boxes``: ``(boxes B×N×4, scores B×N, valid B×N)``."""
        b, _, height, width = images.shape
        if boxes is None:
            props = peak_proposals(cam, (height, width), k=self.num_proposals, box_size=self.box_size,
                                   nms_iou=self.nms_iou)
            return props.boxes, props.scores, props.valid
        cand = boxes.reshape(b, -1, 4).to(device=images.device, dtype=torch.float32)
        return (cand, torch.ones(cand.shape[:2], device=images.device),
                torch.ones(cand.shape[:2], dtype=torch.bool, device=images.device))

    def _local(self, images: torch.Tensor, patch: torch.Tensor):
        """The local stream on patches cut from the full-resolution source: ``(logits, step boxes, step
        weights, the patches shown)``."""
        b = images.shape[0]
        step_boxes = nested_boxes(patch, self.step_scales().to(patch.device))  # B×T×4
        if self.mode == "official":
            crops = crop_patches(images, patch, self.patch_size)  # B×3×P×P
            shown = crops
            feat = self.local_backbone(_like(crops, images)).mean((2, 3))  # B×D
            seq = feat.unsqueeze(1).expand(-1, self.steps, -1)  # B×T×D, the same embedding every step
        else:
            crops = crop_patches(images, step_boxes, self.patch_size)  # (B·T)×3×P×P
            shown = crops.view(b, self.steps, *crops.shape[1:])[:, 0]
            seq = self.local_backbone(_like(crops, images)).mean((2, 3)).reshape(b, self.steps, -1)  # B×T×D
        out, _ = self.lstm(seq)  # B×T×hidden
        pooled, step_weights = self.time_attention(out)  # B×hidden, B×T
        return self.local_classifier(self.dropout(pooled)), step_boxes, step_weights, shown

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                boxes: torch.Tensor | None = None) -> RRAOutput:
        """Classify a batch.

        Args:
            images: B×3×H×W.
            labels: unused (patches come from the prediction's map, identically in train and eval).
            boxes: optional precomputed patches B×N×4 (or B×4) ``[x0, y0, x1, y1]`` in source pixels, best
                first (see :class:`lookcloser.layers.proposals.BoxFile`); replaces the proposals.
        """
        b = images.shape[0]
        global_logits, cam = self._global(images)
        cand, scores, valid = self._candidates(images, cam, boxes)
        if self.training:
            # one random proposal per image, as the official loader (random.choices over its 10 boxes)
            index = torch.multinomial(valid.float(), 1).squeeze(1)  # B
        else:
            index = torch.zeros(b, dtype=torch.long, device=images.device)  # the best proposal
        patch = cand[torch.arange(b, device=images.device), index]  # B×4
        local_logits, step_boxes, step_weights, shown = self._local(images, patch)
        return RRAOutput(logits=self.fuse(global_logits, local_logits), attention=cam, global_logits=global_logits,
                         local_logits=local_logits, boxes=cand, box_scores=scores, box_valid=valid,
                         patch_index=index, step_boxes=step_boxes, step_weights=step_weights, patches=shown)

    # ---- glance and zoom (inference) --------------------------------------------------------
    looks_closer = True

    def look(self, images: torch.Tensor, *, boxes: torch.Tensor | None = None) -> Glance:
        """The global stream: its prediction and its class activation map (and the precomputed boxes)."""
        global_logits, cam = self._global(images)
        return Glance(global_logits, cam, {} if boxes is None else {"boxes": boxes})

    def zoom_boxes(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The patch the local stream reads: the best proposal (or the first precomputed box)."""
        cand, _, _ = self._candidates(images, glance.attention, glance.state.get("boxes"))
        return cand[:, 0]

    def closer(self, images: torch.Tensor, glance: Glance) -> torch.Tensor:
        """The local stream on the best patch, fused with the global stream."""
        return self.fuse(glance.logits, self._local(images, self.zoom_boxes(images, glance))[0])

    def fuse(self, global_logits: torch.Tensor, local_logits: torch.Tensor) -> torch.Tensor:
        """The prediction: ``global + w·local`` logits, or the log of the weighted mean of probabilities."""
        w = self.fusion_weight
        if self.fusion == "logits":
            return global_logits + w * local_logits
        p = (global_logits.float().softmax(1) + w * local_logits.float().softmax(1)) / (1 + w)
        return p.clamp_min(1e-12).log()

    def loss(self, output: RRAOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """CE(global) + λ·CE(local)."""
        ce_global = self.ce(output.global_logits, labels)
        ce_local = self.ce(output.local_logits, labels)
        loss = ce_global + self.local_weight * ce_local
        return loss, {"ce_global": ce_global.detach().item(), "ce_local": ce_local.detach().item()}

    def panels(self, output: RRAOutput, index: int, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The proposals on the image (the patch used in red, its tighter step crops in blue in refine
        mode, the other proposals in yellow), the patch itself, and a bar per time step's attention weight.

        ``image`` is the de-normalized source (H×W×3 in [0, 1]), so boxes are already in its pixels.
        """
        h, w = image.shape[:2]
        boxes = output.boxes[index].detach().float().cpu()
        valid = output.box_valid[index].cpu()
        chosen = int(output.patch_index[index])
        canvas = image.copy()
        for j in range(len(boxes)):
            if valid[j] and j != chosen:
                draw_box(canvas, boxes[j], (1.0, 1.0, 0.0), 1)
        steps = output.step_boxes[index].detach().float().cpu()
        if self.mode == "refine":
            for t in range(1, len(steps)):
                draw_box(canvas, steps[t], (0.2, 0.6, 1.0), 1)
        draw_box(canvas, boxes[chosen], (1.0, 0.1, 0.1), 2)
        patch = crop_box(image, boxes[chosen])
        weights = output.step_weights[index].detach().float().cpu().numpy()
        best = int(weights.argmax())
        return [("proposals (red: patch used)", canvas), ("patch", patch),
                (f"step weights (T={len(weights)}, max {weights[best]:.2f} at t={best + 1})",
                 bar_chart(weights, h, w))]


def _like(crops: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``crops`` in the memory format of ``images`` (roi_align returns contiguous tensors)."""
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return crops.contiguous(memory_format=torch.channels_last)
    return crops


register_model("rra")(RRA)
