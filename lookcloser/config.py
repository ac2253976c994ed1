"""Typed, grouped run configuration.

A run is described by three dataclasses (data, model, train). YAML is only their saved form: a recipe
file holds the same groups (``data:``, ``model:``, ``train:``), command-line flags override single
fields, and the resolved result is written into each run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LookcloserError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise LookcloserError(msg)


# heads-first epochs a run from pretrained weights gets when it does not say (chosen on held-out training
# images: see docs/benchmarks.md, "Heads first: how the defaults were chosen")
DEFAULT_HEAD_EPOCHS = 2
# ... and on a small training set as many more as give the heads this many optimizer steps (few-shot cub100:
# 2 epochs of 5 images per class are 30 steps, and the heads were far from converged; docs/benchmarks.md,
# "Few images per class"); full cub100 at batch 32 has 81+ steps per epoch, so it keeps 2
MIN_HEAD_STEPS = 120
MAX_AUTO_HEAD_EPOCHS = 30
# ... and there, after the heads, BatchNorm frozen and everything at this share of --lr (``small_set``): at 5
# images per class the epochs of everything at the full rate pulled TASN from its heads' 68.2 to 61.6 held-out
# (66.6 with the rule; the baseline 74.2 -> 76.4; docs/benchmarks.md, "Few images per class")
SMALL_SET_LR_SCALE = 0.1


def auto_head_epochs(steps_per_epoch: int | None) -> int:
    """The heads-first epochs of a run from pretrained weights that does not say: :data:`DEFAULT_HEAD_EPOCHS`,
    or, where an epoch has fewer steps, enough epochs for :data:`MIN_HEAD_STEPS` steps (at most
    :data:`MAX_AUTO_HEAD_EPOCHS`). ``None``: the training set is not known yet."""
    if not steps_per_epoch:
        return DEFAULT_HEAD_EPOCHS
    need = -(-MIN_HEAD_STEPS // max(1, int(steps_per_epoch)))
    return max(DEFAULT_HEAD_EPOCHS, min(MAX_AUTO_HEAD_EPOCHS, need))


def small_training_set(steps_per_epoch: int | None) -> bool:
    """Whether the default heads-first epochs would give the heads fewer than :data:`MIN_HEAD_STEPS` optimizer
    steps, so that :func:`auto_head_epochs` lengthens them (an epoch under 60 steps: under 1,920 images at
    batch 32); ``None`` (not known yet): False."""
    return auto_head_epochs(steps_per_epoch) > DEFAULT_HEAD_EPOCHS


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# the heads of timm's augmentation policy strings, and torchvision's TrivialAugmentWide
AUTO_AUGMENT = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a", "trivial")


@dataclass
class DataConfig:
    """What to read and how to prepare it."""

    data: str = "synth"
    """Dataset spec: ``FORMAT:PATH``, a folder (format detected), or ``synth[:key=value,...]``."""
    image_size: int = 224
    """Side of the square source image the data pipeline delivers; each method takes its glance from it at
    its view_size and reads its zooms from it at full resolution."""
    resize_ratio: float = 1.143
    """Images are resized to ``image_size * resize_ratio`` before the (random or center) crop."""
    hflip: bool = True
    """Random horizontal flips in training."""
    color_jitter: float = 0.0
    """Strength of brightness/contrast/saturation jitter in training (0 disables it)."""
    squash: bool = False
    """Resize the whole image to a square, ignoring its aspect, and evaluate without a center crop
    (WS-DAN's and RRA's official loaders)."""
    rotation: float = 0.0
    """Random rotation in training, up to ± this many degrees (TASN's official loader: 30)."""
    crop_scale: float = 1.0
    """Below 1: a random-resized crop in training (torchvision's RandomResizedCrop of the resized image,
    area share from this to 1, aspect 3/4 to 4/3) instead of a random crop of fixed size."""
    auto_augment: str = ""
    """A learned-policy augmentation in training: a timm policy string (``rand-m9-mstd0.5`` for RandAugment,
    ``augmix-m5-w4-d2``, ``original``) or ``trivial`` (TrivialAugmentWide); empty: none."""
    random_erasing: float = 0.0
    """Probability of timm's random erasing (one rectangle of per-pixel noise) per training image."""
    mixup: float = 0.0
    """Mixup's Beta(α, α) in training (timm's Mixup; 0: off); baseline only. Mixing pairs images of one
    process's batch, so it is the one augmentation that depends on the number of processes."""
    cutmix: float = 0.0
    """CutMix's Beta(α, α) in training (with mixup, each batch is one or the other); baseline only."""
    pca_lighting: float = 0.0
    """PCA lighting noise in training, the std of its coefficients (TASN's official loader: 0.1)."""
    batch_size: int = 32
    """Images per optimizer step per process (before gradient accumulation)."""
    workers: int = 2
    """DataLoader worker processes (0 loads in the main process)."""
    balance: str = "none"
    """``sampler``: each training epoch draws its images with replacement, with probabilities inversely
    proportional to their class's size, so every class is seen about equally often (long-tailed data such as
    NABirds or iNaturalist); ``none``: every image once per epoch."""
    cache: bool = False
    """Keep the decoded, resized images in shared memory after the first epoch, so later epochs skip decoding
    (all loader workers share one copy)."""
    cache_gb: float = 8.0
    """The most memory the decoded-image cache may take; a data set that needs more is refused at the start."""
    max_unreadable: float = 0.2
    """Stop training, listing the files, when more than this share of the training images cannot be read
    (fewer are skipped with a warning each)."""
    eval_split: str = ""
    """Split used for per-epoch evaluation (and best.pt, unless it is test: see ``best_on_test``); empty
    picks holdout when ``holdout`` is set, else val, else test."""
    holdout: float = 0.0
    """Hold out this share of each class's training images (the same ones whatever the seed) as the split
    ``holdout``, train on the rest and evaluate every epoch, and choose best.pt, on it: the test images stay
    unseen until ``lookcloser evaluate RUN`` (0: train on the whole training split)."""

    def __post_init__(self):
        _check(self.image_size >= 16, f"image_size must be at least 16, got {self.image_size}")
        _check(self.resize_ratio >= 1.0, f"resize_ratio must be >= 1, got {self.resize_ratio}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        _check(0.0 <= self.color_jitter <= 1.0, f"color_jitter must be in [0, 1], got {self.color_jitter}")
        _check(0.0 <= self.rotation <= 180.0, f"rotation must be in [0, 180] degrees, got {self.rotation}")
        _check(0.0 <= self.pca_lighting <= 1.0, f"pca_lighting must be in [0, 1], got {self.pca_lighting}")
        _check(0.0 <= self.max_unreadable <= 1.0, f"max_unreadable must be in [0, 1], got {self.max_unreadable}")
        _check(self.cache_gb > 0, f"cache_gb must be positive, got {self.cache_gb}")
        _check(self.balance in ("none", "sampler"), f"balance must be none or sampler, got {self.balance!r}")
        _check(0.05 <= self.crop_scale <= 1.0, f"crop_scale must be in [0.05, 1], got {self.crop_scale}")
        _check(0.0 <= self.random_erasing <= 1.0, f"random_erasing must be in [0, 1], got {self.random_erasing}")
        _check(self.mixup >= 0 and self.cutmix >= 0, f"mixup and cutmix must be >= 0, got {self.mixup}, {self.cutmix}")
        head = self.auto_augment.split("-")[0]
        _check(not self.auto_augment or head in AUTO_AUGMENT,
               f"auto_augment must be a timm policy string ({', '.join(a for a in AUTO_AUGMENT if a != 'trivial')}, "
               f"e.g. rand-m9-mstd0.5) or trivial, got {self.auto_augment!r}")
        _check(0.0 <= self.holdout <= 0.5, f"holdout must be in [0, 0.5] (a share of each class's training images), "
                                           f"got {self.holdout}")


@dataclass
class ModelConfig:
    """Which method, on which backbone, with which weights."""

    method: str = "baseline"
    """Registered method name (see ``lookcloser.list_models()``)."""
    backbone: str = "resnet18"
    """Any timm model name."""
    pretrained: bool = False
    """Start the backbone from pretrained weights: an installed offline package (efficientnet_lite0/lite2),
    else timm's own route for any model name or tag (the Hugging Face hub's local cache; the hub once where
    the cache lacks them; HF_HUB_OFFLINE=1 keeps it to the cache)."""
    weights: str = ""
    """A local .pth or .safetensors state dict for the backbone (timm or torchvision naming)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method-specific keyword options, passed to the method's constructor."""

    def __post_init__(self):
        _check(bool(self.backbone), "backbone must name a timm model, e.g. resnet18")
        _check(isinstance(self.options, dict), "model.options must be a mapping of keyword options")


@dataclass
class TrainConfig:
    """The optimization and the loop."""

    epochs: int = 10
    """Passes over the training split with every layer training (after ``head_epochs``); 0 trains the heads-first
    epochs alone (the backbones stay as they were loaded: a linear probe's cost, with augmentation)."""
    optimizer: str = "sgd"
    """``sgd`` (momentum, Nesterov off) or ``adamw``."""
    lr: float = 0.01
    """Peak learning rate for a batch of ``batch_size`` (not rescaled by the world size)."""
    backbone_lr_scale: float = 1.0
    """Multiplier on the learning rate of pretrained backbone parameters (e.g. 0.1)."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay of the backbones (BEiT's fine-tuning; timm's layer groups): the backbone's
    last layer group learns at ``layer_decay`` of the backbone rate, the one before at its square, down to the
    stem; 1: every backbone layer at the backbone rate."""
    head_epochs: int = -1
    """Heads first: this many epochs before ``epochs`` in which every backbone is frozen (weights and BatchNorm
    statistics; no backward through it) and only the method's own layers train, at ``head_lr``; then
    everything trains for ``epochs``. -1: from pretrained weights (--pretrained or --weights) 2, or on a small
    training set enough epochs for 120 optimizer steps (at most 30; 8 at 5 images per class of 100 classes and
    batch 32), stated in the log and saved resolved; from random weights 0."""
    head_lr: float = 0.0
    """Peak learning rate of the heads-first epochs (0: 3 × ``lr``); they have their own warm-up and schedule."""
    head_init: str = "random"
    """Where the baseline's classifier starts: ``random`` (the layer's own initialization; the heads-first epochs
    train it) or ``probe`` (linear probing, then fine-tuning: before the first epoch the run fits ``lookcloser
    probe``'s logistic regression on the frozen pretrained features of its training images, its strength chosen
    on a tenth of them, and starts the classifier from it; with ``head_epochs`` 0 everything then fine-tunes
    from there). ``probe`` needs pretrained weights and the baseline method (one linear layer on the pooled
    features)."""
    bn: str = "train"
    """BatchNorm of the backbones after the heads-first epochs: ``train`` (batch statistics, running
    statistics updated) or ``frozen`` (the running statistics the heads were fitted on; scale and shift
    still train). Frozen lost 1.0 point of held-out top-1 on cub100 (docs/benchmarks.md)."""
    small_set: str = "auto"
    """After the heads-first epochs on a small training set: ``on`` keeps BatchNorm frozen (as ``bn: frozen``)
    and trains everything, heads and backbones, at a tenth of ``lr`` (the heads-first rate is unchanged);
    ``off`` keeps the recipe as it is. ``auto``: on where a run from pretrained weights trains its heads first
    and an epoch is under 60 optimizer steps (where the default heads-first epochs would give the heads under
    120 steps: 5 or 10 images per class of 100 classes at batch 32), off elsewhere (full cub100 keeps its
    recipe); stated in the log and saved resolved."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """Decoupled for AdamW, L2 for SGD; not applied to norms and biases."""
    schedule: str = "cosine"
    """``cosine``, ``step`` or ``constant``, updated every optimizer step."""
    warmup_epochs: float = 0.0
    """Linear warm-up from 0 over this many epochs (fractions allowed)."""
    step_epochs: float = 30.0
    """For ``step``: multiply the learning rate by ``gamma`` every this many epochs."""
    gamma: float = 0.1
    """For ``step``: the decay factor."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy terms that a method's objective uses."""
    accum_steps: int = 1
    """Gradient accumulation: optimizer steps happen every this many batches."""
    precision: str = "auto"
    """Autocast precision: ``auto`` (bfloat16 on a GPU that computes it natively, float16 with a gradient
    scaler on one that does not, such as a T4 or V100; float32 on the CPU), or ``bf16``, ``fp16`` (with a
    gradient scaler) or ``fp32`` on any device."""
    bf16: bool = True
    """Allow reduced-precision autocast; --no-bf16 (kept from earlier versions) means --precision fp32."""
    channels_last: bool = True
    """Use the channels-last memory format for model and images (faster convolutions on GPUs and on
    CPUs: ×1.3-1.5 training, ×1.3 inference on this project's 2-core CPU)."""
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    sync_bn: bool = False
    """Under torchrun, normalize every BatchNorm layer with the statistics of the whole global batch (sums
    all-reduced over the processes, on CPUs and GPUs), so that N processes with batch b train like one
    process with batch N·b."""
    seed: int = 0
    """Seed of every random number generator in the run."""
    threads: int = 0
    """Intra-op CPU threads of the training process; 0 picks them at the start: the cores that other work does
    not keep busy (the machine's busy share over 0.3 s from /proc/stat, at least 1), or OMP_NUM_THREADS where
    it is set (torchrun sets it)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""
    eval_every: int = 1
    """Evaluate on the evaluation split every this many epochs (and always after the last); 0 never
    evaluates during training (no best.pt; evaluate the run afterwards)."""
    checkpoint_minutes: float = 30.0
    """Also save last.pt in the middle of an epoch once this many minutes have passed since the last save, so
    that a long epoch killed part way (a time limit, a preempted machine) resumes from that batch with the
    weights it would have had; 0 saves at the ends of epochs only. A SIGTERM saves at the next optimizer step
    and stops the run, whatever this is."""
    best_on_test: bool = False
    """Choose best.pt by the per-epoch top-1 on the test split when test is the evaluation split (the papers'
    practice: a maximum over epochs on test flatters the model). Off, best.pt is chosen only on a split
    that is not test (holdout or val); with test as the only split it is still scored every epoch, for the
    curves, and no best.pt is written, so ``lookcloser evaluate RUN`` reports the final weights."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run folder's tb/ (scalars every epoch, attention pictures after
    each evaluation), where the tensorboard package is installed."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 disables)."""
    ema: float = 0.0
    """Keep an exponential moving average of the weights (parameters and BatchNorm statistics) with this decay
    per optimizer step, by timm's ModelEmaV3 (0.99 averages over about the last 100 steps); the per-epoch
    evaluation, best.pt and every command that reads the run then use the averaged weights. 0: off."""

    def __post_init__(self):
        _check(self.epochs >= 0, f"epochs must be >= 0 (0: the heads-first epochs alone), got {self.epochs}")
        _check(self.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.backbone_lr_scale >= 0, f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        _check(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1] (1: off), got {self.layer_decay}")
        _check(self.head_epochs >= -1, f"head_epochs must be >= 0 (or -1: chosen by the weights and the training set's size), got {self.head_epochs}")
        _check(self.head_lr >= 0, f"head_lr must be >= 0 (0: lr), got {self.head_lr}")
        _check(self.bn in ("train", "frozen"), f"bn must be train or frozen, got {self.bn!r}")
        _check(self.head_init in ("random", "probe"), f"head_init must be random or probe, got {self.head_init!r}")
        _check(self.small_set in ("auto", "on", "off"), f"small_set must be auto, on or off, got {self.small_set!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check(self.schedule in ("cosine", "step", "constant"),
               f"schedule must be cosine, step or constant, got {self.schedule!r}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.step_epochs > 0, f"step_epochs must be positive, got {self.step_epochs}")
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.accum_steps >= 1, f"accum_steps must be at least 1, got {self.accum_steps}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0 (0: never during training), got {self.eval_every}")
        _check(self.checkpoint_minutes >= 0, "checkpoint_minutes must be >= 0 (0: save at the ends of epochs only), "
               f"got {self.checkpoint_minutes}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.threads >= 0, f"threads must be >= 0 (0: picked from the free cores), got {self.threads}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(0 < self.gamma <= 1, f"gamma must be in (0, 1] (a decay factor), got {self.gamma}")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        _check(0 <= self.ema < 1, f"ema must be in [0, 1) (a decay per step, e.g. 0.99; 0 disables it), got {self.ema}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(bool(self.device), "device must be auto, cpu or cuda[:N]")


@dataclass
class RunConfig:
    """Everything a training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def starts_pretrained(self) -> bool:
        """Whether the backbone starts from trained weights (a package, the hub, or a file)."""
        return bool(self.model.pretrained or self.model.weights)

    def resolved(self, steps_per_epoch: int | None = None) -> "RunConfig":
        """A copy with every ``auto`` choice made: ``head_epochs`` -1 follows the weights and, given the
        optimizer steps of an epoch, the training set's size (:func:`auto_head_epochs`); ``small_set`` auto,
        given those steps, follows it too (:func:`small_training_set`; off without heads first; unknown steps
        leave it auto)."""
        cfg = self
        if cfg.train.head_epochs < 0:
            heads = auto_head_epochs(steps_per_epoch) if cfg.starts_pretrained else 0
            cfg = cfg.merged({"train": {"head_epochs": heads}})
        if cfg.train.small_set == "auto":
            heads = cfg.starts_pretrained and cfg.train.head_epochs > 0
            if not heads or steps_per_epoch:  # without heads first, or anything after them, the rule never applies
                on = heads and cfg.train.epochs > 0 and small_training_set(steps_per_epoch)
                cfg = cfg.merged({"train": {"small_set": "on" if on else "off"}})
        _check(cfg.train.epochs > 0 or cfg.train.head_epochs != 0,
               "epochs 0 trains the heads-first epochs alone, and this run has none (random weights start with none, or "
               "--head-epochs 0); give --epochs 1 or more, or train heads first (--pretrained, or --head-epochs N)")
        _check(cfg.train.small_set != "on" or (cfg.starts_pretrained and cfg.train.head_epochs > 0),
               "small_set on changes the epochs after the heads-first ones, and this run has none (random weights or "
               "--head-epochs 0); train heads first from pretrained weights or drop --small-set on")
        _check(cfg.train.head_init != "probe" or (cfg.starts_pretrained and cfg.model.method == "baseline"),
               f"head_init probe starts the baseline's classifier from a linear probe of pretrained features; this run "
               f"{'trains ' + cfg.model.method if cfg.model.method != 'baseline' else 'starts from random weights'}: "
               "use --method baseline with --pretrained (or --weights), or drop --head-init probe")
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = _migrate(d or {})
        unknown = set(d) - {"data", "model", "train"}
        _check(not unknown, f"unknown config group(s) {sorted(unknown)}; use data:, model: and train:")
        return cls(
            data=_build(DataConfig, d.get("data") or {}, "data"),
            model=_build(ModelConfig, d.get("model") or {}, "model"),
            train=_build(TrainConfig, d.get("train") or {}, "train"),
        )

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "RunConfig":
        """A configuration saved in a run folder or checkpoint: one saved before heads-first training existed
        trained without it (no ``head_epochs``: 0 of them, BatchNorm in training mode), and one saved before the
        small-set rule without that (no ``small_set``: off), so a resumed run goes on as it began."""
        cfg = cls.from_dict(d)
        saved = (d or {}).get("train") or {}
        if "head_epochs" not in saved:
            cfg = cfg.merged({"train": {"head_epochs": 0, "bn": "train"}})
        if "small_set" not in saved:
            cfg = cfg.merged({"train": {"small_set": "off"}})
        return cfg

    def merged(self, overrides: dict[str, dict[str, Any]]) -> "RunConfig":
        """A copy with ``{group: {field: value}}`` overrides applied (``None`` values are ignored)."""
        d = self.to_dict()
        for group, values in overrides.items():
            for k, v in values.items():
                if v is None:
                    continue
                if group == "model" and k == "options":
                    d["model"]["options"] = {**d["model"]["options"], **v}
                else:
                    d[group][k] = v
        return RunConfig.from_dict(d)

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        import yaml

        p = Path(path)
        _check(p.is_file(), f"config file {p} does not exist; pass a YAML file such as recipes/baseline_lite0.yaml")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise LookcloserError(f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                                  "UTF-8") from e
        except yaml.YAMLError as e:
            raise LookcloserError(f"config file {p} is not valid YAML ({e}); fix its syntax") from e
        except OSError as e:
            raise LookcloserError(f"config file {p} cannot be read ({e.strerror}); check its permissions") from e
        _check(isinstance(d, dict) or d is None, f"config file {p} must hold a mapping with data/model/train")
        return cls.from_dict(d)


GROUPS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def field_docs(klass) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), as one line of text.

    The docstrings are the single description of an option: the command line shows them as its help.
    """
    return _all_field_docs().get(klass.__name__, {})


@functools.lru_cache(maxsize=1)
def _all_field_docs() -> dict[str, dict[str, str]]:
    import ast

    # this file parsed once (inspect.getsource would cost ~15 ms per class on every `lookcloser --help`)
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    docs: dict[str, dict[str, str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        found = docs.setdefault(cls.name, {})
        for node, nxt in zip(cls.body, cls.body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                found[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Configurations saved by earlier versions: ``data.boxes`` became RRA's ``box_file`` option."""
    data = d.get("data")
    if isinstance(data, dict) and "boxes" in data:
        d = {**d, "data": {k: v for k, v in data.items() if k != "boxes"}}
        if data["boxes"]:
            model = dict(d.get("model") or {})
            model["options"] = {**(model.get("options") or {}), "box_file": data["boxes"]}
            d["model"] = model
    return d


ON_OFF_FIELDS = ("small_set",)  # settings whose values include "on" and "off"


def _build(klass, values: dict[str, Any], group: str):
    _check(isinstance(values, dict), f"config group {group!r} must be a mapping")
    names = {f.name: f for f in dataclasses.fields(klass)}
    unknown = set(values) - set(names)
    _check(not unknown, f"unknown {group} option(s) {sorted(unknown)}; known: {', '.join(names)}")
    coerced = {}
    for k, v in values.items():
        default = names[k].default
        if k in ON_OFF_FIELDS and isinstance(v, bool):  # YAML reads a bare on or off as a boolean
            v = "on" if v else "off"
        if isinstance(default, bool) and not isinstance(v, bool):
            raise LookcloserError(f"{group}.{k} must be true or false, got {v!r}")
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and (
                not isinstance(v, type(default)) or isinstance(v, bool)):
            raise LookcloserError(f"{group}.{k} must be a {type(default).__name__}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise LookcloserError(f"{group}.{k} must be a finite number, got {v!r}")
        coerced[k] = v
    return klass(**coerced)
