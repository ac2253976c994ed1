"""The one training loop shared by every method.

Methods differ only by their objective (``model.loss``). The loop handles data, optimizer and
schedule, bf16 autocast, gradient accumulation, DistributedDataParallel, per-epoch evaluation,
atomic checkpoints (``last.pt`` every epoch, ``best.pt`` by evaluation top-1), ``metrics.jsonl``,
resume, and a stop with a clear message on a non-finite loss.

Determinism: each epoch's shuffling and augmentation come from a generator seeded by (seed, epoch),
and the global generators are saved in every checkpoint, so a run killed mid-epoch and resumed ends
with the same weights as one that never stopped (on CPU, same seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import RunConfig
from ..data import build_transform, eval_split, eval_transform, open_dataset
from ..errors import LookcloserError, NonFiniteLossError
from ..models import create_model
from . import distributed as D
from .distributed import resolve_device
from .checkpoint import FORMAT, VERSION, atomic_save, load_checkpoint_file, rng_state, set_rng_state
from .evaluate import compute_metrics, make_loader, predict_loader

log = logging.getLogger(__name__)


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


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW with no weight decay on norms and biases and an optional backbone lr scale."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone_ids, p.ndim <= 1), []).append(p)
    param_groups = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        scale = cfg.backbone_lr_scale if is_backbone else 1.0
        param_groups.append({"params": params, "lr": cfg.lr * scale, "base_lr": cfg.lr * scale,
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
                 step_hook: Callable[[int, int], None] | None = None):
        self.out = Path(out)
        self.progress = progress
        self.step_hook = step_hook
        self.resume_ckpt = None
        if resume:
            self.resume_ckpt = load_checkpoint_file(self.out / "last.pt") if (self.out / "last.pt").is_file() else None
            if self.resume_ckpt is None:
                raise LookcloserError(f"cannot resume: {self.out / 'last.pt'} does not exist; start a new run instead")
            cfg = RunConfig.from_dict(self.resume_ckpt["config"])
        elif (self.out / "last.pt").is_file():
            raise LookcloserError(f"{self.out} already holds a run; pass --resume {self.out} to continue it or choose "
                                  "another --out")
        self.cfg = cfg
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.dist = D.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp = tc.bf16 and self.device.type == "cuda"
        seed_everything(tc.seed)

        self.train_set = open_dataset(cfg.data.data, "train")
        self.eval_name = cfg.data.eval_split or eval_split(cfg.data.data)
        self.eval_set = open_dataset(cfg.data.data, self.eval_name)
        self.classes = self.train_set.classes
        if len(self.train_set) == 0:
            raise LookcloserError(f"the training split of {cfg.data.data} has no images; check the data folder")

        from ..backbones import structure_only

        # on resume the checkpoint supplies the weights: build the same architecture, read no weight files
        with structure_only() if self.resume_ckpt else contextlib.nullcontext():
            model = create_model(cfg.model.method, backbone=cfg.model.backbone, num_classes=len(self.classes),
                                 pretrained=cfg.model.pretrained, **self._method_options())
        model.set_label_smoothing(tc.label_smoothing)
        self.model = model.to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        dc = cfg.data
        self.train_set.transform = build_transform(True, dc.image_size, model.mean, model.std,
                                                   resize_ratio=dc.resize_ratio, hflip=dc.hflip,
                                                   color_jitter=dc.color_jitter, squash=dc.squash,
                                                   rotation=dc.rotation, pca_lighting=dc.pca_lighting)
        self.eval_set.transform = eval_transform(self._preprocess())
        for ds in (self.train_set, self.eval_set):
            inputs = model.sample_inputs(ds, self._preprocess())  # what the method needs beside the images
            if inputs is not None:
                ds.extras = inputs.per_sample
                if inputs.fixed_view and ds is self.train_set:
                    self.train_set.transform = self.eval_set.transform  # the inputs refer to that view
        self.optimizer = build_optimizer(model, tc)
        per_epoch = len(self.train_set) // (dc.batch_size * self.dist.world_size) or 1
        self.steps_per_epoch = max(1, per_epoch // tc.accum_steps)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.warmup_steps = int(round(tc.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.start_epoch = 0
        self.best_top1 = -1.0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)

        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids,
                                               find_unused_parameters=model.ddp_find_unused_parameters)
        if tc.compile:
            self.net = torch.compile(self.net)
        self.skipped_seen: set[str] = set()

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
    def _state(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        dc = self.cfg.data
        return {
            "format": FORMAT, "version": VERSION,
            "method": self.model.method_name, "build_args": self.model.build_args,
            "classes": self.classes,
            "preprocess": self._preprocess(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps},
            "epoch": epoch, "best_top1": self.best_top1, "metrics": metrics,
            "config": self.cfg.to_dict(), "rng": rng_state(),
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise LookcloserError(f"{self.out / 'last.pt'} does not match the configured model; start a new run") from e
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = ckpt["scheduler"]["step"]
        self.start_epoch = ckpt["epoch"]
        self.best_top1 = ckpt["best_top1"]
        set_rng_state(ckpt["rng"])

    # ---- loop --------------------------------------------------------------------------------
    def _loader(self, epoch: int):
        tc, dc = self.cfg.train, self.cfg.data
        g = torch.Generator().manual_seed(tc.seed * 100003 + epoch)
        sampler = None
        if self.dist.enabled:
            sampler = torch.utils.data.DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank,
                                                          shuffle=True, seed=tc.seed, drop_last=True)
            sampler.set_epoch(epoch)
        drop_last = len(self.train_set) >= dc.batch_size * self.dist.world_size
        return make_loader(self.train_set, dc.batch_size, dc.workers, sampler=sampler, shuffle=True, generator=g,
                           drop_last=drop_last, pin=self.device.type == "cuda")

    def _set_lr(self) -> None:
        f = lr_factor(self.step, self.total_steps, self.warmup_steps, self.steps_per_epoch, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def train_epoch(self, epoch: int) -> dict[str, float]:
        tc = self.cfg.train
        self.model.train()
        loader = self._loader(epoch)
        main = self.dist.is_main
        bar = tqdm(total=len(loader) * self.cfg.data.batch_size, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="img",
                   disable=not (self.progress and main), dynamic_ncols=True)
        seen = correct = 0
        loss_sum = 0.0
        terms_sum: dict[str, float] = {}
        skipped = 0
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels, bad, extras) in enumerate(loader):
            skipped += self._report_skipped(bad)
            bar.update(len(labels) + len(bad))
            if len(labels) == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.net(images, labels, **{k: v.to(self.device) for k, v in extras.items()})
                loss, terms = self.model.loss(out, labels)
            finite = D.all_true(bool(torch.isfinite(loss).item()), self.dist, self.device)
            if not finite:
                bar.close()
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; lower --lr or check the data"
                    f" (the last good checkpoint, {self.out / 'last.pt'}, is intact and --resume continues from it)")
            (loss / tc.accum_steps).backward()
            if (i + 1) % tc.accum_steps == 0:
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self._set_lr()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.step_hook is not None:
                    self.step_hook(epoch, self.step)
            n = len(labels)
            seen += n
            correct += (out.logits.detach().argmax(1) == labels).sum().item()
            loss_sum += loss.item() * n
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * n
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            lr=f"{self.optimizer.param_groups[-1]['lr']:.2g}", refresh=False)
        bar.close()
        elapsed = time.perf_counter() - t0
        if skipped:
            log.warning("epoch %d: skipped %d unreadable image(s) (named above)", epoch + 1, skipped)
        seen = max(seen, 1)
        return {"train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
                **{f"train_{k}": v / seen for k, v in terms_sum.items()},
                "train_images_per_s": seen * self.dist.world_size / max(elapsed, 1e-9), "train_time_s": elapsed,
                "threads": torch.get_num_threads(),
                "skipped_images": skipped}

    def _report_skipped(self, bad: list[str]) -> int:
        for path in bad:
            if path not in self.skipped_seen:
                self.skipped_seen.add(path)
                log.warning("skipping unreadable image %s", path)
        return len(bad)

    def evaluate(self) -> dict[str, Any]:
        dc = self.cfg.data
        loader = make_loader(self.eval_set, dc.batch_size, dc.workers, pin=self.device.type == "cuda")
        probs, labels, bad = predict_loader(self.model, loader, self.device, amp=self.amp, progress=self.progress,
                                            desc=f"eval {self.eval_name}",
                                            channels_last=self.cfg.train.channels_last)
        self._report_skipped(bad)
        m = compute_metrics(probs, labels, len(self.classes))
        return {"eval_split": self.eval_name, "eval_top1": m["top1"], "eval_top5": m["top5"],
                "eval_mean_per_class": m["mean_per_class"], "eval_images": m["n"]}

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch; return the final epoch's metrics."""
        tc = self.cfg.train
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out / "config.yaml")
            log.info("training %s on %s (%d train / %d %s images, %d classes) on %s, world size %d",
                     self.model.method_name, self.cfg.data.data, len(self.train_set), len(self.eval_set),
                     self.eval_name, len(self.classes), self.device, self.dist.world_size)
        record: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, tc.epochs):
                record = {"epoch": epoch + 1, **self.train_epoch(epoch), "world_size": self.dist.world_size}
                if tc.eval_every and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
                    if main:
                        record.update(self.evaluate())
                    D.barrier(self.dist)
                record["lr"] = self.optimizer.param_groups[-1]["lr"]
                if main:
                    is_best = "eval_top1" in record and record["eval_top1"] > self.best_top1
                    if is_best:
                        self.best_top1 = record["eval_top1"]
                    record["best_top1"] = self.best_top1
                    state = self._state(epoch + 1, record)
                    atomic_save(state, self.out / "last.pt")
                    if is_best:
                        tmp = self.out / ".best.pt.tmp"
                        shutil.copyfile(self.out / "last.pt", tmp)
                        os.replace(tmp, self.out / "best.pt")
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    msg = f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, train top-1 {record['train_top1']:.1f}%"
                    if "eval_top1" in record:
                        msg += f", {self.eval_name} top-1 {record['eval_top1']:.1f}% (best {self.best_top1:.1f}%)"
                    tqdm.write(msg) if self.progress else log.info(msg)
                D.barrier(self.dist)
        finally:
            D.cleanup(self.dist)
        return record


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          step_hook: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train a run into ``out`` (see :class:`Trainer`); return the last epoch's metrics."""
    return Trainer(cfg, out, resume=resume, progress=progress, step_hook=step_hook).fit()
