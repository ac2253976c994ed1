"""The one training loop shared by every method.

Methods differ only by their objective (``model.loss``). The loop handles data, optimizer and
schedule (heads-first epochs on frozen backbones, then everything), bf16 autocast, gradient accumulation,
DistributedDataParallel (optionally with SyncBatchNorm), per-epoch evaluation sharded over the processes,
atomic checkpoints (``last.pt`` every epoch, ``best.pt`` by top-1 on a split that is not test, unless
``best_on_test``), ``metrics.jsonl`` (reduced over the processes), resume, and a stop with a clear
message on a non-finite loss, on unreadable data or on Ctrl-C.

Determinism: each epoch's order comes from a generator seeded by (seed, epoch) and cut into global
batches (:class:`lookcloser.engine.distributed.GlobalBatchSampler`), each image's augmentation from a
seed of its own (seed, epoch, index), and every process's random generators are saved in every
checkpoint. So a run killed mid-epoch and resumed ends with the same weights as one that never stopped,
and N processes with batch b and ``sync_bn`` end with the weights of one process with batch N·b (up to
float rounding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .._version import __version__, code_commit
from ..config import RunConfig
from ..data import (HOLDOUT, build_transform, collate, eval_transform, normalize_batch, open_dataset,
                    selection_split, split_holdout)
from ..errors import LookcloserError, NonFiniteLossError
from ..models import create_model
from ..models.registry import validate_options
from . import distributed as D
from .distributed import resolve_device
from .checkpoint import FORMAT, VERSION, atomic_save, load_checkpoint_file, rng_state, set_rng_state
from .evaluate import compute_metrics, predict_dataset
from .runlock import run_lock

log = logging.getLogger(__name__)


# what --resume may change: the rest of a run's configuration is fixed by its checkpoint
RESUMABLE = {"train": ("epochs", "lr", "device", "threads", "eval_every"), "data": ("workers",)}
# files a training run writes into its folder (a crashed write leaves a temporary of one of them)
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl")


def _stale_temporaries(out: Path) -> list[Path]:
    return [p for p in out.glob(".*.tmp") if p.name.startswith((".last.pt.", ".best.pt."))]


def check_run_folder(out: Path) -> None:
    """A new run needs a folder that is new or empty (temporaries of a crashed write aside) and writable."""
    if out.exists() and not out.is_dir():
        raise LookcloserError(f"--out {out} is a file; give a folder for the run (new or empty)")
    if out.is_dir():
        stale = set(_stale_temporaries(out))
        held = sorted(p.name for p in out.iterdir() if p not in stale)
        if (out / "last.pt").is_file():
            raise LookcloserError(f"{out} already holds a run; pass --resume {out} to continue it or choose "
                                  "another --out")
        if held:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise LookcloserError(f"{out} is not empty (it holds {shown}) and has no last.pt to resume; a run "
                                  "folder must be new or empty, so choose another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LookcloserError(f"cannot write into {existing} (permission denied); choose a writable --out")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stands and how to continue it."""


def busy_cores(window: float = 0.3) -> float:
    """How many of the machine's cores other work keeps busy right now: the non-idle share of all CPU time
    over ``window`` seconds (from /proc/stat) times the core count, while this process waits. A load average
    would count this process's own past work, e.g. the model trained just before in the same process.
    Elsewhere than Linux: the last minute's load average."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user nice system idle iowait irq softirq steal (guest is inside user)

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def auto_threads() -> int:
    """Intra-op threads for a training process: OMP_NUM_THREADS where set, else the cores that other work
    does not keep busy (``busy_cores``; a core counts as busy from 0.7 of it), at least one. Measured on
    this project's 2-core machine: idle, 2 threads trained the baseline at 19.9 images/s against 16.6 with
    1; while other jobs kept both cores busy, 1 thread reached 12.4 images/s against 6.6 with PyTorch's
    default of 2."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, cores - math.floor(busy_cores() + 0.3)))


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name where the system says it (Linux's ``/proc/cpuinfo``), else ``""``. Float results
    of the same code and seed differ in their last bits between CPU models, so a result names it."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return ""


def device_name(device: torch.device | str, threads: int | None = None) -> str:
    """What a result was computed on, in words: the GPU's name, or ``CPU (x86_64, MODEL)`` (with ``threads``:
    ``CPU (x86_64, MODEL, 2 threads)``; the model where the system names it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = cpu_model()
        return (f"CPU ({platform.processor() or platform.machine()}" + (f", {model}" if model else "")
                + (f", {threads} threads)" if threads else ")"))
    return device.type


def choose_precision(device: torch.device, precision: str = "auto", allowed: bool = True,
                     bf16_supported: bool | None = None) -> torch.dtype:
    """The autocast dtype of a training run: float32 (no autocast), bfloat16 or float16.

    Args:
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (``TrainConfig.precision``).
        allowed: False (``--no-bf16``) means float32 whatever ``precision`` says.
        bf16_supported: whether the GPU computes bfloat16 natively (None: ask CUDA).
    """
    if not allowed or precision == "fp32":
        return torch.float32
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type != "cuda":
        return torch.float32
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16_supported else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    frozen (rate 0), then the heads at ``lr`` and the backbones at ``lr * backbone_lr_scale``.
    """
    head_steps = max(0, cfg.head_epochs) * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < head_steps:
        f = lr_factor(step, head_steps, min(warmup, head_steps), steps_per_epoch, cfg)
        return (cfg.head_lr or HEAD_LR_FACTOR * cfg.lr) * f, 0.0
    f = lr_factor(step - head_steps, cfg.epochs * steps_per_epoch, warmup, steps_per_epoch, cfg)
    return cfg.lr * f, cfg.lr * cfg.backbone_lr_scale * f


# the heads-first epochs' rate when --head-lr is not given, as a multiple of --lr: 3e-3 against AdamW's 1e-3
# trained a linear head on frozen cub100 features nearest the probe's optimum in two epochs (docs/benchmarks.md)
HEAD_LR_FACTOR = 3.0


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


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW with no weight decay on norms and biases; each group says whether it holds backbone
    parameters (``"backbone"``), whose rate :func:`phase_lrs` sets apart."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad or id(p) in backbone_ids:  # a backbone frozen for the heads-first epochs trains later
            groups.setdefault((id(p) in backbone_ids, p.ndim <= 1), []).append(p)
    param_groups = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        scale = cfg.backbone_lr_scale if is_backbone else 1.0
        param_groups.append({"params": params, "lr": cfg.lr * scale, "backbone": is_backbone,
                             "weight_decay": 0.0 if no_decay else cfg.weight_decay})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


class Trainer:
    """Train one run into a folder.

    Args:
        cfg: the resolved run configuration.
        out: run folder (created); holds config.yaml, last.pt, best.pt, metrics.jsonl.
        resume: continue from ``out/last.pt``.
        progress: show progress bars.
        step_hook: called as ``step_hook(epoch, step)`` after every optimizer step (tests use it to
            simulate a crash).
    """

    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                 step_hook: Callable[[int, int], None] | None = None,
                 changes: dict[str, dict[str, Any]] | None = None):
        self.out = Path(out)
        self.progress = progress
        self.step_hook = step_hook
        self.resume_ckpt = None
        rank = int(os.environ.get("RANK", "0"))
        if resume:
            if not (self.out / "last.pt").is_file():
                raise LookcloserError(f"cannot resume: {self.out / 'last.pt'} does not exist; start a new run instead")
            self.resume_ckpt = load_checkpoint_file(self.out / "last.pt")
            self._resumed_stat = _stat(self.out / "last.pt")
            cfg = self._resumed_config(RunConfig.from_saved(self.resume_ckpt["config"]), changes or {})
        elif rank == 0:
            check_run_folder(self.out)
        if rank == 0 and self.out.is_dir():
            for tmp in _stale_temporaries(self.out):  # left by a write that was killed; never a good file
                tmp.unlink(missing_ok=True)
        validate_options(cfg.model.method, dict(cfg.model.options))  # a bad -o fails before anything is read
        cfg = cfg.resolved()  # the heads-first epochs follow the weights; saved as resolved
        self.cfg = cfg
        tc = cfg.train
        self.threads = tc.threads or auto_threads()
        self.device = resolve_device(tc.device)
        self.dist = D.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = choose_precision(self.device, tc.precision, tc.bf16)
        self.amp = self.amp_dtype != torch.float32
        # float16 needs its gradients scaled so that small ones do not flush to zero; bfloat16 does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        seed_everything(tc.seed)

        held = cfg.data.holdout
        train_split = open_dataset(cfg.data.data, "train")  # read once, also when part of it is held out
        self.train_set, held_set = split_holdout(train_split, held) if held else (train_split, None)
        self.eval_name = cfg.data.eval_split or (HOLDOUT if held else selection_split(cfg.data.data))
        # best.pt is a choice among epochs: never made on the test split unless asked for
        self.select_best = self.eval_name != "test" or tc.best_on_test
        if held_set is not None and self.eval_name == HOLDOUT:
            self.eval_set = held_set
        else:
            self.eval_set = open_dataset(cfg.data.data, self.eval_name, holdout=held)
        self.classes = self.train_set.classes
        if len(self.train_set) == 0:
            raise LookcloserError(f"the training split of {cfg.data.data} has no images; check the data folder")
        if self.resume_ckpt is not None and self.classes != self.resume_ckpt["classes"]:
            raise LookcloserError(_class_change(self.resume_ckpt["classes"], self.classes, cfg.data.data))

        from ..backbones import structure_only

        # on resume the checkpoint supplies the weights: build the same architecture, read no weight files
        with structure_only() if self.resume_ckpt else contextlib.nullcontext():
            model = create_model(cfg.model.method, backbone=cfg.model.backbone, num_classes=len(self.classes),
                                 pretrained=cfg.model.pretrained, **self._method_options())
        model.set_label_smoothing(tc.label_smoothing)
        if tc.sync_bn and self.dist.enabled:
            D.convert_global_batchnorm(model)
        self.model = model.to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if tc.ema > 0:
            from timm.utils import ModelEmaV3

            # a copy of the model that follows its weights: the first step copies them, later ones average
            self.ema = ModelEmaV3(self.model, decay=tc.ema)
        dc = cfg.data
        self.train_set.transform = build_transform(True, dc.image_size, model.mean, model.std,
                                                   resize_ratio=dc.resize_ratio, hflip=dc.hflip,
                                                   color_jitter=dc.color_jitter, squash=dc.squash,
                                                   rotation=dc.rotation, pca_lighting=dc.pca_lighting,
                                                   crop_scale=dc.crop_scale, auto_augment=dc.auto_augment,
                                                   random_erasing=dc.random_erasing,
                                                   uint8=True)  # normalized on the device, in the step
        self.eval_set.transform = eval_transform(self._preprocess())
        for ds in (self.train_set, self.eval_set):
            inputs = model.sample_inputs(ds, self._preprocess())  # what the method needs beside the images
            if inputs is not None:
                ds.extras = inputs.per_sample
                if inputs.fixed_view and ds is self.train_set:
                    self.train_set.transform = self.eval_set.transform  # the inputs refer to that view
        self.mixer = None
        if dc.mixup > 0 or dc.cutmix > 0:
            if cfg.model.method != "baseline":
                raise LookcloserError(f"--mixup and --cutmix mix two images into one, which {cfg.model.method}'s "
                                      "own terms (attention crops, centers, distillation) do not define; use them "
                                      "with the baseline")
            from timm.data import Mixup

            # its label smoothing is the run's: the mixed targets carry it, and the loss adds none
            self.mixer = Mixup(mixup_alpha=dc.mixup, cutmix_alpha=dc.cutmix, label_smoothing=tc.label_smoothing,
                               num_classes=len(self.classes))
        if dc.cache:
            used = self.train_set.use_cache(dc.cache_gb).nbytes / 2**30
            self.eval_set.use_cache(dc.cache_gb - used)  # the limit holds for both splits together
        self.optimizer = build_optimizer(model, tc)
        # read from the groups as built: a resumed optimizer state may come from before the flag existed
        self.group_is_backbone = [g["backbone"] for g in self.optimizer.param_groups]
        per_epoch = len(self.train_set) // (dc.batch_size * self.dist.world_size) or 1
        self.steps_per_epoch = max(1, per_epoch // tc.accum_steps)
        self.total_epochs = tc.head_epochs + tc.epochs
        self.total_steps = self.steps_per_epoch * self.total_epochs
        self.warmup_steps = int(round(tc.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.start_epoch = 0
        self.best_top1 = -1.0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)

        self.net = self.model
        self.net_heads_only: bool | None = None  # the phase self.net was wrapped for
        self.skipped_seen: set[str] = set()
        self.train_loader = None

    def _resumed_config(self, saved: RunConfig, changes: dict[str, dict[str, Any]]) -> RunConfig:
        """The run's saved configuration with the changes --resume allows; any other change is refused."""
        given = {(g, k): v for g, values in changes.items() for k, v in values.items()
                 if v is not None and v != {} and not (g == "model" and k == "options" and not v)}
        refused = sorted(f"{g}.{k}" for g, k in given if k not in RESUMABLE.get(g, ()))
        if refused:
            allowed = ", ".join(f"--{k.replace('_', '-')}" for ks in RESUMABLE.values() for k in ks)
            flags = ", ".join("-o" if k == "model.options" else "--" + k.split(".")[1].replace("_", "-")
                              for k in refused)
            raise LookcloserError(f"--resume continues {self.out} with its saved configuration and cannot change "
                                  f"{flags}; it may change {allowed} (start a new run to change the rest)")
        done = int(self.resume_ckpt["epoch"])
        epochs = given.get(("train", "epochs"))
        heads = max(0, saved.train.head_epochs)
        if epochs is not None and heads + epochs <= done:
            least = max(1, done - heads + 1)
            first = f" ({heads} heads-first epoch(s) and {done - heads} of --epochs)" if heads else ""
            raise LookcloserError(f"{self.out} has already trained {done} epoch(s){first}; pass --epochs {least} or "
                                  "more to train further")
        return saved.merged({g: {k: v for (gg, k), v in given.items() if gg == g} for g in ("train", "data")})

    def _preprocess(self) -> dict[str, Any]:
        """The evaluation preprocessing, saved in checkpoints so that predict needs nothing else."""
        dc = self.cfg.data
        return {"image_size": dc.image_size, "resize_ratio": dc.resize_ratio, "squash": dc.squash,
                "mean": list(self.model.mean), "std": list(self.model.std)}

    def _method_options(self) -> dict[str, Any]:
        opts = dict(self.cfg.model.options)
        if self.cfg.model.weights:
            opts["weights"] = self.cfg.model.weights
        return opts

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int, metrics: dict[str, Any], rng_states: list | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "method": self.model.method_name, "build_args": self.model.build_args,
            "classes": self.classes,
            "preprocess": self._preprocess(),
            "model": self.model.state_dict(),
            **({"model_ema": self.ema.module.state_dict()} if self.ema is not None else {}),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "scheduler": {"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps},
            "epoch": epoch, "best_top1": self.best_top1, "metrics": metrics,
            "config": self.cfg.to_dict(), "rng": rng_states[0] if rng_states else rng_state(),
            "rng_per_rank": rng_states or [rng_state()],
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise LookcloserError(f"{self.out / 'last.pt'} does not match the configured model; start a new run") from e
        if self.ema is not None:
            if ckpt.get("model_ema") is None:
                raise LookcloserError(f"{self.out / 'last.pt'} holds no moving average of the weights although the "
                                      "run keeps one (--ema); start a new run")
            self.ema.module.load_state_dict(ckpt["model_ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])  # the rates come from the (maybe new) config: _set_lr
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["scheduler"]["step"]
        self.start_epoch = ckpt["epoch"]
        self.best_top1 = ckpt["best_top1"]
        states = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        # each process continues its own random streams (a different world size starts from rank 0's)
        set_rng_state(states[self.dist.rank] if self.dist.rank < len(states) else states[0])

    # ---- loop --------------------------------------------------------------------------------
    def _loader(self, epoch: int):
        """The training loader, made once: its workers persist from epoch to epoch (no restart cost, and
        each keeps its warm state), and its sampler moves to ``epoch``."""
        tc, dc = self.cfg.train, self.cfg.data
        if self.train_loader is None:
            self.sampler = D.GlobalBatchSampler(len(self.train_set), dc.batch_size, self.dist.world_size,
                                                self.dist.rank, tc.seed, epoch, weights=self._balance_weights())
            self.train_loader = torch.utils.data.DataLoader(
                self.train_set, batch_sampler=self.sampler, num_workers=dc.workers, collate_fn=collate,
                pin_memory=self.device.type == "cuda", persistent_workers=dc.workers > 0)
        self.sampler.set_epoch(epoch)
        return self.train_loader

    def _balance_weights(self) -> list[float] | None:
        """Per-image sampling weights of a class-balanced epoch (``--balance sampler``): 1 / class size."""
        if self.cfg.data.balance != "sampler":
            return None
        from collections import Counter

        targets = self.train_set.targets
        counts = Counter(targets)
        return [1.0 / counts[y] for y in targets]

    def _set_lr(self) -> None:
        head, backbone = phase_lrs(self.step, self.steps_per_epoch, self.cfg.train)
        for group, is_backbone in zip(self.optimizer.param_groups, self.group_is_backbone):
            group["lr"] = backbone if is_backbone else head

    def heads_only(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) is a heads-first epoch."""
        return epoch < self.cfg.train.head_epochs

    def _enter_phase(self, epoch: int) -> None:
        """Training mode for the epoch's phase, and the wrappers (DDP, compile) built for it: DDP reduces
        the gradients of the parameters that require one when it is built, so a phase change rebuilds it."""
        heads = self.heads_only(epoch)
        set_phase(self.model, heads_only=heads, bn_frozen=self.cfg.train.bn == "frozen")
        if self.net_heads_only == heads:
            return
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids,
                                               find_unused_parameters=self.model.ddp_find_unused_parameters)
        if self.cfg.train.compile:
            self.net = torch.compile(self.net)
        self.net_heads_only = heads

    def _head_lr(self) -> float:
        return next(g["lr"] for g, b in zip(self.optimizer.param_groups, self.group_is_backbone) if not b)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        tc = self.cfg.train
        self._enter_phase(epoch)
        loader = self._loader(epoch)
        main = self.dist.is_main
        phase = " (heads)" if self.heads_only(epoch) else ""
        bar = tqdm(total=len(loader) * self.cfg.data.batch_size * self.dist.world_size,
                   desc=f"epoch {epoch + 1}/{self.total_epochs}{phase}", unit="img",
                   disable=not (self.progress and main), dynamic_ncols=True)
        seen = correct = 0
        loss_sum = 0.0
        terms_sum: dict[str, float] = {}
        skipped = 0
        limit = self.cfg.data.max_unreadable * len(self.train_set) / self.dist.world_size
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels, bad, extras) in enumerate(loader):
            self.position = (epoch, i)
            skipped += self._report_skipped(bad)
            bar.update((len(labels) + len(bad)) * self.dist.world_size)
            if not D.all_true(skipped <= limit, self.dist, self.device):
                bar.close()
                raise LookcloserError(self._too_many_unreadable(epoch))
            # BatchNorm needs two images; unreadable ones can leave a batch of one (every process skips it)
            if not D.all_true(len(labels) >= 2, self.dist, self.device):
                if len(labels):
                    log.warning("epoch %d, batch %d: skipped a batch of %d readable image(s)", epoch + 1, i + 1,
                                len(labels))
                continue
            images = normalize_batch(images.to(self.device, non_blocking=True), self.model.mean, self.model.std)
            labels = labels.to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = labels
            if self.mixer is not None:
                if len(labels) % 2:  # timm mixes the batch with its mirror: an even count
                    images, labels = images[:-1], labels[:-1]
                images, targets = self.mixer(images, labels)  # soft targets, B×K
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.net(images, labels, **{k: v.to(self.device) for k, v in extras.items()})
                loss, terms = self.model.loss(out, targets)
            finite = D.all_true(bool(torch.isfinite(loss).item()), self.dist, self.device)
            if not finite:
                bar.close()
                raise NonFiniteLossError(self._non_finite_message(loss, epoch, i))
            self.scaler.scale(loss / tc.accum_steps).backward()  # unscaled unless float16
            if (i + 1) % tc.accum_steps == 0:
                if tc.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self._set_lr()
                self.scaler.step(self.optimizer)  # skipped (and the scale lowered) on an overflow in float16
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
                if self.step_hook is not None:
                    self.step_hook(epoch, self.step)
            n = len(labels)
            seen += n
            correct += (out.logits.detach().argmax(1) == labels).sum().item()
            loss_sum += loss.item() * n
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * n
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            lr=f"{self._head_lr():.2g}", refresh=False)
        bar.close()
        elapsed = D.all_max(time.perf_counter() - t0, self.dist, self.device)
        # the epoch's figures over every process: sums of images, hits, losses and terms
        names = sorted(terms_sum)
        totals = D.all_sum([seen, correct, loss_sum, skipped, *(terms_sum[k] for k in names)], self.dist, self.device)
        seen, correct, loss_sum, skipped = int(totals[0]), int(totals[1]), totals[2], int(totals[3])
        terms_sum = dict(zip(names, totals[4:]))
        if skipped and main:
            log.warning("epoch %d: skipped %d unreadable image(s) (named above)", epoch + 1, skipped)
        if seen == 0:
            what = ("could be read" if skipped >= len(self.train_set) else
                    "came in a batch with another readable image (BatchNorm needs two)")
            raise LookcloserError(f"no image of the training split of {self.cfg.data.data} {what} in epoch "
                                  f"{epoch + 1} ({skipped} unreadable); check the data folder")
        return {"phase": "heads" if self.heads_only(epoch) else "all",
                "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
                **{f"train_{k}": v / seen for k, v in terms_sum.items()},
                "train_images_per_s": seen / max(elapsed, 1e-9), "train_time_s": elapsed,
                "threads": torch.get_num_threads(), "skipped_images": skipped}

    def _non_finite_message(self, loss: torch.Tensor, epoch: int, batch: int) -> str:
        where = f"the loss became {loss.item()} at epoch {epoch + 1}, batch {batch + 1}; "
        last = self.out / "last.pt"
        if last.is_file():
            done = load_checkpoint_file(last)["epoch"]
            return (where + f"{last} (epoch {done}) is intact: continue from it with a lower learning rate, "
                    f"`lookcloser train --resume {self.out} --lr {self.cfg.train.lr / 10:g}`, or check the data")
        return where + ("no epoch had finished, so nothing was saved: start again with a lower --lr "
                        f"(e.g. {self.cfg.train.lr / 10:g}) or check the data")

    def _too_many_unreadable(self, epoch: int) -> str:
        names = sorted(self.skipped_seen)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (f"more than {self.cfg.data.max_unreadable:.0%} of the training images of {self.cfg.data.data} "
                f"cannot be read (stopped in epoch {epoch + 1}: {shown}); fix or remove them, or raise "
                "--max-unreadable to train on the rest")

    def _report_skipped(self, bad: list[str]) -> int:
        for path in bad:
            if path not in self.skipped_seen:
                self.skipped_seen.add(path)
                log.warning("skipping unreadable image %s: %s", path, getattr(path, "reason", "unreadable"))
        return len(bad)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and that inference reads: the moving average where one is kept."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, Any]:
        """Top-1, top-5 and mean per-class accuracy on the evaluation split, each process predicting a share."""
        dc = self.cfg.data
        probs, labels, bad = predict_dataset(self.eval_model, self.eval_set, self.device, batch_size=dc.batch_size,
                                             workers=dc.workers, amp=self.amp, amp_dtype=self.amp_dtype,
                                             progress=self.progress and
                                             self.dist.is_main, desc=f"eval {self.eval_name}",
                                             channels_last=self.cfg.train.channels_last, dist=self.dist)
        if self.dist.is_main:
            self._report_skipped(bad)
        if len(labels) == 0:
            raise LookcloserError(f"no image of the {self.eval_name} split of {self.cfg.data.data} could be read "
                                  f"({len(bad)} unreadable); check the data folder")
        m = compute_metrics(probs, labels, len(self.classes))
        return {"eval_split": self.eval_name, "eval_top1": m["top1"], "eval_top5": m["top5"],
                "eval_mean_per_class": m["mean_per_class"], "eval_images": m["n"]}

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch; return the final epoch's metrics.

        The main process holds the run folder's lock (:func:`run_lock`) throughout, so a second process
        started on the same folder is refused instead of interleaving its checkpoints with this one's.
        """
        if not self.dist.is_main:
            return self._fit()
        with run_lock(self.out):
            # what was checked before the lock was taken must still hold: no other process wrote meanwhile
            if self.resume_ckpt is None:
                check_run_folder(self.out)
            elif _stat(self.out / "last.pt") != self._resumed_stat:
                raise LookcloserError(f"{self.out / 'last.pt'} changed while this process was starting (another "
                                      "process wrote it); run the command again to continue from its new state")
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        tc = self.cfg.train
        main = self.dist.is_main
        if main:
            try:  # the folder exists: fit() created it when it took the run's lock
                self.cfg.save(self.out / "config.yaml")
            except OSError as e:
                raise LookcloserError(f"cannot write into {self.out} ({e.strerror or e}); choose a writable --out") from e
            log.info("training %s on %s (%d train / %d %s images, %d classes) on %s, world size %d",
                     self.model.method_name, self.cfg.data.data, len(self.train_set), len(self.eval_set),
                     self.eval_name, len(self.classes), self.device, self.dist.world_size)
            if tc.eval_every:
                log.info("%s", self.selection_note())
            if not self.cfg.starts_pretrained and self.resume_ckpt is None:
                log.info("the backbone %s starts from random weights (pass --pretrained for ImageNet weights, or "
                         "--weights FILE)", self.cfg.model.backbone)
        record: dict[str, Any] = {}
        self.position = (self.start_epoch, 0)
        from .tracking import EventLog

        events = EventLog(self.out / "tb") if main and tc.tensorboard else None
        # in every epoch's record: where and by which code it was trained
        provenance = {"device": device_name(self.device), "commit": code_commit(), "version": __version__}
        threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # for this run only: restored below
        try:
            for epoch in range(self.start_epoch, self.total_epochs):
                record = {"epoch": epoch + 1, **self.train_epoch(epoch), "world_size": self.dist.world_size,
                          **provenance}
                if tc.eval_every and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == self.total_epochs):
                    record.update(self.evaluate())
                record["lr"] = self._head_lr()  # the rates of the epoch's last step
                record["backbone_lr"] = next((g["lr"] for g, b in zip(self.optimizer.param_groups,
                                                                      self.group_is_backbone) if b), 0.0)
                rng_states = D.gather_objects(rng_state(), self.dist)
                # every process holds the gathered evaluation, so each keeps the same best
                is_best = self.select_best and "eval_top1" in record and record["eval_top1"] > self.best_top1
                if is_best:
                    self.best_top1 = record["eval_top1"]
                if self.select_best:
                    record["best_top1"] = self.best_top1
                if main:
                    state = self._state(epoch + 1, record, rng_states)
                    atomic_save(state, self.out / "last.pt")
                    if is_best:
                        tmp = self.out / ".best.pt.tmp"
                        shutil.copyfile(self.out / "last.pt", tmp)
                        os.replace(tmp, self.out / "best.pt")
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if events is not None:
                        events.epoch(record)
                        if "eval_top1" in record:
                            events.attention(self.eval_model, self.eval_set, self.device, epoch + 1)
                    msg = f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, train top-1 {record['train_top1']:.1f}%"
                    if "eval_top1" in record:
                        msg += f", {self.eval_name} top-1 {record['eval_top1']:.1f}%"
                        msg += f" (best {self.best_top1:.1f}%)" if self.select_best else ""
                    tqdm.write(msg) if self.progress else log.info(msg)
                D.barrier(self.dist)
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._interrupted_message()) from None
        finally:
            torch.set_num_threads(threads_before)
            if events is not None:
                events.close()
            D.cleanup(self.dist)
        return record

    def selection_note(self) -> str:
        """One line saying what each epoch is evaluated on and what best.pt is chosen on."""
        if self.select_best:
            return (f"every epoch is scored on the {self.eval_name} split and best.pt is the epoch with the best "
                    f"{self.eval_name} top-1")
        return ("every epoch is scored on the test split for the curves only: no best.pt is chosen on test, so "
                "`lookcloser evaluate` reports the final weights (--holdout 0.1 chooses on held-out training "
                "images; --best-on-test chooses on test, as the papers report)")

    def _interrupted_message(self) -> str:
        epoch, batch = self.position
        last = self.out / "last.pt"
        if last.is_file():
            done = load_checkpoint_file(last)["epoch"]
            return (f"interrupted in epoch {epoch + 1}, batch {batch + 1}; {last} holds epoch {done}: "
                    f"`lookcloser train --resume {self.out}` continues from there")
        return f"interrupted in epoch {epoch + 1}, batch {batch + 1}, before any epoch finished; nothing was saved"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _class_change(old: list[str], new: list[str], data: str) -> str:
    gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
    what = []
    if gone:
        what.append(f"gone: {', '.join(gone[:5])}" + (" ..." if len(gone) > 5 else ""))
    if added:
        what.append(f"new: {', '.join(added[:5])}" + (" ..." if len(added) > 5 else ""))
    if not what:
        what.append("the same names in another order")
    return (f"the classes of {data} changed since the run started ({'; '.join(what)}), so its labels would no "
            "longer match; restore the class folders, or start a new run")


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          step_hook: Callable[[int, int], None] | None = None,
          changes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train a run into ``out`` (see :class:`Trainer`); return the last epoch's metrics.

    With ``resume``, ``cfg`` is ignored (the run's saved configuration is used) and ``changes``
    (``{group: {field: value}}``) may set the fields in :data:`RESUMABLE`.
    """
    return Trainer(cfg, out, resume=resume, progress=progress, step_hook=step_hook, changes=changes).fit()
