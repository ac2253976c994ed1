"""Heads first: frozen backbones while the new layers train, then everything, on every method."""

import json

import pytest
import torch

from lookcloser.config import DEFAULT_HEAD_EPOCHS, RunConfig
from lookcloser.engine import train
from lookcloser.engine.checkpoint import load_checkpoint_file
from lookcloser.engine.schedule import backbone_modules
from lookcloser.engine.trainer import Trainer
from lookcloser.errors import LookcloserError
from tests.conftest import tiny_config

# the attention methods' smallest settings for 32 px images
TINY_OPTIONS = {
    "baseline": {},
    "tasn": {"sample_size": 32, "att_channels": 8},
    "wsdan": {"num_maps": 4},
    "wsban": {"num_maps": 4},
    "rra": {"patch_size": 16},
}


def _backbone_state(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, b in enumerate(backbone_modules(model)) for k, v in b.state_dict().items()}


def _head_state(model) -> dict[str, torch.Tensor]:
    ids = {id(p) for p in model.backbone_parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in ids}


@pytest.mark.parametrize("method", sorted(TINY_OPTIONS))
def test_a_heads_first_epoch_leaves_every_backbone_tensor_bit_identical(tmp_path, method):
    cfg = tiny_config(epochs=1, head_epochs=1, bn="frozen", eval_every=0, optimizer="adamw", lr=0.01)
    cfg = cfg.merged({"model": {"method": method, "options": TINY_OPTIONS[method]}})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.model
    before, heads_before = _backbone_state(model), _head_state(model)
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are among the tensors compared
    trainer.train_epoch(0)
    after = _backbone_state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    moved = [n for n, v in _head_state(model).items() if not torch.equal(v, heads_before[n])]
    assert moved, "no head parameter trained in the heads-first epoch"
    # then everything trains: the backbone's weights move; frozen BatchNorm keeps its running statistics
    trainer.train_epoch(1)
    final = _backbone_state(model)
    assert any(not torch.equal(before[k], final[k]) for k in before if k.endswith("weight"))
    assert all(torch.equal(before[k], final[k]) for k in before if k.endswith(("running_mean", "running_var")))


def test_bn_train_updates_the_running_statistics_after_the_heads(tmp_path):
    cfg = tiny_config(epochs=1, head_epochs=1, bn="train", eval_every=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = _backbone_state(trainer.model)
    trainer.train_epoch(0)
    assert all(torch.equal(v, _backbone_state(trainer.model)[k]) for k, v in before.items())
    trainer.train_epoch(1)
    after = _backbone_state(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_a_heads_first_step_runs_no_backward_through_the_backbone(tmp_path):
    cfg = tiny_config(epochs=1, head_epochs=1, eval_every=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer._enter_phase(0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = trainer.model(images, labels)
    loss, _ = trainer.model.loss(out, labels)
    fmap = trainer.model.backbone(images)
    assert not fmap.requires_grad  # nothing is recorded for autograd inside the frozen backbone
    loss.backward()
    assert all(p.grad is None for p in trainer.model.backbone_parameters())
    assert trainer.model.classifier.weight.grad is not None


def test_auto_choices_follow_the_weights():
    scratch = RunConfig().resolved()
    assert scratch.train.head_epochs == 0 and scratch.train.bn == "train"
    pre = RunConfig().merged({"model": {"pretrained": True}}).resolved()
    assert pre.train.head_epochs == DEFAULT_HEAD_EPOCHS
    from_file = RunConfig().merged({"model": {"weights": "w.pth"}})
    assert from_file.resolved().train.head_epochs == DEFAULT_HEAD_EPOCHS
    given = RunConfig().merged({"model": {"pretrained": True}, "train": {"head_epochs": 0}})
    assert given.resolved().train.head_epochs == 0  # a value given is kept
    with pytest.raises(LookcloserError, match="bn must be"):
        RunConfig().merged({"train": {"bn": "fixed"}})


def test_a_run_with_heads_first_records_its_phases_and_resumes(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(epochs=1, head_epochs=1), out, progress=False)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in records] == [(1, "heads"), (2, "all")]
    assert records[0]["backbone_lr"] == 0.0 and records[1]["backbone_lr"] > 0
    saved = load_checkpoint_file(out / "last.pt")["config"]["train"]
    assert saved["head_epochs"] == 1 and saved["bn"] == "train"
    with pytest.raises(LookcloserError, match="--epochs 2 or more"):
        train(RunConfig(), out, resume=True, progress=False, changes={"train": {"epochs": 1}})
    train(RunConfig(), out, resume=True, progress=False, changes={"train": {"epochs": 2}})
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["heads", "all", "all"]


def test_epochs_0_trains_the_heads_first_epochs_alone(tmp_path):
    """--epochs 0: the heads-first phase and nothing after it; every backbone tensor is as it was loaded, and the
    weights are those a longer run has at the end of its heads (the heads' schedule is their own)."""
    from lookcloser.engine.trainer import Trainer

    t = Trainer(tiny_config(epochs=0, head_epochs=2), tmp_path / "heads", progress=False)
    backbone = {id(p) for p in t.model.backbone_parameters()}
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    records = [json.loads(x) for x in (tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"], r["backbone_lr"]) for r in records] == [(1, "heads", 0.0), (2, "heads", 0.0)]
    moved = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(id(p) not in backbone for n, p in t.model.named_parameters() if n in moved)
    assert all(torch.equal(b, before[n]) for n, b in t.model.named_buffers() if n in before)  # no statistic moved

    class Stop(Exception):
        pass

    def stop(epoch, step):
        if epoch == 2:  # the first step of the first epoch of everything (3 steps an epoch)
            raise Stop()

    with pytest.raises(Stop):
        train(tiny_config(epochs=1, head_epochs=2), tmp_path / "longer", progress=False, step_hook=stop)
    a = load_checkpoint_file(tmp_path / "heads" / "last.pt")["model"]
    b = load_checkpoint_file(tmp_path / "longer" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # heads-only has no epochs after the heads for the small-set rule to change: it resolves off
    assert RunConfig().merged({"model": {"pretrained": True}, "train": {"epochs": 0}}).resolved(5).train.small_set == "off"


def test_a_saved_configuration_compares_with_its_auto_choices_made(tmp_path):
    """A benchmark resuming a run compares the run's saved (resolved) recipe with the planned one resolved the
    same way; a run saved before heads-first existed trained without it."""
    import yaml

    from lookcloser.benchmark import check_same_recipe

    planned = RunConfig().merged({"model": {"pretrained": True}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    (run / "config.yaml").write_text(yaml.safe_dump(planned.resolved().to_dict()))
    check_same_recipe(run, planned)  # the same recipe: no error
    old = planned.to_dict()
    del old["train"]["head_epochs"], old["train"]["bn"], old["train"]["head_lr"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert RunConfig.from_saved(old).train.head_epochs == 0
    with pytest.raises(LookcloserError, match="train.head_epochs 0"):
        check_same_recipe(run, planned)


def test_auto_heads_first_epochs_give_the_heads_enough_steps_on_a_small_training_set():
    """-1 from pretrained weights: 2 epochs, or as many as make MIN_HEAD_STEPS optimizer steps, capped."""
    from lookcloser.config import MAX_AUTO_HEAD_EPOCHS, MIN_HEAD_STEPS, auto_head_epochs

    assert MIN_HEAD_STEPS == 120
    assert auto_head_epochs(None) == DEFAULT_HEAD_EPOCHS  # the data not known yet
    assert auto_head_epochs(90) == 2  # full cub100 at batch 32 (2,903 images): unchanged
    assert auto_head_epochs(60) == 2 and auto_head_epochs(59) == 3  # 2 x 60 steps is enough, 2 x 59 is not
    assert auto_head_epochs(15) == 8  # 5 images per class of 100 classes at batch 32
    assert auto_head_epochs(31) == 4  # 10 per class
    assert auto_head_epochs(1) == MAX_AUTO_HEAD_EPOCHS == 30
    pre = RunConfig().merged({"model": {"pretrained": True}})
    assert pre.resolved(15).train.head_epochs == 8
    assert RunConfig().resolved(15).train.head_epochs == 0  # random weights: no heads-first epochs
    given = pre.merged({"train": {"head_epochs": 1}})
    assert given.resolved(15).train.head_epochs == 1  # a value given is kept


def test_a_pretrained_run_on_a_small_set_trains_its_heads_longer_and_says_why(tmp_path, caplog):
    """The run resolves -1 from its training set (24 images at batch 24: 1 step an epoch, so 30 heads-first
    epochs, the cap), saves it resolved, logs the reason, and a benchmark planning -1 accepts the saved run."""
    import logging

    import timm
    import yaml

    from lookcloser.benchmark import check_same_recipe
    from tests.conftest import TINY_BACKBONE

    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model(TINY_BACKBONE, num_classes=0).state_dict(), weights)
    cfg = tiny_config(epochs=1, eval_every=0).merged({"model": {"weights": str(weights)}, "data": {"batch_size": 24}})
    assert cfg.train.head_epochs == -1
    with caplog.at_level(logging.INFO, logger="lookcloser.engine.trainer"):
        train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["heads"] * 30 + ["all"]
    assert "heads first for 30 epochs, not 2: an epoch of 24 training images is 1 optimizer step," in caplog.text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["head_epochs"] == 30
    # ... and the small-set rule after the heads: stated, saved resolved, BatchNorm statistics kept from the
    # weights through the epoch of everything (they are the file's own, bit for bit), the rate at a tenth
    assert ("a small training set (an epoch of 24 training images is 1 optimizer step): after the heads BatchNorm "
            "stays frozen and everything trains at a tenth of the rate, 0.005 instead of 0.05") in caplog.text
    assert saved["train"]["small_set"] == "on"
    start = torch.load(weights)
    end = load_checkpoint_file(tmp_path / "run" / "last.pt")["model"]
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(end["backbone.body." + k], start[k]) for k in stats)
    assert any(not torch.equal(end["backbone.body." + k], start[k]) for k in start if k.endswith(".weight"))
    check_same_recipe(tmp_path / "run", cfg)  # the planned -1 is the saved 30 on this set: the same recipe
    with pytest.raises(LookcloserError, match="train.head_epochs 30"):
        check_same_recipe(tmp_path / "run", cfg.merged({"train": {"head_epochs": 2}}))


def test_best_pt_is_chosen_across_both_phases_a_heads_first_epoch_included(tmp_path):
    """best.pt is the epoch of the best held-out top-1 over the heads-first epochs and the epochs of everything
    alike: with held-out scores 40, 70 (the second heads-first epoch), 55, 65 it holds epoch 2's weights."""
    cfg = tiny_config(epochs=2, head_epochs=2, eval_every=1).merged({"data": {"holdout": 0.34}})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    scores = iter([40.0, 70.0, 55.0, 65.0])
    heads_weights = {}

    def scripted():
        top1 = next(scores)
        if top1 == 70.0:
            heads_weights.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return {"eval_top1": top1, "eval_top5": 100.0, "eval_mean_per_class": top1, "eval_images": 8,
                "eval_split": "holdout"}

    trainer.evaluate = scripted
    trainer.fit()
    best = load_checkpoint_file(tmp_path / "run" / "best.pt")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["eval_top1"]) for r in records] == [("heads", 40.0), ("heads", 70.0), ("all", 55.0),
                                                               ("all", 65.0)]
    assert best["epoch"] == 2 and best["metrics"]["phase"] == "heads" and best["best_top1"] == 70.0
    assert all(torch.equal(best["model"][k], v) for k, v in heads_weights.items())
    last = load_checkpoint_file(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 4 and any(not torch.equal(last["model"][k], v) for k, v in heads_weights.items())


def test_the_small_set_rule_follows_the_steps_of_an_epoch_like_the_heads():
    """auto: on from pretrained weights with heads first where an epoch is under 60 optimizer steps (the
    default heads-first epochs under 120 steps), off elsewhere; a value given is kept; unknown steps: auto."""
    from lookcloser.config import small_training_set

    assert small_training_set(59) and not small_training_set(60) and not small_training_set(None)
    pre = RunConfig().merged({"model": {"pretrained": True}})
    assert pre.resolved(15).train.small_set == "on"  # 5 images per class of 100 classes at batch 32
    assert pre.resolved(31).train.small_set == "on"  # 10 per class
    assert pre.resolved(59).train.small_set == "on" and pre.resolved(60).train.small_set == "off"
    assert pre.resolved(90).train.small_set == "off"  # full cub100: its recipe unchanged
    assert pre.resolved().train.small_set == "auto"  # the data not known yet
    assert RunConfig().resolved(15).train.small_set == "off"  # random weights: no heads, no rule
    assert pre.merged({"train": {"head_epochs": 0}}).resolved(15).train.small_set == "off"  # no heads first
    assert pre.merged({"train": {"small_set": "off"}}).resolved(15).train.small_set == "off"  # given: kept
    assert pre.merged({"train": {"small_set": "on"}}).resolved(90).train.small_set == "on"
    with pytest.raises(LookcloserError, match="small_set must be auto, on or off"):
        RunConfig().merged({"train": {"small_set": "sometimes"}})
    for no_heads in (RunConfig(), pre.merged({"train": {"head_epochs": 0}})):  # on with nothing after any heads
        with pytest.raises(LookcloserError, match="this run has none .random weights or --head-epochs 0."):
            no_heads.merged({"train": {"small_set": "on"}}).resolved(15)


def test_yaml_reads_a_bare_on_or_off_as_the_small_set_value(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  small_set: off\n")
    assert RunConfig.load(tmp_path / "r.yaml").train.small_set == "off"
    (tmp_path / "r.yaml").write_text("train:\n  small_set: on\n")
    assert RunConfig.load(tmp_path / "r.yaml").train.small_set == "on"


def test_the_small_set_rule_keeps_the_heads_rate_and_takes_a_tenth_after_them():
    from lookcloser.engine.schedule import bn_stays_frozen, phase_lrs

    base = tiny_config(epochs=2, head_epochs=1, lr=0.01, head_lr=0.03, backbone_lr_scale=0.5, warmup_epochs=0)
    on, off = base.merged({"train": {"small_set": "on"}}).train, base.merged({"train": {"small_set": "off"}}).train
    for step in range(30):
        (h_on, b_on), (h_off, b_off) = phase_lrs(step, 10, on), phase_lrs(step, 10, off)
        factor = 1.0 if step < 10 else 0.1  # the heads-first epoch as it was; everything after at a tenth
        assert h_on == pytest.approx(h_off * factor) and b_on == pytest.approx(b_off * factor)
    assert phase_lrs(10, 10, on) == (pytest.approx(0.001), pytest.approx(0.0005))
    assert bn_stays_frozen(on) and not bn_stays_frozen(off)
    assert bn_stays_frozen(base.merged({"train": {"bn": "frozen", "small_set": "off"}}).train)


def test_runs_saved_before_the_small_set_rule_resume_without_it_and_benchmarks_accept_either(tmp_path):
    import yaml

    from lookcloser.benchmark import check_same_recipe

    planned = RunConfig().merged({"model": {"pretrained": True}})
    old = planned.resolved().to_dict()
    del old["train"]["small_set"]
    assert RunConfig.from_saved(old).train.small_set == "off"  # it trained without the rule: it goes on so
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    for saved in ("on", "off"):  # auto plans whatever the training set's size resolves it to
        (run / "config.yaml").write_text(yaml.safe_dump(planned.resolved(15 if saved == "on" else 90).to_dict()))
        check_same_recipe(run, planned)
    with pytest.raises(LookcloserError, match="train.small_set 'off'"):
        check_same_recipe(run, planned.merged({"train": {"small_set": "on"}}))
