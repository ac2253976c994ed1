"""The training loop, evaluation and metrics, checkpoints and distributed set-up."""

from .checkpoint import load_checkpoint
from .distributed import resolve_device
from .evaluate import compute_metrics, predict_loader
from .trainer import Trainer, train

__all__ = ["Trainer", "compute_metrics", "load_checkpoint", "predict_loader", "resolve_device", "train"]
