"""A run's precision: the autocast dtype the device computes, and float16's gradient scaler."""

import math

import pytest
import torch

from lookcloser.config import RunConfig
from lookcloser.engine import train
from lookcloser.engine.checkpoint import load_checkpoint_file
from lookcloser.engine.trainer import Trainer
from lookcloser.errors import LookcloserError
from tests.conftest import tiny_config


def test_precision_is_chosen_by_what_the_device_computes():
    import torch

    from lookcloser.engine.precision import choose_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_precision(cuda, "auto", bf16_supported=True) == torch.bfloat16  # A100, H100, ...
    assert choose_precision(cuda, "auto", bf16_supported=False) == torch.float16  # T4, V100: scaled float16
    assert choose_precision(cpu, "auto") == torch.float32
    assert choose_precision(cuda, "fp32", bf16_supported=True) == torch.float32
    assert choose_precision(cuda, "auto", allowed=False, bf16_supported=True) == torch.float32  # --no-bf16
    assert choose_precision(cpu, "fp16") == torch.float16 and choose_precision(cpu, "bf16") == torch.bfloat16
    with pytest.raises(LookcloserError, match="precision must be one of"):
        RunConfig().merged({"train": {"precision": "fp8"}})


def test_a_float16_run_scales_its_gradients_and_resumes_the_scale(tmp_path):
    """float16 autocast (here on the CPU, which supports it) trains through the gradient scaler: finite losses,
    the scaler's state in every checkpoint, and a resume that continues from it."""
    out = tmp_path / "run"
    record = train(tiny_config(epochs=1, precision="fp16"), out, progress=False)
    assert math.isfinite(record["train_loss"])
    scaler = load_checkpoint_file(out / "last.pt")["scaler"]
    assert scaler and scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0
    trainer = Trainer(RunConfig(), out, resume=True, progress=False, changes={"train": {"epochs": 2}})
    assert trainer.precision.dtype == torch.float16 and trainer.precision.scaler.get_scale() == scaler["scale"]
    train(tiny_config(epochs=1), tmp_path / "fp32", progress=False)
    assert load_checkpoint_file(tmp_path / "fp32" / "last.pt")["scaler"] == {}  # float32: no scaler at work
