"""The images a run reads: its training and evaluation splits, their transforms and the method's extra
inputs, the training loader (global batches, class balancing), mixup, and the unreadable images it met."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Any

import torch

from ..config import RunConfig
from ..data import (HOLDOUT, build_transform, collate, eval_transform, leave_sigterm_to_the_reader, open_dataset,
                    parse_spec, selection_split, split_holdout)
from ..errors import LookcloserError
from ..folders import shown
from . import distributed as D

log = logging.getLogger(__name__)


def _check_streamable(dc) -> None:
    """Streamed shards are read once, in passes: what needs the whole list of images is refused."""
    ways = {"--holdout": "write the shards with a val split instead (lookcloser data shard --splits train,val)",
            "--cache": "drop --cache (streaming reads each shard once per epoch)",
            "--balance sampler": "train from the data set's folder to balance the classes"}
    for flag, used in (("--holdout", dc.holdout > 0), ("--cache", dc.cache), ("--balance sampler", dc.balance == "sampler")):
        if used:
            raise LookcloserError(f"{flag} needs the whole list of training images, which streamed shards (wds:) do "
                                  f"not give; {ways[flag]}")


class _Epoch:
    """One epoch of a streamed loader: its first ``batches`` batches."""

    def __init__(self, loader, batches: int):
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.batches)


def balanced_weights(targets: list[int]) -> list[float]:
    """Per-image sampling weights of a class-balanced epoch (``--balance sampler``): 1 / class size."""
    counts = Counter(targets)
    return [1.0 / counts[y] for y in targets]


class RunData:
    """A run's splits, read once: the training images (less the held-out ones) and the evaluation split.

    ``eval_name`` is the split every epoch is scored on: ``--eval-split``, else the held-out images where
    ``--holdout`` keeps some, else val where the data set has one, else test; ``select_best`` says whether
    best.pt may be chosen on it (never on test unless ``--best-on-test``).
    """

    def __init__(self, cfg: RunConfig, dist: D.DistInfo):
        self.cfg, self.dist = cfg, dist
        dc, held = cfg.data, cfg.data.holdout
        fmt, rest = parse_spec(dc.data)
        self.streaming = fmt == "wds"
        if self.streaming:  # shards stream through the training loop; evaluation reads its split by position
            _check_streamable(dc)
            from ..data.shards import open_shards

            train_split = open_shards(rest, "train", stream=True)
        else:
            train_split = open_dataset(dc.data, "train")  # read once, also when part of it is held out
        self.train_set, held_set = split_holdout(train_split, held) if held else (train_split, None)
        self.eval_name = dc.eval_split or (HOLDOUT if held else selection_split(dc.data))
        self.select_best = self.eval_name != "test" or cfg.train.best_on_test
        if held_set is not None and self.eval_name == HOLDOUT:
            self.eval_set = held_set
        else:
            self.eval_set = open_dataset(dc.data, self.eval_name, holdout=held)
        self.classes = self.train_set.classes
        if len(self.train_set) == 0:
            raise LookcloserError(f"the training split of {dc.data} has no images; check the data folder")
        self.mixer = None
        self.skipped_seen: set[str] = set()
        self._loader = None

    def prepare(self, model, preprocess: dict[str, Any]) -> None:
        """Transforms for ``model`` (its normalization, applied on the device in the step), the method's
        per-sample inputs, mixup and the decoded-image cache."""
        dc = self.cfg.data
        self.train_set.transform = build_transform(True, dc.image_size, model.mean, model.std,
                                                   resize_ratio=dc.resize_ratio, hflip=dc.hflip,
                                                   color_jitter=dc.color_jitter, squash=dc.squash,
                                                   rotation=dc.rotation, pca_lighting=dc.pca_lighting,
                                                   crop_scale=dc.crop_scale, auto_augment=dc.auto_augment,
                                                   random_erasing=dc.random_erasing,
                                                   uint8=True)  # normalized on the device, in the step
        self.eval_set.transform = eval_transform(preprocess)
        for ds in (self.train_set, self.eval_set):
            inputs = model.sample_inputs(ds, preprocess)  # what the method needs beside the images
            if inputs is not None and self.streaming:
                raise LookcloserError(f"{self.cfg.model.method}'s per-image inputs (-o box_file) name images by "
                                      "file, which streamed shards do not have; train from the data set's folder")
            if inputs is not None:
                ds.extras = inputs.per_sample
                if inputs.fixed_view and ds is self.train_set:
                    self.train_set.transform = self.eval_set.transform  # the inputs refer to that view
        if dc.mixup > 0 or dc.cutmix > 0:
            if self.cfg.model.method != "baseline":
                raise LookcloserError(f"--mixup and --cutmix mix two images into one, which {self.cfg.model.method}'s "
                                      "own terms (attention crops, centers, distillation) do not define; use them "
                                      "with the baseline")
            from timm.data import Mixup

            # its label smoothing is the run's: the mixed targets carry it, and the loss adds none
            self.mixer = Mixup(mixup_alpha=dc.mixup, cutmix_alpha=dc.cutmix,
                               label_smoothing=self.cfg.train.label_smoothing, num_classes=len(self.classes))
        if dc.cache:
            used = self.train_set.use_cache(dc.cache_gb).nbytes / 2**30
            self.eval_set.use_cache(dc.cache_gb - used)  # the limit holds for both splits together

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: global batches, less a partial one, over gradient accumulation (streamed
        shards: the batches every process takes, :meth:`lookcloser.data.shards.ShardStream.batches`)."""
        if self.streaming:
            per_epoch = self.train_set.batches(self.cfg.data.batch_size, self.dist.world_size) or 1
        else:
            per_epoch = len(self.train_set) // (self.cfg.data.batch_size * self.dist.world_size) or 1
        return max(1, per_epoch // self.cfg.train.accum_steps)

    def loader(self, epoch: int, device: torch.device, start: int = 0):
        """The training loader, made once: its workers persist from epoch to epoch (no restart cost, and
        each keeps its warm state), and its sampler moves to ``epoch``, beginning at batch ``start`` (a run
        resumed in the middle of an epoch; never for streamed shards, which save at the ends of epochs)."""
        dc = self.cfg.data
        if self.streaming:  # a new pass each epoch, dealt and shuffled for it, cut to the same batch count
            self.train_set.set_epoch(self.cfg.train.seed, epoch)
            loader = torch.utils.data.DataLoader(self.train_set, batch_size=dc.batch_size, num_workers=dc.workers,
                                                 collate_fn=collate, pin_memory=device.type == "cuda",
                                                 worker_init_fn=leave_sigterm_to_the_reader)
            return _Epoch(loader, self.train_set.batches(dc.batch_size, self.dist.world_size) or 1)
        if self._loader is None:
            weights = balanced_weights(self.train_set.targets) if dc.balance == "sampler" else None
            self.sampler = D.GlobalBatchSampler(len(self.train_set), dc.batch_size, self.dist.world_size,
                                                self.dist.rank, self.cfg.train.seed, epoch, weights=weights)
            self._loader = torch.utils.data.DataLoader(
                self.train_set, batch_sampler=self.sampler, num_workers=dc.workers, collate_fn=collate,
                pin_memory=device.type == "cuda", persistent_workers=dc.workers > 0,
                worker_init_fn=leave_sigterm_to_the_reader)
        self.sampler.set_epoch(epoch, start)
        return self._loader

    def mix(self, images: torch.Tensor, labels: torch.Tensor):
        """``(images, labels, targets)``: with mixup or cutmix, the mixed batch and its soft targets (an even
        count: timm mixes a batch with its mirror); else the batch and its labels."""
        if self.mixer is None:
            return images, labels, labels
        if len(labels) % 2:
            images, labels = images[:-1], labels[:-1]
        images, targets = self.mixer(images, labels)  # soft targets, B×K
        return images, labels, targets

    def report_skipped(self, bad: list[str]) -> int:
        """Name each unreadable image once; return how many ``bad`` holds."""
        for path in bad:
            if path not in self.skipped_seen:
                self.skipped_seen.add(path)
                log.warning("skipping unreadable image %s: %s", path, getattr(path, "reason", "unreadable"))
        return len(bad)

    def too_many_unreadable(self, epoch: int) -> str:
        return (f"more than {self.cfg.data.max_unreadable:.0%} of the training images of {self.cfg.data.data} "
                f"cannot be read (stopped in epoch {epoch + 1}: {shown(self.skipped_seen)}); fix or remove them, or "
                "raise --max-unreadable to train on the rest")

