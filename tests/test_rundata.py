"""What a run reads: its splits, the held-out share, class-balanced epochs and mixup's even batches."""

import torch

from lookcloser.engine import distributed as D
from lookcloser.engine.rundata import RunData, balanced_weights
from tests.conftest import tiny_config


def test_balanced_weights_give_every_class_the_same_share():
    targets = [0, 0, 0, 1, 2, 2]
    w = balanced_weights(targets)
    assert w == [1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5]
    per_class = {c: sum(x for x, y in zip(w, targets) if y == c) for c in set(targets)}
    assert all(abs(v - 1.0) < 1e-12 for v in per_class.values())


def test_run_data_holds_out_images_and_never_evaluates_on_test_by_default():
    cfg = tiny_config(epochs=1)
    cfg = cfg.merged({"data": {"holdout": 0.25}})
    data = RunData(cfg, D.DistInfo())
    assert data.eval_name == "holdout" and data.select_best
    assert not set(data.train_set.samples) & set(data.eval_set.samples)
    plain = RunData(tiny_config(epochs=1), D.DistInfo())
    assert plain.eval_name == "test" and not plain.select_best  # scored on test for the curves only
    assert len(plain.train_set) == len(data.train_set) + len(data.eval_set)


def test_mix_passes_a_batch_through_without_mixup_and_evens_it_with():
    images, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0])
    plain = RunData(tiny_config(epochs=1), D.DistInfo())
    x, y, t = plain.mix(images, labels)
    assert x is images and y is labels and t is labels
    mixed = RunData(tiny_config(epochs=1).merged({"data": {"mixup": 0.2}}), D.DistInfo())
    from timm.data import Mixup

    mixed.mixer = Mixup(mixup_alpha=0.2, num_classes=2)
    x, y, t = mixed.mix(images.clone(), labels)
    assert x.shape[0] == 4 and y.tolist() == [0, 1, 0, 1] and t.shape == (4, 2)
    assert torch.allclose(t.sum(1), torch.ones(4))
