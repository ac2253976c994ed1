import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the tests never touch a network: timm's pretrained route reads only the Hugging Face cache the tests lay out
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

# the tests use tiny tensors: one thread avoids oversubscription on small shared machines
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TINY_BACKBONE = "test_efficientnet"
TINY_VIT = "test_vit"  # timm's own tiny ViT: patch 16, 64 channels, one class token
TINY_SWIN = "lookcloser_test_swin"  # a Swin of one block per stage, registered below (timm has no tiny one)


def _register_tiny_swin() -> None:
    """Register a Swin transformer small enough for tests under :data:`TINY_SWIN`, in this process (the
    tests that use it train in-process)."""
    import timm
    from timm.models import register_model
    from timm.models.swin_transformer import SwinTransformer

    if timm.is_model(TINY_SWIN):
        return

    def lookcloser_test_swin(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                             **kwargs):
        args = dict(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 1, 1),
                    num_heads=(1, 2, 2, 4))
        return SwinTransformer(**{**args, **kwargs})

    register_model(lookcloser_test_swin)


_register_tiny_swin()
TINY_SYNTH = "synth:classes=4,train=6,test=3,size=48"


def tiny_config(**train):
    from lookcloser.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    t = dict(epochs=2, lr=0.05, device="cpu", seed=0, warmup_epochs=0.5)
    t.update(train)
    return RunConfig(data=DataConfig(data=TINY_SYNTH, image_size=32, batch_size=8, workers=0),
                     model=ModelConfig(method="baseline", backbone=TINY_BACKBONE), train=TrainConfig(**t))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny baseline run trained once for the whole session; its only scored split is test, so it chooses
    best.pt there as asked (``best_on_test``), giving the tests a run folder with every file."""
    from lookcloser.engine import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_config(best_on_test=True), out, progress=False)
    return out


def fit_fixed_batch(model, images, labels, optimizer, steps):
    """Train on one fixed batch; return the per-step (loss, terms) so tests can see the loss fall."""
    history = []
    for _ in range(steps):
        loss, terms = model.loss(model(images, labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), terms))
    return history
