"""The arithmetic a run trains in: float32, or autocast to bfloat16 or float16 with a gradient scaler."""

from __future__ import annotations

import contextlib

import torch


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


class Precision:
    """A run's precision: its autocast dtype, the autocast context and the gradient scaler.

    float16 needs its gradients scaled so that small ones do not flush to zero; bfloat16 and float32 do
    not, and their scaler is a pass-through whose state is still checkpointed.
    """

    def __init__(self, device: torch.device, precision: str = "auto", allowed: bool = True):
        self.device = device
        self.dtype = choose_precision(device, precision, allowed)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    @property
    def amp(self) -> bool:
        """Whether the run autocasts (any dtype but float32)."""
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.amp)

    def restore(self, state: dict | None) -> None:
        """Continue a checkpoint's scaler (float16 runs; the others keep no state)."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
