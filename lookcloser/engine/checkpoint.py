"""Checkpoints: plain dicts of tensors and primitives, written atomically, read without executing code.

A checkpoint carries everything needed to rebuild its model (method, build arguments), its class names
and preprocessing, so ``predict`` needs nothing else. Files are written to a temporary name in the same
folder, flushed to disk, then renamed over the old one: a crash never leaves a half-written checkpoint.
Loading uses ``torch.load(weights_only=True)``: a file holding code is refused, not run.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LookcloserError

FORMAT = "lookcloser-checkpoint"
VERSION = 1
# what every reader of a checkpoint needs (resume needs more: optimizer, scheduler, rng)
REQUIRED = ("method", "build_args", "classes", "preprocess", "model", "config")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as tensors and primitives."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict safely.

    Args:
        path: a checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``).

    Raises:
        LookcloserError: missing file, not a lookcloser checkpoint, or a file that would run code.
    """
    p = resolve_checkpoint(path)
    if p.suffix.lower() == ".safetensors":
        raise LookcloserError(f"{p} is a .safetensors weights file, not a lookcloser checkpoint; pass a run folder or "
                              "the .pt a training run wrote (backbone weights go to `train --weights`)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LookcloserError(
            f"{p} holds objects other than tensors and plain values, so it was not loaded (it could run code); "
            "use a checkpoint written by `lookcloser train`") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LookcloserError(f"{p} is not a readable checkpoint ({first}); it may be truncated or another kind of "
                              "file: use another checkpoint of the run") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise LookcloserError(f"{p} is not a lookcloser checkpoint; pass a run folder or a .pt file written by "
                              "`lookcloser train`")
    if ckpt.get("version", 0) > VERSION:
        raise LookcloserError(f"{p} was written by a newer lookcloser (format {ckpt['version']}); upgrade lookcloser")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise LookcloserError(f"{p} lacks {', '.join(missing)}, so it cannot be used (it was cut short or edited); "
                              "use another checkpoint of the run, or retrain")
    return ckpt


def saved_at(ckpt: dict[str, Any]) -> str:
    """Where a checkpoint stands: ``epoch 2``, or ``epoch 2 and 41 of 90 batches of epoch 3`` when it was saved
    in the middle of an epoch (``train.checkpoint_minutes``, a SIGTERM)."""
    pos = ckpt.get("position")
    if not pos:
        return f"epoch {ckpt['epoch']}"
    done = f"epoch {ckpt['epoch']} and " if ckpt["epoch"] else ""
    return f"{done}{pos['batch']} of {pos['batches']} batches of epoch {pos['epoch'] + 1}"


def describe_weights(path: str | Path, split: str | None = None) -> str:
    """One line saying which weights a run folder or file gives and what chose them: ``best.pt (epoch 7 of
    10, chosen on the holdout split's top-1)`` or ``last.pt (the final weights, epoch 10)``; with ``split``
    (the split being scored), a warning when best.pt was chosen on that very split."""
    p = resolve_checkpoint(path)
    ckpt = load_checkpoint_file(p)
    epoch, metrics = ckpt.get("epoch"), ckpt.get("metrics") or {}
    cfg = ckpt.get("config", {}).get("train", {})
    total = max(0, cfg.get("head_epochs") or 0) + cfg.get("epochs", epoch or 0)
    ema = f", the moving average of the weights (--ema {cfg.get('ema')})" if ckpt.get("model_ema") is not None else ""
    if p.name == "best.pt" and metrics.get("eval_split"):
        chosen = metrics["eval_split"]
        line = f"{p} (epoch {epoch} of {total}{ema}, chosen on the {chosen} split's top-1)"
        if split is not None and chosen == split:
            line += f"; it was chosen on the {split} images scored here, so the figure is optimistic"
        return line
    if ckpt.get("position"):  # saved in the middle of an epoch: a run still training, or stopped part way
        return (f"{p} (the weights after {saved_at(ckpt)} of {total}{ema}, saved within that epoch: the run has "
                "not finished it)")
    return f"{p} (the weights after epoch {epoch} of {total}{ema})"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file or run-folder path."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise LookcloserError(f"run folder {p} has no best.pt or last.pt; train into it first or pass a .pt file")
    if not p.is_file():
        raise LookcloserError(f"checkpoint {p} does not exist; pass a run folder or a .pt file from `lookcloser train`")
    return p


def build_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (no pretrained files needed)."""
    from ..models import create_model

    from ..backbones import structure_only

    args = dict(ckpt["build_args"])
    # checkpoints from before build_args recorded it: the run's config says whether weights were pretrained
    args.setdefault("pretrained", bool(ckpt.get("config", {}).get("model", {}).get("pretrained", False)))
    with structure_only():  # the trained weights below replace any initial weights
        model = create_model(ckpt["method"], **args)
    try:
        # a run that kept a moving average of its weights (--ema) is evaluated and used with it
        model.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") is not None else ckpt["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)[:200]]
        raise LookcloserError(
            f"{source} does not match the {ckpt['method']} model it names ({first[0].strip()}); "
            "it was written by another version or edited: retrain or use the matching lookcloser") from e
    model.eval()
    return model


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained model and its checkpoint dict (classes, preprocessing, config, metrics).

    Args:
        path: a checkpoint file or a run folder.
    """
    ckpt = load_checkpoint_file(path)
    return build_from_checkpoint(ckpt, str(resolve_checkpoint(path))), ckpt
