"""A training run's folder: what may start in it, what ``--resume`` may change, and the sentences that
say where a run stands when it stops early (Ctrl-C, a non-finite loss, unreadable data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import LookcloserError
from ..folders import shown
from .checkpoint import load_checkpoint_file, saved_at

# what --resume may change: the rest of a run's configuration is fixed by its checkpoint
RESUMABLE = {"train": ("epochs", "lr", "device", "threads", "eval_every", "checkpoint_minutes"), "data": ("workers",)}
# files a training run writes into its folder (a crashed write leaves a temporary of one of them)
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl")


def stale_temporaries(out: Path) -> list[Path]:
    """Temporaries of a checkpoint write that was killed: never a good file."""
    return [p for p in out.glob(".*.tmp") if p.name.startswith((".last.pt.", ".best.pt."))]


def check_run_folder(out: Path) -> None:
    """A new run needs a folder that is new or empty (temporaries of a crashed write aside) and writable."""
    if out.exists() and not out.is_dir():
        raise LookcloserError(f"--out {out} is a file; give a folder for the run (new or empty)")
    if out.is_dir():
        stale = set(stale_temporaries(out))
        held = [p.name for p in out.iterdir() if p not in stale]
        if (out / "last.pt").is_file():
            raise LookcloserError(f"{out} already holds a run; pass --resume {out} to continue it or choose "
                                  "another --out")
        if held:
            raise LookcloserError(f"{out} is not empty (it holds {shown(held)}) and has no last.pt to resume; a run "
                                  "folder must be new or empty, so choose another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LookcloserError(f"cannot write into {existing} (permission denied); choose a writable --out")


def resumed_config(out: Path, saved: RunConfig, changes: dict[str, dict[str, Any]], done: int) -> RunConfig:
    """A run's saved configuration with the changes --resume allows (``done`` epochs trained); any other
    change is refused."""
    given = {(g, k): v for g, values in changes.items() for k, v in values.items()
             if v is not None and v != {} and not (g == "model" and k == "options" and not v)}
    refused = sorted(f"{g}.{k}" for g, k in given if k not in RESUMABLE.get(g, ()))
    if refused:
        allowed = ", ".join(f"--{k.replace('_', '-')}" for ks in RESUMABLE.values() for k in ks)
        flags = ", ".join("-o" if k == "model.options" else "--" + k.split(".")[1].replace("_", "-")
                          for k in refused)
        raise LookcloserError(f"--resume continues {out} with its saved configuration and cannot change "
                              f"{flags}; it may change {allowed} (start a new run to change the rest)")
    epochs = given.get(("train", "epochs"))
    heads = max(0, saved.train.head_epochs)
    if epochs is not None and heads + epochs <= done:
        least = max(1, done - heads + 1)
        first = f" ({heads} heads-first epoch(s) and {done - heads} of --epochs)" if heads else ""
        raise LookcloserError(f"{out} has already trained {done} epoch(s){first}; pass --epochs {least} or "
                              "more to train further")
    return saved.merged({g: {k: v for (gg, k), v in given.items() if gg == g} for g in ("train", "data")})


def class_change(old: list[str], new: list[str], data: str) -> str:
    """Why a resumed run's data set no longer fits its checkpoint's classes."""
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


def file_stat(path: Path) -> tuple[int, int] | None:
    """``(mtime, size)`` of ``path``, None where it does not exist: whether another process wrote it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def non_finite_message(out: Path, loss: float, epoch: int, batch: int, lr: float) -> str:
    where = f"the loss became {loss} at epoch {epoch + 1}, batch {batch + 1}; "
    last = out / "last.pt"
    if last.is_file():
        done = load_checkpoint_file(last)["epoch"]
        return (where + f"{last} (epoch {done}) is intact: continue from it with a lower learning rate, "
                f"`lookcloser train --resume {out} --lr {lr / 10:g}`, or check the data")
    return where + ("no epoch had finished, so nothing was saved: start again with a lower --lr "
                    f"(e.g. {lr / 10:g}) or check the data")


def interrupted_message(out: Path, epoch: int, batch: int) -> str:
    last = out / "last.pt"
    if last.is_file():
        held = saved_at(load_checkpoint_file(last))
        return (f"interrupted in epoch {epoch + 1}, batch {batch + 1}; {last} holds {held}: "
                f"`lookcloser train --resume {out}` continues from there")
    return f"interrupted in epoch {epoch + 1}, batch {batch + 1}, before any epoch finished; nothing was saved"


def start_run(out: Path, cfg: RunConfig, data, method: str, device, world_size: int, *, resumed: bool,
              notes: list[str] | None = None) -> None:
    """Save the run's configuration into its folder (which exists: the run took its lock) and say what it
    trains, on what it chooses best.pt, whether its backbone starts from random weights, and ``notes``
    (what the training set's size changed: :func:`lookcloser.engine.trainer.small_set_notes`)."""
    import logging

    log = logging.getLogger("lookcloser.engine.trainer")
    try:
        cfg.save(out / "config.yaml")
    except OSError as e:
        raise LookcloserError(f"cannot write into {out} ({e.strerror or e}); choose a writable --out") from e
    log.info("training %s on %s (%d train / %d %s images, %d classes) on %s, world size %d", method, cfg.data.data,
             len(data.train_set), len(data.eval_set), data.eval_name, len(data.classes), device, world_size)
    for note in notes or ():
        log.info("%s", note)
    if cfg.train.eval_every:
        log.info("%s", selection_note(data.select_best, data.eval_name))
    if not cfg.starts_pretrained and not resumed:
        log.info("the backbone %s starts from random weights (pass --pretrained for ImageNet weights, or "
                 "--weights FILE)", cfg.model.backbone)


def selection_note(select_best: bool, eval_name: str) -> str:
    """One line saying what each epoch is evaluated on and what best.pt is chosen on."""
    if select_best:
        return (f"every epoch is scored on the {eval_name} split and best.pt is the epoch with the best "
                f"{eval_name} top-1")
    return ("every epoch is scored on the test split for the curves only: no best.pt is chosen on test, so "
            "`lookcloser evaluate` reports the final weights (--holdout 0.1 chooses on held-out training "
            "images; --best-on-test chooses on test, as the papers report)")
