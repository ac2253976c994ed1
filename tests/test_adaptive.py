"""Zoom only when unsure: the glance/zoom split of every method that looks closer, adaptive inference that
gives exactly the glance's answer above the threshold and the method's below it (running the zoom on the
unsure images only), the threshold sweep and choice, and the localization metrics against hand-made cases."""

import pytest
import torch

from lookcloser.engine.adaptive import (
    adaptive_predict,
    attention_peaks,
    box_iou,
    choose_threshold,
    inside,
    localization,
    stage_cost,
    sweep,
)
from lookcloser.layers.sampler import attention_sample, magnified_box
from lookcloser.models import create_model
from tests.conftest import TINY_BACKBONE

TINY = {
    "tasn": {"sample_size": 32, "att_channels": 8, "view_size": 32},
    "wsdan": {"num_maps": 4, "view_size": 32},
    "wsban": {"num_maps": 4, "view_size": 32},
    "rra": {"patch_size": 32, "view_size": 32},
    "tasn-mean": {"sample_size": 32, "att_channels": 8, "view_size": 32, "prediction": "mean"},
    "tasn-official": {"sample_size": 32, "att_channels": 8, "view_size": 32, "heads": "official"},
}
GLANCE_FIELD = {"tasn": "attention_logits", "wsdan": "raw_logits", "wsban": "raw_logits", "rra": "global_logits"}


def _model(name):
    torch.manual_seed(0)
    method = name.split("-")[0]
    m = create_model(method, backbone=TINY_BACKBONE, num_classes=5, **TINY[name]).eval()
    return m, method


def _images(n=6, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_closer_of_the_glance_is_exactly_the_forward_prediction(name):
    model, method = _model(name)
    x = _images()
    with torch.no_grad():
        out = model(x)
        glance = model.look(x)
        full = model.closer(x, glance)
    assert torch.equal(full, out.logits)
    assert torch.equal(glance.logits, getattr(out, GLANCE_FIELD[method]))
    # the zoom on a subset of the batch gives those images' rows
    idx = torch.tensor([4, 1])
    with torch.no_grad():
        part = model.closer(x[idx], glance.take(idx))
    assert torch.allclose(part, out.logits[idx], atol=1e-5)
    assert part.argmax(1).tolist() == out.logits[idx].argmax(1).tolist()


def test_zoom_boxes_are_what_each_zoom_reads():
    x = _images()
    with torch.no_grad():
        for name, field in (("wsdan", "crop_box"), ("wsban", "crop_box")):
            model, _ = _model(name)
            assert torch.equal(model.zoom_boxes(x, model.look(x)), getattr(model(x), field))
        model, _ = _model("rra")
        out = model(x)
        assert torch.equal(model.zoom_boxes(x, model.look(x)), out.boxes[:, 0])
        assert torch.equal(out.boxes[torch.arange(6), out.patch_index], out.boxes[:, 0])
        model, _ = _model("tasn")
        out = model(x)
        assert torch.equal(model.zoom_boxes(x, model.look(x)), magnified_box(out.structure_grid, (64, 64)))


@pytest.mark.parametrize("name", ["tasn", "wsdan", "wsban", "rra"])
def test_adaptive_gives_the_glance_above_the_threshold_and_the_method_below_zooming_only_the_unsure(name,
                                                                                                 monkeypatch):
    model, _ = _model(name)
    x = _images(8)
    with torch.no_grad():
        glance_p = model.look(x).logits.float().softmax(1)
        full_p = model(x).logits.float().softmax(1)
    conf = glance_p.amax(1)
    t = conf.median().item()  # about half the batch unsure
    seen = []
    real = model.closer

    def spy(images, glance):
        seen.append(images.clone())
        return real(images, glance)

    monkeypatch.setattr(model, "closer", spy)
    probs, zoomed = adaptive_predict(model, x, t)
    unsure = conf < t
    assert torch.equal(zoomed, unsure) and 0 < unsure.sum() < 8
    assert torch.equal(probs[~unsure], glance_p[~unsure])  # exactly the glance's answer
    assert torch.allclose(probs[unsure], full_p[unsure], atol=1e-6)  # the full method's
    assert len(seen) == 1 and torch.equal(seen[0], x[unsure])  # the zoom ran on the unsure images only
    seen.clear()
    probs, zoomed = adaptive_predict(model, x, 0.0)  # never: no zoom at all
    assert seen == [] and not zoomed.any() and torch.equal(probs, glance_p)
    probs, zoomed = adaptive_predict(model, x, None)  # always: the method as published
    assert zoomed.all() and torch.allclose(probs, full_p, atol=1e-6)


def test_the_sweep_and_the_choice_on_hand_made_probabilities():
    # 4 images, 2 classes: the glance is right on 0, 1 (confident) and wrong on 2, 3 (unsure); the zoom is
    # right on 1, 2, 3 and wrong on 0
    glance = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    full = torch.tensor([[0.4, 0.6], [0.1, 0.9], [0.1, 0.9], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1, 0])
    rows = sweep(glance, full, labels, {"glance_gflops": 1.0, "zoom_gflops": 2.0}, [0.0, 0.7, 0.85, None])
    assert [r["top1"] for r in rows] == [50.0, 100.0, 100.0, 75.0]
    assert [r["zoomed"] for r in rows] == [0.0, 0.5, 0.75, 1.0]
    assert [r["gflops"] for r in rows] == [1.0, 2.0, 2.5, 3.0]
    assert choose_threshold(rows)["threshold"] == 0.7  # within 0.5 points of always, cheapest
    assert choose_threshold(rows[:1] + rows[3:])["threshold"] is None  # never zooming is 25 points worse


def test_localization_metrics_against_hand_computed_cases():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 6.0, 6.0]])
    assert box_iou(a, b).tolist() == pytest.approx([25 / 175, 1.0, 0.0])
    points = torch.tensor([[5.0, 5.0], [10.0, 0.0], [3.0, 3.0]])
    assert inside(points, a).tolist() == [True, True, False]
    att = torch.zeros(2, 3, 4, 4)
    att[0, :, 1, 2] = 1.0  # peak at row 1, column 2 of a 4×4 map
    att[1, 0, 3, 0] = 5.0
    peaks = attention_peaks(att, (4, 4))
    assert peaks.tolist() == [[2.5, 1.5], [0.5, 3.5]]
    boxes = torch.tensor([[2.0, 1.0, 3.0, 2.0], [1.0, 1.0, 4.0, 4.0]])
    m = localization(peaks, boxes, boxes)
    assert m == {"boxes": 2, "pointing_game": 50.0, "zoom_iou": 100.0}


def test_the_magnified_region_is_the_whole_image_when_uniform_and_the_peak_when_peaked():
    images = torch.zeros(2, 3, 64, 64)
    flat = torch.ones(1, 8, 8)
    peaked = torch.full((1, 8, 8), 1e-3)
    peaked[0, 1:3, 5:7] = 1.0  # rows 8-24, columns 40-56 of the source
    att = torch.cat([flat, peaked])
    grid = attention_sample(images, att, 32).grid
    box = magnified_box(grid, (64, 64))
    assert box[0].tolist() == [0.0, 0.0, 64.0, 64.0]
    x0, y0, x1, y1 = box[1].tolist()
    assert 30 <= x0 <= 42 and 54 <= x1 <= 64 and 0 <= y0 <= 10 and 22 <= y1 <= 34
    assert (x1 - x0) < 32 and (y1 - y0) < 32


def test_the_glance_costs_less_than_glance_and_zoom():
    model, _ = _model("wsdan")
    cost = stage_cost(model, 64)
    assert cost["glance_gflops"] > 0 and cost["zoom_gflops"] > 0
    base = create_model("baseline", backbone=TINY_BACKBONE, num_classes=5, view_size=32)
    only = stage_cost(base, 64)
    assert only["zoom_gflops"] == 0 and only["glance_gflops"] > 0


# ---- end to end: a run chooses its threshold on held-out images; evaluate, predict, export use it -------------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from lookcloser.data.scenes import SceneOptions, write_scenes

    out = tmp_path_factory.mktemp("scenes") / "s"
    write_scenes("synth:classes=3,train=8,test=3,size=40", "synth:classes=2,train=3,test=2,size=64,seed=5", out,
                 options=SceneOptions(canvas=64, scale=(0.4, 0.6), quality=0), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def adaptive_run(scenes, tmp_path_factory):
    from lookcloser.engine import train
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1).merged({"data": {"data": f"cub:{scenes}", "image_size": 64, "resize_ratio": 1.0,
                                                 "holdout": 0.25},
                                        "model": {"method": "wsdan", "options": {"num_maps": 4, "view_size": 32}}})
    out = tmp_path_factory.mktemp("run") / "wsdan"
    train(cfg, out, progress=False)
    return out


def test_a_run_with_held_out_images_keeps_its_threshold(adaptive_run):
    from lookcloser.engine.checkpoint import load_checkpoint_file

    kept = load_checkpoint_file(adaptive_run / "last.pt")["adaptive"]
    assert kept["images"] == 6 and "held out" in kept["chosen_on"]  # 2 of 8 per class held out, 3 classes
    always = next(r for r in kept["sweep"] if r["threshold"] is None)
    chosen = next(r for r in kept["sweep"] if r["threshold"] == kept["threshold"])
    assert chosen["top1"] >= always["top1"] - 0.5  # the rule: within half a point of always zooming
    assert all(r["gflops"] >= chosen["gflops"] for r in kept["sweep"] if r["top1"] >= always["top1"] - 0.5)


def test_a_wsdan_run_chooses_its_test_crop_threshold_on_its_held_out_images(adaptive_run):
    """The test crop threshold of the best held-out top-1 among the candidates (ties kept at the model's own
    0.1) goes into the checkpoint's build arguments: the model every command loads crops at it, and scoring
    that model on the held-out images gives the figure the choice recorded."""
    import torch

    from lookcloser.data import eval_transform, open_dataset
    from lookcloser.engine.adaptive import EVAL_THETAS
    from lookcloser.engine.checkpoint import load_checkpoint, load_checkpoint_file
    from lookcloser.engine.evaluate import predict_dataset

    for name in ("last.pt", "best.pt"):
        if not (adaptive_run / name).is_file():
            continue
        ckpt = load_checkpoint_file(adaptive_run / name)
        choice = ckpt["eval_theta_choice"]
        assert [r["eval_theta"] for r in choice["sweep"]] == sorted(EVAL_THETAS) and choice["was"] == 0.1
        best = max(r["top1"] for r in choice["sweep"])
        assert choice["top1"] == best
        assert choice["eval_theta"] == 0.1 or choice["top1_was"] < best  # 0.1 stays unless beaten
        assert ckpt["build_args"]["eval_theta"] == choice["eval_theta"]
        model, _ = load_checkpoint(adaptive_run / name)
        assert model.eval_theta == choice["eval_theta"]
        held = open_dataset(ckpt["config"]["data"]["data"], "holdout", eval_transform(ckpt["preprocess"]),
                            holdout=ckpt["config"]["data"]["holdout"])
        probs, labels, _ = predict_dataset(model, held, torch.device("cpu"), batch_size=8, workers=0,
                                           progress=False)
        assert 100.0 * (probs.argmax(1) == labels).float().mean().item() == pytest.approx(choice["top1"])


def _copy_as_trained_before_the_choice(run, to):
    """A copy of a WS-DAN run folder whose last.pt is as a run trained before runs chose their test crop
    threshold left it (the published 0.1, no ``eval_theta_choice``); returns the original checkpoint."""
    import shutil

    from lookcloser.engine.checkpoint import atomic_save, load_checkpoint_file

    shutil.copytree(run, to)
    trained = load_checkpoint_file(to / "last.pt")
    old = {k: v for k, v in trained.items() if k != "eval_theta_choice"}
    old["build_args"] = {**old["build_args"], "eval_theta": 0.1}
    atomic_save(old, to / "last.pt")
    return trained


def test_evaluating_the_held_out_split_chooses_the_crop_threshold_of_a_run_trained_before_the_choice(
        adaptive_run, tmp_path):
    """A WS-DAN checkpoint without ``eval_theta_choice`` (trained before runs chose it) gains the same choice
    from ``evaluate --split holdout`` as training would have made, and the test report is scored at it."""
    import json

    from lookcloser.engine.checkpoint import atomic_save, load_checkpoint_file
    from lookcloser.report import evaluate_checkpoint

    run = tmp_path / "run"
    trained = _copy_as_trained_before_the_choice(adaptive_run, run)
    evaluate_checkpoint(run / "last.pt", split="holdout", out=tmp_path / "held", workers=0, progress=False,
                        speed_images=0)
    now = load_checkpoint_file(run / "last.pt")
    assert now["eval_theta_choice"]["sweep"] == trained["eval_theta_choice"]["sweep"]
    assert now["build_args"]["eval_theta"] == trained["build_args"]["eval_theta"]
    assert json.loads((tmp_path / "held" / "report.json").read_text())["eval_theta"] == now["build_args"]["eval_theta"]
    # a second held-out evaluation keeps the choice rather than choosing again
    now["eval_theta_choice"] = {**now["eval_theta_choice"], "marker": 1}
    atomic_save(now, run / "last.pt")
    evaluate_checkpoint(run / "last.pt", split="holdout", out=tmp_path / "held", workers=0, progress=False,
                        speed_images=0)
    assert load_checkpoint_file(run / "last.pt")["eval_theta_choice"]["marker"] == 1
    evaluate_checkpoint(run / "last.pt", out=tmp_path / "test", workers=0, progress=False, speed_images=0)
    assert json.loads((tmp_path / "test" / "report.json").read_text())["eval_theta"] == now["build_args"]["eval_theta"]


def test_evaluate_reports_the_sweep_and_where_the_attention_looked(adaptive_run, tmp_path):
    import json

    from lookcloser.report import evaluate_checkpoint

    m = evaluate_checkpoint(adaptive_run, out=tmp_path / "eval", workers=0, progress=False, speed_images=4)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    ad = report["adaptive"]
    assert [r["threshold"] for r in ad["sweep"]][-1] is None and all("images_per_s" in r for r in ad["sweep"])
    always = ad["sweep"][-1]
    assert always["top1"] == pytest.approx(m["top1"]) and always["zoomed"] == 1.0
    assert ad["sweep"][0]["zoomed"] == 0.0 and ad["sweep"][0]["gflops"] == pytest.approx(ad["glance_gflops"])
    assert "run_threshold" in ad and "at_run_threshold" in ad
    loc = report["localization"]
    assert loc["boxes"] == 9 and 0 <= loc["pointing_game"] <= 100 and 0 <= loc["zoom_iou"] <= 100


def test_evaluating_the_held_out_split_chooses_and_keeps_the_threshold(adaptive_run, tmp_path):
    import shutil

    from lookcloser.engine.checkpoint import load_checkpoint_file
    from lookcloser.report import evaluate_checkpoint

    run = tmp_path / "run"
    shutil.copytree(adaptive_run, run)
    ckpt = load_checkpoint_file(run / "last.pt")
    del ckpt["adaptive"]
    from lookcloser.engine.checkpoint import atomic_save

    atomic_save(ckpt, run / "last.pt")
    evaluate_checkpoint(run / "last.pt", split="holdout", out=tmp_path / "held", workers=0, progress=False,
                        speed_images=0)
    assert load_checkpoint_file(run / "last.pt")["adaptive"]["images"] == 6


def test_predict_uses_the_runs_threshold_and_export_says_it_zooms_every_image(adaptive_run, scenes, tmp_path):
    from lookcloser.export import export_model
    from lookcloser.predict import Predictor

    files = sorted((scenes / "images").rglob("*.png"))[:6]
    run_t = Predictor(adaptive_run, device="cpu")
    results = run_t.predict(files, workers=0)
    assert all("zoomed" in r for r in results)
    glance_conf = []
    for f in files:
        x = run_t.transform(__import__("PIL.Image", fromlist=["Image"]).open(f).convert("RGB"))[None]
        with torch.no_grad():
            glance_conf.append(run_t.model.look(x).logits.softmax(1).amax().item())
    t = run_t.threshold
    if t is not None:
        assert [r["zoomed"] for r in results] == [c < t for c in glance_conf]
    never = Predictor(adaptive_run, device="cpu", threshold=0.0).predict(files, workers=0)
    assert not any(r["zoomed"] for r in never)
    always = Predictor(adaptive_run, device="cpu", threshold=None).predict(files, workers=0)
    assert all(r["zoomed"] for r in always)
    info = export_model(adaptive_run, tmp_path / "m.pt", format="torchscript", verify=False)
    assert info["adaptive"]["applied"] is False and "zooms every image" in info["adaptive"]["note"]


def test_the_baseline_gets_the_pointing_game_from_its_class_activation_map(scenes, tmp_path):
    import json

    from lookcloser.engine import train
    from lookcloser.report import evaluate_checkpoint
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1).merged({"data": {"data": f"cub:{scenes}", "image_size": 64, "resize_ratio": 1.0}})
    train(cfg, tmp_path / "b", progress=False)
    evaluate_checkpoint(tmp_path / "b", out=tmp_path / "e", workers=0, progress=False)
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert "adaptive" not in report and set(report["localization"]) == {"boxes", "pointing_game"}


def test_the_benchmark_scores_an_old_wsdan_run_at_the_crop_threshold_its_held_out_images_choose(
        adaptive_run, scenes, tmp_path, monkeypatch):
    """looking_closer.py evaluate: a WS-DAN run trained before the choice gets it from its held-out images and
    its test report is redone at it; a second pass changes nothing."""
    import argparse
    import json

    from lookcloser.engine.checkpoint import load_checkpoint_file
    from lookcloser.report import evaluate_checkpoint
    from tests.test_bench_scripts import _script

    closer = _script("looking_closer")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setitem(closer.DATASETS, "d", lambda: f"cub:{scenes}")
    run = closer._folder("d") / "wsdan-seed0"
    trained = _copy_as_trained_before_the_choice(adaptive_run, run)
    evaluate_checkpoint(run / "last.pt", split="test", out=run / "final-eval", workers=0, progress=False,
                        speed_images=0)
    report = json.loads((run / "final-eval" / "report.json").read_text())
    del report["eval_theta"]  # as the report of a run scored before reports named the crop threshold
    (run / "final-eval" / "report.json").write_text(json.dumps(report))
    before = (run / "final-eval" / "report.json").stat().st_mtime_ns
    args = argparse.Namespace(data="d", workers=0, speed_images=0)
    closer.evaluate_runs(args)
    chosen = load_checkpoint_file(run / "last.pt")["build_args"]["eval_theta"]
    assert chosen == trained["build_args"]["eval_theta"]
    assert json.loads((run / "final-eval" / "report.json").read_text())["eval_theta"] == chosen
    after = (run / "final-eval" / "report.json").stat().st_mtime_ns
    assert after != before
    closer.evaluate_runs(args)
    assert (run / "final-eval" / "report.json").stat().st_mtime_ns == after
    # reports scored in bfloat16 (the old default on CPUs with it natively) are redone in float32, once
    for name in ("final-eval", "eval-holdout"):
        old = json.loads((run / name / "report.json").read_text())
        assert old["bf16"] is False
        (run / name / "report.json").write_text(json.dumps({**old, "bf16": True, "top1": -1.0}))
    closer.evaluate_runs(args)
    for name in ("final-eval", "eval-holdout"):
        redone = json.loads((run / name / "report.json").read_text())
        assert redone["bf16"] is False and redone["top1"] >= 0.0
