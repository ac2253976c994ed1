"""The one training loop shared by every method.

Methods differ only by their objective (``model.loss``). The loop steps the optimizer through the run's
phases (:mod:`.schedule`: heads first on frozen backbones, then everything), in the run's precision
(:mod:`.precision`), with gradient accumulation and DistributedDataParallel (optionally SyncBatchNorm),
evaluates every epoch sharded over the processes, and writes atomic checkpoints (``last.pt`` every epoch,
``best.pt`` by top-1 on a split that is not test, unless ``best_on_test``) and ``metrics.jsonl`` (reduced
over the processes). What it reads is :mod:`.rundata`; what its folder may hold and the sentences for a
run that stops early are :mod:`.runfolder`; the machine's threads and names are :mod:`.machine`.

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
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .._version import __version__, code_commit
from ..config import DEFAULT_HEAD_EPOCHS, MIN_HEAD_STEPS, SMALL_SET_LR_SCALE, RunConfig
from ..data import HOLDOUT, normalize_batch
from ..errors import LookcloserError, NonFiniteLossError
from ..models import create_model
from ..models.registry import validate_options
from . import distributed as D
from .adaptive import keep_run_thresholds
from .checkpoint import FORMAT, VERSION, atomic_save, load_checkpoint_file, rng_state, set_rng_state
from .distributed import resolve_device
from .evaluate import compute_metrics, predict_dataset
from .machine import auto_threads, device_name
from .precision import Precision
from .rundata import RunData
from .runfolder import (check_run_folder, class_change, file_stat, interrupted_message, non_finite_message,
                        resumed_config, stale_temporaries, start_run)
from .runlock import run_lock
from .schedule import Schedule, build_optimizer

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stands and how to continue it."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def small_set_notes(asked: RunConfig, cfg: RunConfig, images: int, steps: int) -> list[str]:
    """What the training set's size changed in the run the user ``asked`` for (``cfg``: resolved) and why, for
    the log: longer heads first, and the small-set rule after them."""
    why = f"an epoch of {images} training images is {steps} optimizer step{'s' * (steps != 1)}"
    notes = []
    if asked.train.head_epochs < 0 and cfg.train.head_epochs > DEFAULT_HEAD_EPOCHS:
        notes.append(f"heads first for {cfg.train.head_epochs} epochs, not {DEFAULT_HEAD_EPOCHS}: {why}, and the "
                     f"heads get at least {MIN_HEAD_STEPS} (--head-epochs sets them)")
    if asked.train.small_set == "auto" and cfg.train.small_set == "on":
        notes.append(f"a small training set ({why}): after the heads BatchNorm stays frozen and everything trains at "
                     f"a tenth of the rate, {cfg.train.lr * SMALL_SET_LR_SCALE:g} instead of {cfg.train.lr:g} "
                     "(--small-set off keeps the recipe)")
    return notes


class Trainer:
    """Train one run into a folder.

    Args:
        cfg: the resolved run configuration.
        out: run folder (created); holds config.yaml, last.pt, best.pt, metrics.jsonl.
        resume: continue from ``out/last.pt``.
        progress: show progress bars.
        step_hook: called as ``step_hook(epoch, step)`` after every optimizer step (tests use it to
            simulate a crash).
        changes: with ``resume``, the fields ``--resume`` may change (:data:`.runfolder.RESUMABLE`).
    """

    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                 step_hook: Callable[[int, int], None] | None = None,
                 changes: dict[str, dict[str, Any]] | None = None):
        self.out, self.progress, self.step_hook = Path(out), progress, step_hook
        self.resume_ckpt = None
        rank = int(os.environ.get("RANK", "0"))
        if resume:
            if not (self.out / "last.pt").is_file():
                raise LookcloserError(f"cannot resume: {self.out / 'last.pt'} does not exist; start a new run instead")
            self.resume_ckpt = load_checkpoint_file(self.out / "last.pt")
            self._resumed_stat = file_stat(self.out / "last.pt")
            cfg = resumed_config(self.out, RunConfig.from_saved(self.resume_ckpt["config"]), changes or {},
                                 int(self.resume_ckpt["epoch"]))
        elif rank == 0:
            check_run_folder(self.out)
        if rank == 0 and self.out.is_dir():
            for tmp in stale_temporaries(self.out):  # left by a write that was killed; never a good file
                tmp.unlink(missing_ok=True)
        validate_options(cfg.model.method, dict(cfg.model.options))  # a bad -o fails before anything is read
        unresolved = cfg  # its auto choices are made below, once the training set's size is known
        cfg = cfg.resolved()  # the heads-first epochs follow the weights; saved as resolved
        self.cfg = cfg
        tc = cfg.train
        self.threads = tc.threads or auto_threads()
        self.device = resolve_device(tc.device)
        self.dist = D.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = Precision(self.device, tc.precision, tc.bf16)
        seed_everything(tc.seed)

        self.data = RunData(cfg, self.dist)
        steps = self.data.steps_per_epoch()
        # a small training set: longer heads first, then the small-set rule
        cfg = self.cfg = self.data.cfg = unresolved.resolved(steps)
        tc = cfg.train
        self.size_notes = small_set_notes(unresolved, cfg, len(self.data.train_set), steps)
        self.classes = self.data.classes
        if self.resume_ckpt is not None and self.classes != self.resume_ckpt["classes"]:
            raise LookcloserError(class_change(self.resume_ckpt["classes"], self.classes, cfg.data.data))

        from ..backbones import structure_only

        opts = {**cfg.model.options, **({"weights": cfg.model.weights} if cfg.model.weights else {})}
        # on resume the checkpoint supplies the weights: build the same architecture, read no weight files
        with structure_only() if self.resume_ckpt else contextlib.nullcontext():
            model = create_model(cfg.model.method, backbone=cfg.model.backbone, num_classes=len(self.classes),
                                 pretrained=cfg.model.pretrained, **opts)
        model.set_label_smoothing(tc.label_smoothing)
        if tc.sync_bn and self.dist.enabled:
            D.convert_global_batchnorm(model)
        self.model = model.to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.head_probe: dict[str, Any] = {}
        if tc.head_init == "probe" and self.resume_ckpt is None:  # linear probing, then fine-tuning
            self.head_probe = self._probe_head()
        self.ema = None
        if tc.ema > 0:
            from timm.utils import ModelEmaV3

            # a copy of the model that follows its weights: the first step copies them, later ones average
            self.ema = ModelEmaV3(self.model, decay=tc.ema)
        self.data.prepare(model, self._preprocess())
        self.optimizer = build_optimizer(model, tc)
        self.schedule = Schedule(tc, self.optimizer, self.data.steps_per_epoch())
        self.step, self.start_epoch, self.best_top1 = 0, 0, -1.0
        self.resume_position: dict[str, Any] | None = None  # where in its epoch a mid-epoch last.pt stood
        self.last_metrics: dict[str, Any] = {}  # the last finished epoch's record, kept in mid-epoch saves too
        self.stop_requested = False  # a SIGTERM: save at the next optimizer step and stop
        self.in_steps = False  # inside an epoch's training steps, where a SIGTERM waits for the next save
        self.saved_at = time.monotonic()
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.net = self.model
        self.net_heads_only: bool | None = None  # the phase self.net was wrapped for

    def _probe_head(self) -> dict[str, Any]:
        """Start the classifier from the linear probe of the frozen pretrained features (``head_init: probe``).
        Every process fits the same probe on the same images; DistributedDataParallel's first broadcast makes
        any last-bit difference rank 0's."""
        from .linear import probe_head

        cfg = self.cfg
        view = int(cfg.model.options.get("view_size") or cfg.data.image_size)
        got = probe_head(self.model, cfg.data.data, cfg.data.holdout, self._preprocess(), view, self.device,
                         batch_size=cfg.data.batch_size, workers=cfg.data.workers, progress=self.progress)
        # said with the run's other notes, after the line that says what it trains
        self.size_notes.append(f"the classifier starts from the linear probe of the frozen features ({got['images']} "
                               f"training images at {view} px; strength {got['strength']:g}, chosen on a tenth of "
                               f"them at {got['strength_top1']:.1f}% top-1)")
        return {"head_probe_strength": got["strength"], "head_probe_strength_top1": got["strength_top1"],
                "head_probe_train_top1": got["train_top1"]}

    def _preprocess(self) -> dict[str, Any]:
        """The evaluation preprocessing, saved in checkpoints so that predict needs nothing else."""
        dc = self.cfg.data
        return {"image_size": dc.image_size, "resize_ratio": dc.resize_ratio, "squash": dc.squash,
                "mean": list(self.model.mean), "std": list(self.model.std)}

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int, metrics: dict[str, Any], rng_states: list) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "method": self.model.method_name, "build_args": self.model.build_args,
            "classes": self.classes, "preprocess": self._preprocess(), "model": self.model.state_dict(),
            **({"model_ema": self.ema.module.state_dict()} if self.ema is not None else {}),
            "optimizer": self.optimizer.state_dict(), "scaler": self.precision.scaler.state_dict(),
            "scheduler": self.schedule.state(self.step),
            "epoch": epoch, "best_top1": self.best_top1, "metrics": metrics,
            "config": self.cfg.to_dict(), "rng": rng_states[0], "rng_per_rank": rng_states,
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
        self.optimizer.load_state_dict(ckpt["optimizer"])  # the rates come from the (maybe new) config
        self.precision.restore(ckpt.get("scaler"))
        self.step, self.start_epoch, self.best_top1 = ckpt["scheduler"]["step"], ckpt["epoch"], ckpt["best_top1"]
        states = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        # each process continues its own random streams (a different world size starts from rank 0's)
        own_rng = states[self.dist.rank] if self.dist.rank < len(states) else states[0]
        set_rng_state(own_rng)
        self.last_metrics = ckpt.get("metrics") or {}
        pos = ckpt.get("position")
        if pos:  # saved in the middle of an epoch: it continues from there, over the same global batches
            now = {"global_batch": self.cfg.data.batch_size * self.dist.world_size, "images": len(self.data.train_set)}
            if (pos["global_batch"], pos["images"]) != (now["global_batch"], now["images"]):
                raise LookcloserError(
                    f"{self.out / 'last.pt'} was saved in the middle of epoch {pos['epoch'] + 1} with global batches "
                    f"of {pos['global_batch']} images over {pos['images']} training images, and this start has "
                    f"{now['global_batch']} over {now['images']}; resume it with the same processes and the same "
                    "data to continue that epoch")
            self.resume_position = {**pos, "rng": own_rng}  # this process's generators as they stood at the save
            self.head_probe = pos.get("head_probe") or {}

    # ---- loop --------------------------------------------------------------------------------
    def _enter_phase(self, epoch: int) -> None:
        """Training mode for the epoch's phase, and the wrappers (DDP, compile) built for it: DDP reduces
        the gradients of the parameters that require one when it is built, so a phase change rebuilds it."""
        heads = self.schedule.heads_only(epoch)
        self.schedule.enter(self.model, epoch)
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

    def train_epoch(self, epoch: int) -> dict[str, float]:
        tc, data, dist, scaler = self.cfg.train, self.data, self.dist, self.precision.scaler
        self._enter_phase(epoch)
        # a run resumed in the middle of this epoch: from the batch after the last one saved, with the sums
        pos, self.resume_position = self.resume_position, None
        start = pos["batch"] if pos else 0
        loader = data.loader(epoch, self.device, start=start)
        heads = self.schedule.heads_only(epoch)
        per_batch = self.cfg.data.batch_size * dist.world_size
        bar = tqdm(total=len(loader) * per_batch, initial=start * per_batch, unit="img",
                   desc=f"epoch {epoch + 1}/{self.schedule.total_epochs}{' (heads)' if heads else ''}",
                   disable=not (self.progress and dist.is_main), dynamic_ncols=True)
        seen, correct, loss_sum, skipped, terms_sum = self._restored_sums(pos)
        before = pos["elapsed"] if pos else 0.0  # seconds the epoch trained before it was saved
        limit = self.cfg.data.max_unreadable * len(data.train_set) / dist.world_size
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        batches = iter(loader)  # the loader draws its workers' seeds from the generators here ...
        if pos:  # ... so they continue from the saved states after it, as they did when the state was saved
            set_rng_state(pos["rng"])
        for i, (images, labels, bad, extras) in enumerate(batches, start=start):
            self.position = (epoch, i)
            skipped += data.report_skipped(bad)
            bar.update((len(labels) + len(bad)) * dist.world_size)
            if not D.all_true(skipped <= limit, dist, self.device):
                bar.close()
                raise LookcloserError(data.too_many_unreadable(epoch))
            # BatchNorm needs two images; unreadable ones can leave a batch of one (every process skips it)
            if not D.all_true(len(labels) >= 2, dist, self.device):
                if len(labels):
                    log.warning("epoch %d, batch %d: skipped a batch of %d readable image(s)", epoch + 1, i + 1,
                                len(labels))
                continue
            images = normalize_batch(images.to(self.device, non_blocking=True), self.model.mean, self.model.std)
            labels = labels.to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            images, labels, targets = data.mix(images, labels)
            with self.precision.autocast():
                out = self.net(images, labels, **{k: v.to(self.device) for k, v in extras.items()})
                loss, terms = self.model.loss(out, targets)
            if not D.all_true(bool(torch.isfinite(loss).item()), dist, self.device):
                bar.close()
                raise NonFiniteLossError(non_finite_message(self.out, loss.item(), epoch, i, tc.lr))
            scaler.scale(loss / tc.accum_steps).backward()  # unscaled unless float16
            n = len(labels)
            seen += n
            correct += (out.logits.detach().argmax(1) == labels).sum().item()
            loss_sum += loss.item() * n
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * n
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            lr=f"{self.schedule.lr():.2g}", refresh=False)
            if (i + 1) % tc.accum_steps == 0:
                self._optimizer_step(epoch)
                # not after the epoch's last batch: the end of the epoch saves next
                if i + 1 < len(loader) and self._save_due():
                    elapsed = D.all_max(time.perf_counter() - t0, dist, self.device) + before
                    self._save_within(epoch, i + 1, len(loader), [seen, correct, loss_sum, skipped, terms_sum],
                                      elapsed)
        bar.close()
        elapsed = D.all_max(time.perf_counter() - t0, dist, self.device) + before
        # the epoch's figures over every process: sums of images, hits, losses and terms
        names = sorted(terms_sum)
        totals = D.all_sum([seen, correct, loss_sum, skipped, *(terms_sum[k] for k in names)], dist, self.device)
        seen, correct, loss_sum, skipped = int(totals[0]), int(totals[1]), totals[2], int(totals[3])
        if skipped and dist.is_main:
            log.warning("epoch %d: skipped %d unreadable image(s) (named above)", epoch + 1, skipped)
        if seen == 0:
            what = ("could be read" if skipped >= len(data.train_set) else
                    "came in a batch with another readable image (BatchNorm needs two)")
            raise LookcloserError(f"no image of the training split of {self.cfg.data.data} {what} in epoch "
                                  f"{epoch + 1} ({skipped} unreadable); check the data folder")
        return {"phase": "heads" if heads else "all",
                "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
                **{f"train_{k}": v / seen for k, v in zip(names, totals[4:])},
                "train_images_per_s": seen / max(elapsed, 1e-9), "train_time_s": elapsed,
                "threads": torch.get_num_threads(), "skipped_images": skipped}

    def _optimizer_step(self, epoch: int) -> None:
        scaler = self.precision.scaler
        if self.cfg.train.grad_clip > 0:
            scaler.unscale_(self.optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.schedule.set_lr(self.step)
        scaler.step(self.optimizer)  # skipped (and the scale lowered) on an overflow in float16
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        if self.step_hook is not None:
            self.step_hook(epoch, self.step)

    def _catch_sigterm(self):
        """While the run trains, a SIGTERM (a scheduler's time limit, a preempted machine, ``kill``) asks it to save
        at the next optimizer step and stop; outside the epochs' steps (an evaluation) it stops at once, like
        Ctrl-C. Returns the handler to put back (None where signals cannot be caught: not the main thread)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum, frame):
            if self.stop_requested or self.data.streaming or not self.in_steps:  # a second one, no mid-epoch
                raise KeyboardInterrupt  # save, or an evaluation: stop now
            self.stop_requested = True

        return signal.signal(signal.SIGTERM, stop)

    def _restored_sums(self, pos: dict[str, Any] | None) -> tuple[int, int, float, int, dict[str, float]]:
        """The epoch's running sums (images, hits, loss, unreadable images, loss terms) where a run resumed in
        the middle of it left them: each process its own, or all on rank 0 under another world size (the
        epoch's figures are sums over the processes either way)."""
        if not pos:
            return 0, 0, 0.0, 0, {}
        sums = pos["sums"]
        if len(sums) == self.dist.world_size:
            seen, correct, loss_sum, skipped, terms = sums[self.dist.rank]
            return seen, correct, loss_sum, skipped, dict(terms)
        if self.dist.rank:
            return 0, 0, 0.0, 0, {}
        terms: dict[str, float] = {}
        for s in sums:
            for k, v in s[4].items():
                terms[k] = terms.get(k, 0.0) + v
        return (sum(s[0] for s in sums), sum(s[1] for s in sums), sum(s[2] for s in sums), sum(s[3] for s in sums),
                terms)

    def _save_due(self) -> bool:
        """Whether to save in the middle of the epoch now: ``checkpoint_minutes`` have passed since the last save,
        or the process was asked to stop (SIGTERM). Decided together: when any process says so, all save."""
        if self.data.streaming:  # a streamed pass cannot start part way: shards save at the ends of epochs
            return False
        minutes = self.cfg.train.checkpoint_minutes
        due = self.stop_requested or (minutes > 0 and time.monotonic() - self.saved_at >= 60 * minutes)
        return not D.all_true(not due, self.dist, self.device)

    def _save_within(self, epoch: int, batch: int, batches: int, sums: list, elapsed: float) -> None:
        """last.pt in the middle of ``epoch``, ``batch`` of ``batches`` done: everything :meth:`_save` keeps, and
        where the epoch stands (its running sums and seconds; every process's generator states are the
        checkpoint's own ``rng_per_rank``, put back after the loader's draws on resume); the epoch's
        line in metrics.jsonl comes at its end. Stops the run afterwards when a SIGTERM asked for it."""
        rng_states = D.gather_objects(rng_state(), self.dist)
        position = {"epoch": epoch, "batch": batch, "batches": batches, "images": len(self.data.train_set),
                    "global_batch": self.cfg.data.batch_size * self.dist.world_size,
                    "sums": D.gather_objects(sums, self.dist), "elapsed": elapsed,
                    "head_probe": self.head_probe if epoch == 0 else {}}
        if self.dist.is_main:
            atomic_save({**self._state(epoch, self.last_metrics, rng_states), "position": position},
                        self.out / "last.pt")
            msg = (f"saved {self.out / 'last.pt'} at batch {batch} of {batches} of epoch {epoch + 1} "
                   f"({'asked to stop' if self.stop_requested else f'every {self.cfg.train.checkpoint_minutes:g} min'})")
            tqdm.write(msg) if self.progress else log.info(msg)
        D.barrier(self.dist)
        self.saved_at = time.monotonic()
        if self.stop_requested:
            raise KeyboardInterrupt  # said as an interruption: where the run stands and how to continue it

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and that inference reads: the moving average where one is kept."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, Any]:
        """Top-1, top-5 and mean per-class accuracy on the evaluation split, each process predicting a share."""
        data = self.data
        probs, labels, bad = predict_dataset(self.eval_model, data.eval_set, self.device,
                                             batch_size=self.cfg.data.batch_size, workers=self.cfg.data.workers,
                                             amp=self.precision.amp, amp_dtype=self.precision.dtype,
                                             progress=self.progress and self.dist.is_main, desc=f"eval {data.eval_name}",
                                             channels_last=self.cfg.train.channels_last, dist=self.dist)
        if self.dist.is_main:
            data.report_skipped(bad)
        if len(labels) == 0:
            raise LookcloserError(f"no image of the {data.eval_name} split of {self.cfg.data.data} could be read "
                                  f"({len(bad)} unreadable); check the data folder")
        m = compute_metrics(probs, labels, len(self.classes))
        return {"eval_split": data.eval_name, "eval_top1": m["top1"], "eval_top5": m["top5"],
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
            elif file_stat(self.out / "last.pt") != self._resumed_stat:
                raise LookcloserError(f"{self.out / 'last.pt'} changed while this process was starting (another "
                                      "process wrote it); run the command again to continue from its new state")
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        tc, main, data = self.cfg.train, self.dist.is_main, self.data
        if main:
            start_run(self.out, self.cfg, self.data, self.model.method_name, self.device, self.dist.world_size,
                      resumed=self.resume_ckpt is not None, notes=self.size_notes)
        record: dict[str, Any] = {}
        self.position = (self.start_epoch, 0)
        from .tracking import EventLog

        events = EventLog(self.out / "tb") if main and tc.tensorboard else None
        # in every epoch's record: where and by which code it was trained
        import timm

        # (the versions as plain str: the checkpoint that keeps the record loads only plain values)
        provenance = {"device": device_name(self.device), "commit": code_commit(), "version": __version__,
                      "torch": str(torch.__version__), "timm": str(timm.__version__)}
        threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # for this run only: restored below
        sigterm = self._catch_sigterm()
        try:
            for epoch in range(self.start_epoch, self.schedule.total_epochs):
                self.in_steps = True
                try:
                    figures = self.train_epoch(epoch)
                finally:
                    self.in_steps = False
                record = {"epoch": epoch + 1, **figures, "world_size": self.dist.world_size,
                          **provenance, **(self.head_probe if epoch == 0 else {})}
                if tc.eval_every and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == self.schedule.total_epochs):
                    record.update(self.evaluate())
                record["lr"] = self.schedule.lr()  # the rates of the epoch's last step
                record["backbone_lr"] = self.schedule.lr(backbone=True)
                rng_states = D.gather_objects(rng_state(), self.dist)
                # every process holds the gathered evaluation, so each keeps the same best
                is_best = data.select_best and "eval_top1" in record and record["eval_top1"] > self.best_top1
                if is_best:
                    self.best_top1 = record["eval_top1"]
                if data.select_best:
                    record["best_top1"] = self.best_top1
                if main:
                    self._save(epoch, record, rng_states, is_best, events)
                D.barrier(self.dist)
                self.saved_at = time.monotonic()
                # asked to stop after the epoch's last step: it is saved, stop here (after the last epoch the run
                # is finished and goes on to what ends it)
                if epoch + 1 < self.schedule.total_epochs and not D.all_true(not self.stop_requested, self.dist,
                                                                              self.device):
                    raise KeyboardInterrupt
            if main and self.start_epoch < self.schedule.total_epochs and self.model.looks_closer \
                    and data.eval_name == HOLDOUT:  # when to zoom, chosen on the held-out images
                keep_run_thresholds(self.out, self.eval_model, data.eval_set, self.device,
                                    image_size=self.cfg.data.image_size, batch_size=self.cfg.data.batch_size,
                                    workers=self.cfg.data.workers, amp=self.precision.amp,
                                    amp_dtype=self.precision.dtype)
        except KeyboardInterrupt:
            raise TrainingInterrupted(interrupted_message(self.out, *self.position)) from None
        finally:
            torch.set_num_threads(threads_before)
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
            if events is not None:
                events.close()
            D.cleanup(self.dist)
        return record

    def _save(self, epoch: int, record: dict[str, Any], rng_states: list, is_best: bool, events) -> None:
        """Checkpoints (atomically), the epoch's line in metrics.jsonl and TensorBoard, and its summary."""
        atomic_save(self._state(epoch + 1, record, rng_states), self.out / "last.pt")
        self.last_metrics = record
        if is_best:
            tmp = self.out / ".best.pt.tmp"
            shutil.copyfile(self.out / "last.pt", tmp)
            os.replace(tmp, self.out / "best.pt")
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if events is not None:
            events.epoch(record)
            if "eval_top1" in record:
                events.attention(self.eval_model, self.data.eval_set, self.device, epoch + 1)
        msg = f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, train top-1 {record['train_top1']:.1f}%"
        if "eval_top1" in record:
            msg += f", {self.data.eval_name} top-1 {record['eval_top1']:.1f}%"
            msg += f" (best {self.best_top1:.1f}%)" if self.data.select_best else ""
        tqdm.write(msg) if self.progress else log.info(msg)


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          step_hook: Callable[[int, int], None] | None = None,
          changes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train a run into ``out`` (see :class:`Trainer`); return the last epoch's metrics.

    With ``resume``, ``cfg`` is ignored (the run's saved configuration is used) and ``changes``
    (``{group: {field: value}}``) may set the fields in :data:`.runfolder.RESUMABLE`.
    """
    return Trainer(cfg, out, resume=resume, progress=progress, step_hook=step_hook, changes=changes).fit()
