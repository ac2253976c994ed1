"""The phases of a run and its learning rates: heads first, then everything.

From pretrained weights a run trains its method's new layers on frozen backbones for ``head_epochs``
epochs (BatchNorm statistics used and kept), then every layer, the backbones at ``backbone_lr_scale`` of
the rate (and, with ``layer_decay`` < 1, each backbone layer at a share of that falling towards the input)
and their BatchNorm in training mode or frozen (``bn``). Each phase has its own warm-up and
learning-rate shape (cosine, step or constant).
"""

from __future__ import annotations

import math

import torch

from ..config import SMALL_SET_LR_SCALE

# the heads-first epochs' rate when --head-lr is not given, as a multiple of --lr: 3e-3 against AdamW's 1e-3
# trained a linear head on frozen cub100 features nearest the probe's optimum in two epochs (docs/benchmarks.md)
HEAD_LR_FACTOR = 3.0


def lr_factor(step: int, total: int, warmup: int, steps_per_epoch: int, cfg) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total`` (linear warm-up, then the schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** math.floor(step / max(1, steps_per_epoch * cfg.step_epochs))
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def phase_lrs(step: int, steps_per_epoch: int, cfg) -> tuple[float, float]:
    """``(heads' learning rate, backbones' learning rate)`` at optimizer step ``step``.

    The heads-first epochs (``cfg.head_epochs``, resolved) and the epochs that train everything are two
    phases, each with its own warm-up and schedule: the heads at ``head_lr`` (or 3 × ``lr``) with the backbones
    frozen (rate 0), then the heads at ``lr`` and the backbones at ``lr * backbone_lr_scale``, each at
    :data:`~lookcloser.config.SMALL_SET_LR_SCALE` of that under the small-set rule (``small_set`` on).
    """
    head_steps = max(0, cfg.head_epochs) * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < head_steps:
        f = lr_factor(step, head_steps, min(warmup, head_steps), steps_per_epoch, cfg)
        return (cfg.head_lr or HEAD_LR_FACTOR * cfg.lr) * f, 0.0
    f = lr_factor(step - head_steps, cfg.epochs * steps_per_epoch, warmup, steps_per_epoch, cfg)
    lr = cfg.lr * (SMALL_SET_LR_SCALE if cfg.small_set == "on" else 1.0)
    return lr * f, lr * cfg.backbone_lr_scale * f


def bn_stays_frozen(cfg) -> bool:
    """Whether the backbones' BatchNorm stays frozen after the heads (``bn: frozen``, or the small-set rule)."""
    return cfg.bn == "frozen" or cfg.small_set == "on"


def backbone_modules(model) -> list[torch.nn.Module]:
    """The model's pretrained backbones (:class:`lookcloser.backbones.Backbone`), each once."""
    from ..backbones import Backbone

    return [m for m in model.modules() if isinstance(m, Backbone)]


def set_phase(model, *, heads_only: bool, bn_frozen: bool) -> None:
    """Put a model in training mode for a phase (call it where ``model.train()`` would be called).

    ``heads_only``: every backbone is frozen: no gradient (so no backward pass through it), evaluation
    mode (running BatchNorm statistics used and kept, no dropout or drop-path), so a heads-first epoch
    leaves each backbone tensor bit-identical. Otherwise the backbones train; with ``bn_frozen`` their
    BatchNorm layers keep normalizing with (and keep) their running statistics while scale and shift train.
    """
    model.train()
    for backbone in backbone_modules(model):
        backbone.requires_grad_(not heads_only)
        if heads_only:
            backbone.eval()
        elif bn_frozen:
            for m in backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()


def layer_scales(model, decay: float) -> dict[int, float]:
    """Layer-wise learning-rate decay: ``{id(parameter): scale}`` for every backbone parameter.

    Each backbone's layers are grouped by its timm model's own ``group_matcher`` (stem, each block, the last
    layers) from the input (group 0) to the output (group ``L - 1``); a parameter in group ``i`` learns at
    ``decay ** (L - i)`` of the backbone rate, so the layers nearest the input move least and the method's
    own layers (not listed, scale 1) most, as in BEiT's fine-tuning. Models without a group matcher fall
    back on timm's automatic grouping. ``decay`` 1 gives every parameter 1.
    """
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    scales: dict[int, float] = {}
    for backbone in backbone_modules(model):
        body = backbone.body
        if decay == 1.0:
            layer_of = {}
        elif hasattr(body, "group_matcher"):
            layer_of = group_parameters(body, body.group_matcher(coarse=False), reverse=True)
        else:
            layer_of = auto_group_layers(body)
        layers = max(layer_of.values(), default=0) + 1
        for name, p in body.named_parameters():
            scales[id(p)] = decay ** (layers - layer_of.get(name, layers - 1))
    return scales


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW with no weight decay on norms and biases; each group says whether it holds backbone
    parameters (``"backbone"``), whose rate :func:`phase_lrs` sets apart, and its ``"lr_scale"`` on that
    rate (:func:`layer_scales`; 1 for every group unless ``cfg.layer_decay`` < 1)."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    scales = layer_scales(model, cfg.layer_decay)
    groups: dict[tuple[bool, float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad or id(p) in backbone_ids:  # a backbone frozen for the heads-first epochs trains later
            is_backbone = id(p) in backbone_ids
            groups.setdefault((is_backbone, -scales.get(id(p), 1.0), p.ndim <= 1), []).append(p)
    param_groups = []
    for (is_backbone, neg_scale, no_decay), params in sorted(groups.items()):
        scale = -neg_scale
        group = {"params": params, "lr": cfg.lr * scale * (cfg.backbone_lr_scale if is_backbone else 1.0),
                 "backbone": is_backbone, "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        if scale != 1.0:
            group["lr_scale"] = scale
        param_groups.append(group)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


class Schedule:
    """A run's phases and rates over its optimizer steps.

    Args:
        cfg: the run's (resolved) ``TrainConfig``.
        optimizer: built by :func:`build_optimizer`; which groups hold backbone parameters is read from
            the groups as built (a resumed optimizer state may come from before the flag existed).
        steps_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        self.cfg = cfg
        self.optimizer = optimizer
        self.group_is_backbone = [g["backbone"] for g in optimizer.param_groups]
        self.group_scale = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = cfg.head_epochs + cfg.epochs
        self.total_steps = steps_per_epoch * self.total_epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    def heads_only(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) is a heads-first epoch."""
        return epoch < self.cfg.head_epochs

    def enter(self, model, epoch: int) -> None:
        """Training mode for the epoch's phase (:func:`set_phase`)."""
        set_phase(model, heads_only=self.heads_only(epoch), bn_frozen=bn_stays_frozen(self.cfg))

    def set_lr(self, step: int) -> None:
        """The groups' rates for optimizer step ``step``."""
        head, backbone = phase_lrs(step, self.steps_per_epoch, self.cfg)
        for group, is_backbone, scale in zip(self.optimizer.param_groups, self.group_is_backbone, self.group_scale):
            group["lr"] = (backbone if is_backbone else head) * scale

    def lr(self, backbone: bool = False) -> float:
        """The heads' (or backbones') current rate, before any layer-wise scale (the backbone's last layers
        learn at ``layer_decay`` of it); 0 for backbones where the model has none."""
        return next((g["lr"] / s for g, b, s in zip(self.optimizer.param_groups, self.group_is_backbone,
                                                     self.group_scale) if b == backbone), 0.0)

    def state(self, step: int) -> dict[str, int]:
        """What a checkpoint records of the schedule."""
        return {"step": step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}
