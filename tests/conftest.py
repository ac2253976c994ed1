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
