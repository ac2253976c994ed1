"""TensorBoard event files beside ``metrics.jsonl``: what users follow training in.

Written by the main process into the run folder's ``tb/`` when the ``tensorboard`` package is installed
(``TrainConfig.tensorboard``): every epoch's losses and their terms, accuracies, learning rates and
images/s as scalars (step = epoch), and, after each evaluation, the mean attention of a few evaluation
images over the images themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PICTURES = 4  # evaluation images shown with their attention


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        return False
    return True


class EventLog:
    """A run's TensorBoard event files (a no-op where tensorboard is not installed).

    Args:
        folder: where the event files go (``RUN/tb``).
    """

    def __init__(self, folder: str | Path):
        self.writer = None
        if not tensorboard_available():
            log.info("tensorboard is not installed: no event files (pip install tensorboard)")
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def epoch(self, record: dict[str, Any]) -> None:
        """The epoch's numbers as scalars: ``train/loss``, ``train/top1``, ``train/<term>``, ``eval/top1``, ...,
        ``lr/heads``, ``lr/backbone``, ``speed/train_images_per_s``."""
        if self.writer is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key in ("epoch", "world_size",
                                                                                          "threads"):
                continue
            if key.startswith("train_") and key not in ("train_images_per_s", "train_time_s"):
                tag = "train/" + key[len("train_"):]
            elif key.startswith("eval_"):
                tag = "eval/" + key[len("eval_"):]
            elif key == "lr":
                tag = "lr/heads"
            elif key == "backbone_lr":
                tag = "lr/backbone"
            elif key in ("train_images_per_s", "train_time_s"):
                tag = "speed/" + key
            else:
                continue
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    @torch.no_grad()
    def attention(self, model, dataset, device: torch.device, epoch: int) -> None:
        """The first :data:`PICTURES` images of ``dataset`` (evaluation view) with the model's mean attention."""
        if self.writer is None or not len(dataset):
            return
        from ..data import collate
        from ..draw import attention_overlay

        items = [dataset[i] for i in range(min(PICTURES, len(dataset)))]
        images, _, _, extras = collate(items)
        if not len(images):
            return
        was_training = model.training
        model.eval()
        try:
            out = model(images.to(device), **{k: v.to(device) for k, v in extras.items()})
        finally:
            model.train(was_training)
        if out.attention is None:
            return
        mean = torch.tensor(model.mean).view(3, 1, 1)
        std = torch.tensor(model.std).view(3, 1, 1)
        pictures = []
        for x, a in zip(images, out.attention.float().cpu()):
            image = (x.float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            pictures.append(attention_overlay(image, a.mean(0)))
        self.writer.add_images("attention", np.stack(pictures).astype(np.float32), epoch, dataformats="NHWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
