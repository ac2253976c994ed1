"""The linear probe: the solver, the choice of its strength, the kept features and the command."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lookcloser.cli import run
from lookcloser.probe import choose_strength, fit_logistic, linear_probe
from tests.conftest import TINY_BACKBONE


def test_fit_logistic_reaches_the_regularized_optimum():
    torch.manual_seed(0)
    x, y = torch.randn(120, 6), torch.randint(0, 3, (120,))
    w, b = fit_logistic(x, y, 3, 0.1)
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w64.T + b64, y) + 0.05 * (w64 * w64).sum()
    loss.backward()
    assert w64.grad.abs().max() < 1e-4 and b64.grad.abs().max() < 1e-4  # the gradient vanishes there
    # a stronger penalty gives smaller weights
    assert fit_logistic(x, y, 3, 10.0)[0].norm() < w.norm() / 5


def test_the_strength_is_the_one_the_held_out_features_favour():
    """Held-out features that only a weakly regularized fit separates choose the weak strength; a tie goes
    to the stronger one."""
    torch.manual_seed(0)
    # class decided by a tiny-scale feature (index 1) beside a large noisy one: a strong penalty ignores it
    def make(n):
        y = torch.randint(0, 2, (n,))
        return torch.stack([torch.randn(n) * 3, (2 * y - 1) * 0.05 + 0.01 * torch.randn(n)], 1), y
    (x, y), (xh, yh) = make(200), make(100)
    strength, scores = choose_strength(x, y, xh, yh, 2, strengths=(100.0, 1e-4))
    assert scores[1e-4] > scores[100.0] and strength == 1e-4
    easy = torch.tensor([[-5.0, 0.0], [5.0, 0.0]]).repeat(10, 1) + 0.1 * torch.randn(20, 2)
    labels = torch.tensor([0, 1]).repeat(10)
    same, tied = choose_strength(easy, labels, easy, labels, 2, strengths=(1e-4, 1.0))
    assert tied == {1.0: 100.0, 1e-4: 100.0} and same == 1.0  # a tie: the stronger is kept


def _folders(root, seed, colours):
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", 10), ("test", 4)):
        for c, rgb in colours.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = torch.randint(0, 60, (3,), generator=g).tolist()
                Image.new("RGB", (40, 30), tuple(v + d for v, d in zip(rgb, noise))).save(root / split / c / f"{i}.png")


def test_the_probe_never_reads_the_test_split_to_choose(tmp_path):
    """Replacing every test image changes the test score only: the strength and every held-out score are the
    same, so the choice was made without the test split."""
    data = tmp_path / "data"
    colours = {"red": (180, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 180)}
    _folders(data, 0, colours)
    kw = dict(backbone=TINY_BACKBONE, pretrained=False, view_sizes=(32,), image_size=32, holdout=0.2,
              strengths=(10.0, 1.0, 0.01), workers=0, device="cpu", progress=False)
    first = linear_probe(str(data), tmp_path / "a", **kw)["views"]["32"]
    shutil.rmtree(data / "test")
    swapped = {"red": (20, 20, 180), "green": (180, 20, 20), "blue": (20, 180, 20)}  # every test label now wrong
    g = torch.Generator().manual_seed(1)
    for c, rgb in swapped.items():
        (data / "test" / c).mkdir(parents=True)
        for i in range(4):
            noise = torch.randint(0, 60, (3,), generator=g).tolist()
            Image.new("RGB", (40, 30), tuple(v + d for v, d in zip(rgb, noise))).save(data / "test" / c / f"{i}.png")
    second = linear_probe(str(data), tmp_path / "b", **kw)["views"]["32"]
    assert first["strength"] == second["strength"] and first["holdout_top1"] == second["holdout_top1"]
    assert first["held_out_images"] == 6 and first["train_images"] == 30
    assert first["top1"] > second["top1"]


def test_features_are_kept_and_read_back_and_the_command_prints_the_table(tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "synth:classes=3,train=8,test=4,size=32", "--backbone", TINY_BACKBONE, "--no-pretrained",
            "--view-size", "24", "--view-size", "32", "--image-size", "32", "--workers", "0", "--device", "cpu",
            "--quiet", "--out", str(out)]
    assert run(argv) == 0
    table = capsys.readouterr().out
    assert "| 24 px |" in table and "| 32 px |" in table
    kept = out / "features-32.pt"
    stamp = kept.stat().st_mtime_ns
    first = json.loads((out / "probe.json").read_text())
    assert run(argv) == 0
    assert kept.stat().st_mtime_ns == stamp  # read back, not recomputed
    again = json.loads((out / "probe.json").read_text())
    assert again["views"]["32"]["top1"] == first["views"]["32"]["top1"]
    clf = torch.load(out / "probe-32.pt", weights_only=True)
    assert clf["weight"].shape[0] == 3 and clf["view_size"] == 32


def test_probe_refuses_to_score_the_images_it_chose_on(tmp_path):
    assert run(["probe", "synth:classes=2,train=4,test=2,size=32", "--backbone", TINY_BACKBONE, "--no-pretrained",
                "--split", "holdout", "--out", str(tmp_path / "p")]) == 2
    assert run(["probe", "synth", "--holdout", "0", "--backbone", TINY_BACKBONE, "--out", str(tmp_path / "p")]) == 2


def test_a_run_with_held_out_images_says_where_it_stands_against_its_frozen_features(tmp_path, capsys):
    """train --holdout from given weights: after training, the frozen-feature probe's held-out top-1 beside the
    fine-tuned weights' (last epoch and best.pt), saved in the run folder and printed, with a plain sentence
    exactly when fine-tuning ended below the probe."""
    import json

    import timm
    import torch

    from lookcloser.cli import run
    from lookcloser.probe import stands_lines
    from tests.conftest import TINY_BACKBONE, TINY_SYNTH

    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model(TINY_BACKBONE, num_classes=0).state_dict(), weights)
    out = tmp_path / "run"
    code = run(["train", "--data", TINY_SYNTH, "--backbone", TINY_BACKBONE, "--weights", str(weights),
                "--image-size", "32", "--epochs", "1", "--head-epochs", "1", "--holdout", "0.34", "--eval-every", "1",
                "--workers", "0", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "where-it-stands.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert r["held_out_images"] == 8 and r["view_size"] == 32  # 2 of 6 per class held out, 4 classes
    assert r["last_top1"] == records[-1]["eval_top1"] and r["best_top1"] == max(x["eval_top1"] for x in records)
    assert 0 <= r["probe_top1"] <= 100 and r["below_probe"] == (max(r["last_top1"], r["best_top1"]) < r["probe_top1"])
    assert f"a linear probe on the frozen pretrained features at 32 px: {r['probe_top1']:.2f}%" in printed
    below = {**r, "last_top1": 10.0, "best_top1": 20.0, "best_epoch": 1, "best_phase": "heads", "probe_top1": 50.0,
             "below_probe": True}
    lines = stands_lines(below)
    assert "20.00% in best.pt (epoch 1, a heads-first epoch)" in lines[0]
    assert lines[1].startswith("fine-tuning ended below the frozen features (-30.00 points)")
    assert len(stands_lines({**below, "below_probe": False})) == 1


def test_a_run_scored_on_a_val_split_says_where_it_stands_on_it(tmp_path, capsys):
    """No --holdout, but the data set has a val split: the run's probe is fitted on its training images and
    scored on val, beside the fine-tuned weights' val top-1, and the statement names the split."""
    import json

    import timm
    import torch

    from lookcloser.cli import run
    from tests.conftest import TINY_BACKBONE
    from tests.fixtures_builders import write_image

    data = tmp_path / "lists"
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        rows = ["path,label"]
        for c in range(3):
            for i in range(n):
                path = data / "img" / f"{split}-{c}-{i}.png"
                write_image(path, 60 * c + 10 * i)
                rows.append(f"{path},class{c}")
        (data / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model(TINY_BACKBONE, num_classes=0).state_dict(), weights)
    out = tmp_path / "run"
    assert run(["train", "--data", f"csv:{data}", "--backbone", TINY_BACKBONE, "--weights", str(weights),
                "--image-size", "32", "--epochs", "1", "--head-epochs", "1", "--eval-every", "1", "--workers", "0",
                "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "where-it-stands.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert r["split"] == "val" and r["held_out_images"] == 6 and {x["eval_split"] for x in records} == {"val"}
    assert r["last_top1"] == records[-1]["eval_top1"] and r["best_top1"] == max(x["eval_top1"] for x in records)
    assert f"val top-1 (6 images): fine-tuned {r['last_top1']:.2f}%" in printed
    # a run resumed to its end says it too (an interrupted run finished by --resume used to end silently)
    (out / "where-it-stands.json").unlink()
    assert run(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    again = json.loads((out / "where-it-stands.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and again["last_top1"] == records[-1]["eval_top1"]
    assert f"val top-1 (6 images): fine-tuned {again['last_top1']:.2f}%" in capsys.readouterr().out


def test_a_run_can_start_its_classifier_from_the_linear_probe(tmp_path, capsys):
    """``--head-init probe`` (linear probing, then fine-tuning): before the first epoch the baseline's classifier
    holds the logistic regression of the frozen pretrained features of the run's own training images (held-out
    images kept out), its strength chosen as the probe chooses it, folded onto the raw pooled features; the run
    says so and records it; a method other than the baseline, or random weights, is refused in one sentence."""
    import timm

    from lookcloser.config import RunConfig
    from lookcloser.data import eval_transform, holdout_indices, open_dataset
    from lookcloser.engine.trainer import Trainer
    from lookcloser.probe import _standardize, extract_features
    from tests.conftest import TINY_SYNTH

    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model(TINY_BACKBONE, num_classes=0).state_dict(), weights)
    cfg = RunConfig.from_dict({
        "data": {"data": TINY_SYNTH, "image_size": 32, "holdout": 0.34, "workers": 0},
        "model": {"method": "baseline", "backbone": TINY_BACKBONE, "weights": str(weights), "options": {}},
        "train": {"epochs": 1, "head_epochs": 0, "head_init": "probe", "device": "cpu", "threads": 1}})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.model.eval()
    train = open_dataset(TINY_SYNTH, "train", eval_transform(trainer._preprocess()), holdout=0.34)
    x, y, _, _ = extract_features(model.backbone, train, 32, torch.device("cpu"), workers=0, progress=False)
    assert len(y) == 16  # 4 of 6 per class of 4 classes: the held-out images are not fitted
    inner = torch.zeros(len(y), dtype=torch.bool)
    inner[holdout_indices(y.tolist(), 0.1, seed=1)] = True
    _, (xf, xh) = _standardize(x[~inner], x[inner])
    strength, _ = choose_strength(xf, y[~inner], xh, y[inner], 4)
    (mu, sd), (xs,) = _standardize(x)
    w, b = fit_logistic(xs, y, 4, strength)
    with torch.no_grad():
        assert torch.allclose(model.classifier(x), xs @ w.T + b, atol=1e-3)  # the probe's logits, on raw features
    assert trainer.head_probe["head_probe_strength"] == strength
    assert any(n.startswith("the classifier starts from the linear probe of the frozen features (16 training images "
                            f"at 32 px; strength {strength:g}") for n in trainer.size_notes)
    # trained: the first epoch's record keeps what the classifier started from
    trainer.fit()
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["head_probe_strength"] == strength and 0 <= first["head_probe_train_top1"] <= 100
    common = ["train", "--data", TINY_SYNTH, "--backbone", TINY_BACKBONE, "--image-size", "32", "--epochs", "1",
              "--head-init", "probe", "--workers", "0", "--quiet"]
    assert run(common + ["--weights", str(weights), "--method", "wsdan", "--out", str(tmp_path / "w")]) == 2
    assert "head_init probe starts the baseline's classifier" in capsys.readouterr().err
    assert run(common + ["--no-pretrained", "--out", str(tmp_path / "r")]) == 2
    assert "starts from random weights" in capsys.readouterr().err
