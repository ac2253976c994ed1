"""timm's data tools as data options: random-resized crops, learned policies, random erasing, mixup/cutmix."""

import pytest
import torch
import torch.nn.functional as F

from lookcloser.config import RunConfig
from lookcloser.data import build_transform, open_dataset
from lookcloser.engine.trainer import Trainer
from lookcloser.errors import LookcloserError
from tests.conftest import TINY_SYNTH, tiny_config

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5", "augmix-m5-w3-d2", "original", "trivial"])
def test_each_policy_is_drawn_from_the_images_own_seed(policy):
    """Per-sample seeding covers timm's policies (which draw from python's and numpy's generators): the same
    (index, seed) gives the same tensor in any order, so distributed runs stay world-size invariant."""
    t = build_transform(True, 32, MEAN, STD, auto_augment=policy, crop_scale=0.5, random_erasing=0.5)
    ds = open_dataset(TINY_SYNTH, "train", t)
    a, b = ds[(3, 111)][0], ds[(5, 222)][0]
    assert torch.equal(ds[(5, 222)][0], b) and torch.equal(ds[(3, 111)][0], a)  # again, in another order
    assert not torch.equal(ds[(3, 111)][0], ds[(3, 112)][0])  # another seed, another draw


def test_the_options_reach_the_training_transform(tmp_path):
    cfg = tiny_config(epochs=1)
    cfg.data.crop_scale, cfg.data.auto_augment, cfg.data.random_erasing = 0.3, "rand-m9-mstd0.5", 0.25
    names = [type(s).__name__ for s in Trainer(cfg, tmp_path / "r", progress=False).data.train_set.transform.transforms]
    assert {"RandomResizedCrop", "RandAugment", "RandomErasing"} <= set(names) and "RandomCrop" not in names
    assert names[-1] == "RandomErasing" and "PILToTensor" not in names  # erasing needs the float path
    with pytest.raises(LookcloserError, match="auto_augment must be a timm policy string"):
        RunConfig().merged({"data": {"auto_augment": "randaugment"}})


def test_a_mixup_batch_has_the_mixed_images_and_targets(tmp_path):
    cfg = tiny_config(epochs=1)
    cfg.data.mixup = 0.8
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = trainer.data.mixer(x.clone(), y)
    onehot = F.one_hot(y, 4).float()
    # timm's batch mode: every image mixed with the batch's mirror image by one λ, read off one pixel
    lam = ((mixed - x.flip(0)) / (x - x.flip(0))).flatten()[0].item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot.flip(0))
    assert torch.allclose(targets.sum(1), torch.ones(6))


def test_mixup_and_cutmix_train_the_baseline_and_refuse_the_attention_methods(tmp_path):
    from lookcloser.engine import train

    cfg = tiny_config(epochs=1)
    cfg.data.mixup, cfg.data.cutmix = 0.8, 1.0
    cfg.train.label_smoothing = 0.1
    record = train(cfg, tmp_path / "r", progress=False)
    assert record["train_loss"] > 0 and torch.isfinite(torch.tensor(record["train_loss"]))
    cfg = cfg.merged({"model": {"method": "wsdan", "options": {"num_maps": 4}}})
    with pytest.raises(LookcloserError, match="use them with the baseline"):
        Trainer(cfg, tmp_path / "s", progress=False)
