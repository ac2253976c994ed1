"""The phases and learning rates of a run: warm-up and schedule shapes, heads first, then everything."""

import pytest

from lookcloser.engine.schedule import lr_factor, phase_lrs
from tests.conftest import tiny_config


def test_schedules():
    from lookcloser.config import TrainConfig

    cos = TrainConfig(schedule="cosine")
    assert lr_factor(0, 100, 10, 10, cos) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 10, cos) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 10, cos) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 10, cos) == pytest.approx(0.5)
    step = TrainConfig(schedule="step", step_epochs=2, gamma=0.9)
    assert [round(lr_factor(s, 100, 0, 10, step), 4) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.9, 0.81]


def test_phases_have_their_own_rates_and_schedules():
    tc = tiny_config(epochs=2, head_epochs=1, lr=0.01, head_lr=0.1, backbone_lr_scale=0.5, warmup_epochs=0,
                     schedule="cosine").train
    spe = 10
    assert phase_lrs(0, spe, tc) == (pytest.approx(0.1), 0.0)  # heads at head_lr, backbones still
    assert phase_lrs(5, spe, tc)[0] == pytest.approx(0.05)  # half-way down the heads' own cosine
    assert phase_lrs(10, spe, tc) == (pytest.approx(0.01), pytest.approx(0.005))  # a fresh schedule for all
    assert phase_lrs(20, spe, tc)[0] == pytest.approx(0.005)
    no_heads = tiny_config(epochs=2, head_epochs=0, lr=0.01, warmup_epochs=0).train
    assert phase_lrs(0, spe, no_heads) == (pytest.approx(0.01), pytest.approx(0.01))


def test_the_heads_rate_defaults_to_three_times_the_rate():
    tc = tiny_config(epochs=1, head_epochs=1, lr=0.002, warmup_epochs=0, schedule="constant").train
    assert phase_lrs(0, 10, tc) == (pytest.approx(0.006), 0.0)
    assert phase_lrs(10, 10, tc) == (pytest.approx(0.002), pytest.approx(0.002))


def test_the_schedule_sets_each_group_by_phase_and_freezes_backbones_for_the_heads():
    """A Schedule over a real optimizer: backbone groups at 0 then lr × scale, the heads at head_lr then lr;
    entering a heads-first epoch freezes every backbone (no gradient, evaluation mode)."""
    from lookcloser.engine.schedule import Schedule, backbone_modules, build_optimizer
    from lookcloser.models import create_model

    tc = tiny_config(epochs=1, head_epochs=1, lr=0.01, head_lr=0.05, backbone_lr_scale=0.1, warmup_epochs=0,
                     schedule="constant").train
    model = create_model("wsdan", backbone="resnet18", num_classes=3, num_maps=4)
    opt = build_optimizer(model, tc)
    sched = Schedule(tc, opt, steps_per_epoch=4)
    assert sched.total_epochs == 2 and sched.total_steps == 8
    assert sched.heads_only(0) and not sched.heads_only(1)
    sched.set_lr(3)
    assert sched.lr() == pytest.approx(0.05) and sched.lr(backbone=True) == 0.0
    assert {g["lr"] for g in opt.param_groups if g["backbone"]} == {0.0}
    sched.set_lr(4)
    assert sched.lr() == pytest.approx(0.01) and sched.lr(backbone=True) == pytest.approx(0.001)
    sched.enter(model, 0)
    assert model.training and all(not b.training and not any(p.requires_grad for p in b.parameters())
                                  for b in backbone_modules(model))
    sched.enter(model, 1)
    assert all(b.training and all(p.requires_grad for p in b.parameters()) for b in backbone_modules(model))
    assert sched.state(5) == {"step": 5, "total_steps": 8, "warmup_steps": 0}


def test_layer_decay_scales_each_backbone_layer_by_its_depth():
    """--layer-decay d: with L layer groups of timm's group matcher, group i learns at d ** (L - i) of the
    backbone rate (the stem least, the last group at d), the method's own layers at the full rate; the
    scale rides on the phases' rates, and the run's reported backbone rate is the unscaled one."""
    from timm.models import group_parameters

    from lookcloser.engine.schedule import Schedule, backbone_modules, build_optimizer, layer_scales
    from lookcloser.models import create_model

    model = create_model("baseline", backbone="resnet18", num_classes=3)
    body = backbone_modules(model)[0].body
    groups = group_parameters(body, body.group_matcher(coarse=False), reverse=True)
    L = max(groups.values()) + 1
    assert L == 9  # resnet18: stem, 8 basic blocks (the classifier is gone)
    scales = layer_scales(model, 0.5)
    named = dict(body.named_parameters())
    assert scales[id(named["conv1.weight"])] == pytest.approx(0.5 ** 9)
    assert scales[id(named["layer1.0.conv1.weight"])] == pytest.approx(0.5 ** 8)
    assert scales[id(named["layer4.1.bn2.bias"])] == pytest.approx(0.5)
    assert set(layer_scales(model, 1.0).values()) == {1.0}

    tc = tiny_config(epochs=1, head_epochs=1, lr=0.01, head_lr=0.05, backbone_lr_scale=0.1, layer_decay=0.5,
                     warmup_epochs=0, schedule="constant").train
    opt = build_optimizer(model, tc)
    sched = Schedule(tc, opt, steps_per_epoch=2)
    sched.set_lr(2)  # everything trains: heads at 0.01, the backbone at 0.001 × its layer's scale
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(named["conv1.weight"])] == pytest.approx(0.001 * 0.5 ** 9)
    assert lr_of[id(named["layer4.1.conv2.weight"])] == pytest.approx(0.001 * 0.5)
    heads = [p for p in model.parameters() if id(p) not in {id(q) for q in body.parameters()}]
    assert heads and all(lr_of[id(p)] == pytest.approx(0.01) for p in heads)
    assert sched.lr() == pytest.approx(0.01) and sched.lr(backbone=True) == pytest.approx(0.001)
    sched.set_lr(1)  # heads first: the backbone frozen at 0 whatever its scale
    assert all(g["lr"] == 0.0 for g in opt.param_groups if g["backbone"])
    # every parameter sits in exactly one group, with no weight decay on norms and biases
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if g["params"][0].ndim <= 1)


def test_layer_decay_out_of_range_is_refused():
    from lookcloser.errors import LookcloserError

    for bad in (0.0, 1.5):
        with pytest.raises(LookcloserError, match=r"layer_decay must be in \(0, 1\]"):
            tiny_config(layer_decay=bad)
