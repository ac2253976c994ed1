"""The benchmark scripts' own measurements (the scripts themselves run outside the test suite)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from lookcloser.models import create_model
from tests.conftest import TINY_BACKBONE


def _script(name):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, opts", [
    ("rra", dict(patch_size=16, steps=2, hidden_size=16, output_stride=8)),
    ("rra", dict(patch_size=16, steps=2, hidden_size=16, output_stride=8, fusion="probs", fusion_weight=0.5)),
    ("wsdan", dict(num_maps=4, view_size=32, crop_size=32)),
    ("wsdan", dict(num_maps=4, view_size=32, crop_size=32, combine="logit")),
])
def test_zoom_sizes_streams_are_the_two_the_prediction_fuses(name, opts):
    """zoom_sizes.py scores the glance and the zoom stream alone: they must be exactly the two inputs of the
    method's fused prediction (fusing them again gives the prediction), and differ from each other."""
    zoom_sizes = _script("zoom_sizes")
    torch.manual_seed(0)
    model = create_model(name, backbone=TINY_BACKBONE, num_classes=4, **opts).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
        glance, zoom = zoom_sizes.streams_of(out)
        fuse = model.fuse if name == "rra" else model._combine
        torch.testing.assert_close(fuse(glance, zoom), out.logits)
    assert glance.shape == zoom.shape == (3, 4)
    assert not torch.allclose(glance, zoom)


def test_looking_closer_report_names_each_runs_thread_count(tmp_path):
    """The table footer's device drops the thread count of the run that finished last and counts each run's
    own (a run resumed at another count shows both), from the runs' metrics.jsonl."""
    import json

    closer = _script("looking_closer")
    threads = {"glance-seed0": [1, 1], "glance-seed1": [1], "tasn-seed0": [2, 2], "tasn-seed1": [2, 1]}
    for run, counts in threads.items():
        (tmp_path / "closer-synth-cpu" / run).mkdir(parents=True)
        (tmp_path / "closer-synth-cpu" / run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e + 1, "threads": n}) + "\n" for e, n in enumerate(counts)))
    assert closer._device("CPU (x86_64, 1 threads)", tmp_path / "closer-synth-cpu") == \
        "CPU (x86_64); threads per run: 1 (2 runs), 2 (1 run), 2 then 1 (1 run)"
    assert closer._device("CPU (x86_64, 2 threads)", tmp_path / "closer-cub100-cpu") == "CPU (x86_64, 2 threads)"  # no runs there


@pytest.mark.parametrize("fusion", ["logits", "probs"])
def test_fusion_weight_is_chosen_on_the_held_out_images_only(fusion):
    """The weight is the one with the best held-out top-1 (the smallest on a tie), whatever the test set says;
    the fusion is the model's own rule."""
    script = _script("fusion_weight")
    model = create_model("rra", backbone=TINY_BACKBONE, num_classes=3, patch_size=16, steps=2, hidden_size=16,
                         output_stride=8, fusion=fusion)
    eye = torch.eye(3) * 4
    labels = torch.tensor([0, 1, 2, 0])
    right, wrong = eye[labels], eye[(labels + 1) % 3]  # logits that pick the label, or the next class
    half = torch.cat([eye[labels[:2]], eye[(labels[2:] + 1) % 3]])  # right on the first two images only
    # held out: the global stream is half right and the local one always right, so a weight of 1 wins;
    # on test the local stream is always wrong, so 0 would have been better there
    held, test = (half, right * 2, labels), (right, wrong * 2, labels)
    out = script.choose(model, held, test, [0.0, 0.5, 1.0], default=1.0)
    assert out["chosen_weight"] == 1.0 and out["test_top1_chosen"] == out["rows"][2]["test_top1"]
    assert [r["holdout_top1"] for r in out["rows"]][0] == 50.0 and out["rows"][0]["test_top1"] == 100.0
    assert out["test_top1_chosen"] == 0.0 and model.fusion_weight == 1.0  # test ignored; the weight restored
    expected = half + 0.5 * right if fusion == "logits" else \
        ((half.softmax(1) + 0.5 * right.softmax(1)) / 1.5).clamp_min(1e-12).log()
    assert torch.allclose(script.fused(model, half, right, 0.5), expected)
    # a tie on the held-out images picks the smallest weight
    tie = script.choose(model, (right, right, labels), test, [0.0, 0.5, 1.0], default=1.0)
    assert tie["chosen_weight"] == 0.0 and tie["test_top1_chosen"] == 100.0 and tie["test_top1_default"] < 100.0


def test_looking_closer_report_puts_each_arm_beside_the_probe_of_its_view(tmp_path, monkeypatch):
    """The heads-first round's table: the probe's rows, and each arm against the probe of its own view (the
    attention methods' glance is 128 px); the runs' own commits are named."""
    import json

    import yaml

    closer = _script("looking_closer")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setattr(closer, "COST", tmp_path / "cost.json")
    monkeypatch.setattr(closer, "_plot", lambda *a, **k: None)
    folder = tmp_path / "closer-synth-cpu"
    for arm, top1, commit in (("glance", 80.0, "aaaaaaa"), ("full", 90.0, "aaaaaaa"), ("tasn", 85.5, "bbbbbbb"),
                              ("wsdan", 70.0, "bbbbbbb")):
        run = folder / f"{arm}-seed0"
        (run / "final-eval").mkdir(parents=True)
        (run / "final-eval" / "report.json").write_text(json.dumps({"top1": top1, **({"eval_theta": 0.6} if arm == "wsdan" else {})}))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "threads": 1, "commit": commit}) + "\n")
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "head_epochs": 2}}))
    (folder / "probe").mkdir()
    (folder / "probe" / "probe.json").write_text(json.dumps({
        "holdout": 0.1, "views": {"128": {"top1": 81.0}, "224": {"top1": 88.0}},
        "environment": {"device": "CPU (x86_64)", "torch": "2", "commit": "ccccccc"}}))
    # TASN's mean-of-both-nets prediction: a row from zoom_sizes.py's whole-test-split scores only
    (folder / "tasn-seed0" / "final-eval" / "report.json").write_text(json.dumps({"top1": 85.5, "n": 50}))
    q = {"5": 1.2, "25": 1.3, "50": 1.3, "75": 1.4, "95": 1.4}
    zoom = {"split": "test", "images": 50, "peak_zoom_over_resize": q, "peak_source_pixels_per_output_pixel": 0.7,
            "top1": {"glance (attention net)": 80.0, "zoom (master net)": 85.0, "mean of both": 87.0}}
    (folder / "tasn-seed0" / "zoom_sizes.json").write_text(json.dumps(zoom))
    run = folder / "tasn-seed1"
    run.mkdir()
    (run / "zoom_sizes.json").write_text(json.dumps({**zoom, "images": 20,
                                                     "top1": {**zoom["top1"], "mean of both": 10.0}}))
    # the seed the main folder lacks a whole scoring for, trained again in an ablation folder of the same recipe
    again = tmp_path / "closer-synth-retrained-cpu" / "tasn-seed1"
    (again / "final-eval").mkdir(parents=True)
    (again / "final-eval" / "report.json").write_text(json.dumps({"top1": 85.0, "n": 50}))
    (again / "zoom_sizes.json").write_text(json.dumps({**zoom, "top1": {**zoom["top1"], "mean of both": 89.0}}))
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    # seed 0 from the main folder, seed 1 from the ablation; the partial scoring (20 of 50 images) is not counted
    assert ("| tasn, prediction mean | 128 px glance + 128 px zoom from 224; the mean of both nets' probabilities "
            "| 88.00 ± 1.41 | +8.00 | +7.00 | – | – | 2 |") in md
    assert "### synth: 2 heads-first + 2 epochs" in md
    assert "| baseline 128 px | 128 px view | 80.00 | +0.00 | -1.00 |" in md
    assert "| baseline 224 px | 224 px view | 90.00 | +10.00 | +2.00 |" in md
    assert "| tasn | 128 px glance + 128 px zoom from 224 | 85.50 | +5.50 | +4.50 |" in md
    assert "| linear probe 224 px | frozen features, 224 px view | 88.00 | +8.00 | – |" in md
    assert "runs trained at commit aaaaaaa (2 runs), commit bbbbbbb (2 runs)." in md
    assert "chosen by each run on its held-out images, per seed: wsdan θ 0.6." in md


def test_looking_closer_keeps_gpu_runs_apart_from_the_cpu_ones(tmp_path, monkeypatch):
    """``--device cuda`` trains into closer-DATA-gpu/ with the runtime flags only (the recipe is the CPU's), and its
    report (closer-gpu.md) counts the GPU's runs alone, beside the CPU's probe, without host thread counts; the
    CPU's report never counts a GPU run."""
    import json
    import sys

    import yaml

    import lookcloser.cli

    closer = _script("looking_closer")
    monkeypatch.setitem(closer.RECIPES, "heads", ("looking_closer.yaml", tmp_path))
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setattr(closer, "COST", tmp_path / "cost.json")
    monkeypatch.setattr(closer, "_plot", lambda *a, **k: None)
    seen = []
    monkeypatch.setattr(lookcloser.cli, "main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["looking_closer.py", "--device", "cuda", "--data-root", str(tmp_path / "d"),
                                      "train", "cub100", "--arms", "wsdan", "--epochs", "10", "--seeds", "2",
                                      "--workers", "3", "--cache"])
    closer.main()
    argv = seen[0]
    assert argv[argv.index("--out") + 1] == str(tmp_path / "closer-cub100-gpu")
    assert argv[argv.index("--data") + 1] == str(tmp_path / "d" / "cub100")
    assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--workers") + 1] == "3"
    assert "--cache" in argv and argv[argv.index("--config") + 1].endswith("looking_closer.yaml")

    def runs(kind, top1, threads):
        for arm, value in (("glance", top1), ("tasn", top1 + 1)):
            run = tmp_path / f"closer-synth-{kind}" / f"{arm}-seed0"
            (run / "final-eval").mkdir(parents=True)
            (run / "final-eval" / "report.json").write_text(json.dumps({"top1": value}))
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "threads": threads, "commit": "a"}) + "\n")
            (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 10, "head_epochs": 2}}))
        (tmp_path / f"closer-synth-{kind}" / "results.json").write_text(json.dumps({"environment": {
            "device": "CPU (x86_64, 1 threads)" if kind == "cpu" else "NVIDIA H200", "torch": "2", "timm": "1",
            "commit": "a"}}))

    runs("cpu", 70.0, 1)
    runs("gpu", 80.0, 16)
    (tmp_path / "closer-synth-cpu" / "probe").mkdir()
    (tmp_path / "closer-synth-cpu" / "probe" / "probe.json").write_text(json.dumps({
        "holdout": 0.1, "views": {"128": {"top1": 75.0}},
        "environment": {"device": "CPU (x86_64)", "torch": "2", "commit": "c"}}))
    closer.use_device("cpu")
    closer.report(None)
    closer.use_device("cuda")
    closer.report(None)
    cpu, gpu = (tmp_path / "closer-cpu.md").read_text(), (tmp_path / "closer-gpu.md").read_text()
    assert "| baseline 128 px | 128 px view | 70.00 | +0.00 | -5.00 |" in cpu and "80.00" not in cpu
    assert "| baseline 128 px | 128 px view | 80.00 | +0.00 | +5.00 |" in gpu and "70.00" not in gpu
    assert "| linear probe 128 px | frozen features, 128 px view | 75.00 | -5.00 |" in gpu
    assert "Device NVIDIA H200; torch 2" in gpu and "threads per run" not in gpu
    assert "threads per run: 1 (2 runs)" in cpu
    assert "--device cuda train synth --epochs 10" in gpu


def test_code_commit_falls_back_to_the_named_commit_outside_a_checkout(tmp_path, monkeypatch):
    """A checkout's files copied without their .git (a rented GPU) name the commit LOOKCLOSER_COMMIT gives; a
    real checkout's own HEAD wins over it."""
    import shutil

    import lookcloser._version as version

    (tmp_path / "copy" / "lookcloser").mkdir(parents=True)
    shutil.copy(version.__file__, tmp_path / "copy" / "lookcloser" / "_version.py")
    spec = importlib.util.spec_from_file_location("copied_version", tmp_path / "copy" / "lookcloser" / "_version.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    assert copied.code_commit() == ""
    copied.code_commit.cache_clear()
    monkeypatch.setenv("LOOKCLOSER_COMMIT", "fc82739")
    assert copied.code_commit() == "fc82739"
    version.code_commit.cache_clear()
    try:
        own = version.code_commit()
        assert own != "fc82739" and (own == "" or len(own.split("+")[0]) >= 7)
    finally:
        version.code_commit.cache_clear()


def test_the_scenes_report_adds_adaptive_rows_localization_and_the_goals(tmp_path, monkeypatch):
    """The scenes recipe's table: each method's zoom-only-when-unsure row at its runs' thresholds, where the
    attention looked, and each goal said met or not from the figures (hand-made reports)."""
    import json

    import yaml

    closer = _script("looking_closer")
    closer.use_recipe("scenes")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setattr(closer, "COST", tmp_path / "cost.json")
    monkeypatch.setattr(closer, "DATASETS", {"cub100-scenes": lambda: "cub:/x"})
    drawn = []
    monkeypatch.setattr(closer, "_plot", lambda panels, path: drawn.append(panels))
    folder = tmp_path / "closer-cub100-scenes-cpu"
    top1s = {"glance": (60.0, 61.0), "full": (80.0, 80.0), "b288": (66.0, 66.0), "b352": (72.0, 72.0),
             "tasn": (75.0, 76.0)}
    sweep = [{"threshold": 0.0, "top1": 60.0, "zoomed": 0.0, "gflops": 1.0},
             {"threshold": 0.5, "top1": 74.0, "zoomed": 0.4, "gflops": 1.4},
             {"threshold": None, "top1": 75.5, "zoomed": 1.0, "gflops": 2.0}]
    for arm, values in top1s.items():
        for seed, top1 in enumerate(values):
            run = folder / f"{arm}-seed{seed}"
            (run / "final-eval").mkdir(parents=True)
            report = {"top1": top1, "localization": {"boxes": 10, "pointing_game": 50.0 + seed},
                      "bf16": arm == "tasn" and seed == 1}  # one report from before the float32 default
            if arm == "tasn":
                report["localization"]["zoom_iou"] = 40.0
                report["adaptive"] = {"sweep": sweep, "run_threshold": 0.5,
                                      "at_run_threshold": {**sweep[1], "top1": 74.0 + seed}}
            (run / "final-eval" / "report.json").write_text(json.dumps(report))
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "threads": 1, "commit": "a"}) + "\n")
            (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "head_epochs": 2}}))
    (tmp_path / "cost.json").write_text(json.dumps({
        "batch_size": 16, "threads": 2, "rounds": 3, "environment": {"device": "CPU (x86_64)", "commit": "a"},
        "arms": {"glance": {"gflops": 0.8, "images_per_s": 10}, "b288": {"gflops": 1.3, "images_per_s": 8},
                 "b352": {"gflops": 2.0, "images_per_s": 6}, "full": {"gflops": 3.2, "images_per_s": 4},
                 "tasn": {"gflops": 2.0, "images_per_s": 5}}}))
    (folder / "probe").mkdir()
    (folder / "probe" / "probe.json").write_text(json.dumps({
        "holdout": 0.1, "views": {"224": {"top1": 62.0}, "448": {"top1": 70.0}},
        "environment": {"device": "CPU (x86_64)", "torch": "2", "commit": "c"}}))
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    assert "| tasn, zoom only when unsure | 224 px glance; zooms 40 % of images at its run's threshold | 74.50 ± 0.71 |" \
        in md
    assert "| baseline 224 px | class activation map | 50.5 ± 0.7 | – | 2 |" in md
    assert "Scored in bfloat16 (the earlier default on this CPU), the rest in float32: tasn seed 1;" in md
    assert "| tasn | its glance's attention | 50.5 ± 0.7 | 40.0 ± 0.0 | 2 |" in md
    # half of the 448 px baseline's 3.2 GFLOPs: the adaptive TASN (1.4) is cheap enough but 74.5 < 80
    assert "half the 448 px baseline's GFLOPs (1.60), a method at least as accurate as it (80.00): **not met**" in md
    assert "- Every arm at or above the linear probe of its view: **not met** (baseline 224 px -1.50)" in md
    assert "- tasn above the 224 px baseline by more than twice the larger std (1.41): +15.00, **met**" in md
    # 1.4 GFLOPs lies between the 288 px (1.3, 66) and 352 px (2.0, 72) baselines: the line is at 66 + 6/7 there
    assert ("A method above the baseline's accuracy-against-cost line: **met**: tasn (75.50 against the line's "
            "72.00 at 2.00 GFLOPs, +3.50); tasn, adaptive (74.50 against the line's 66.86 at 1.40 GFLOPs, +7.64)") in md
    assert drawn and drawn[0][0][3]["tasn"] == [(1.0, 60.0), (1.4, 74.0), (2.0, 75.5)]
    # a run threshold at which no image zooms leaves the glance alone: the goals say so where they name it
    for seed in (0, 1):
        path = folder / f"tasn-seed{seed}" / "final-eval" / "report.json"
        report = json.loads(path.read_text())
        report["adaptive"]["at_run_threshold"] = sweep[0]
        path.write_text(json.dumps(report))
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    assert "(best: tasn, adaptive (never zooms: its glance alone), 60.00 at 1.00 GFLOPs)" in md
    # above the line by less than twice the seeds' std (TASN 72.5 and 73.5 against the line's 72.00): said so
    for seed, top1 in enumerate((72.5, 73.5)):
        path = folder / f"tasn-seed{seed}" / "final-eval" / "report.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "top1": top1}))
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    assert ("A method above the baseline's accuracy-against-cost line: **met only within the seeds' spread**: tasn "
            "(73.00 against the line's 72.00 at 2.00 GFLOPs, +1.00, within twice the seeds' std (1.41))") in md
    closer.use_recipe("heads")


def test_the_demo_keeps_the_recipe_its_method_was_chosen_with():
    """The demo's 320 images would get 12 heads-first epochs and the small-set rule by default; its method was
    chosen with 2 and the rate kept, so it pins both."""
    from lookcloser.demo import demo_config

    cfg = demo_config(5).resolved(10)
    assert cfg.train.head_epochs == 2 and cfg.train.small_set == "off" and cfg.train.bn == "train"


def test_the_demo_shows_the_method_chosen_on_held_out_images():
    """The demo's default method is the one whose held-out lead over the baseline is the largest in the committed
    choice (benchmarks/demo_choice.py), at the demo's epochs; the command line's default is the same."""
    import json

    import typer

    from lookcloser import cli
    from lookcloser.demo import DEFAULT_METHOD, ZOOM_OPTIONS

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo-choice-cpu.json"
    runs = json.loads(path.read_text())["runs"]
    scores = {r["method"]: r["holdout_top1"] for r in runs.values() if r["epochs"] == 5 and r["seed"] == 0}
    assert set(ZOOM_OPTIONS) <= set(scores) and "baseline" in scores
    assert DEFAULT_METHOD == max(ZOOM_OPTIONS, key=lambda m: scores[m])
    assert scores[DEFAULT_METHOD] > scores["baseline"]
    default = next(p for p in __import__("inspect").signature(cli.demo).parameters.values() if p.name == "method")
    assert isinstance(default.default, typer.models.OptionInfo) and default.default.default == DEFAULT_METHOD


def test_few_shot_lists_are_seeded_nested_and_keep_the_whole_test_split(tmp_path):
    """k training images of every class, the same on every call, a 5-shot draw the start of the 10-shot one
    with the same seed, another seed another draw; the test split whole; the lists open as a csv: set."""
    from lookcloser.data import open_dataset
    from tests.fixtures_builders import _write_id_tables

    fs = _script("few_shot")
    home = tmp_path / "cub"
    classes = ["1 001.A", "2 002.B", "3 003.C"]
    images = [(str(i + 1), f"{c[2:]}/{n}.jpg", int(c[0]), 1) for i, (c, n) in
              enumerate((c, n) for c in classes for n in range(12))]
    images += [(str(100 + i), f"{c[2:]}/t{i}.jpg", int(c[0]), 0) for i, c in enumerate(classes * 2)]
    _write_id_tables(home, classes, images)

    def train_rows(folder):
        return (folder / "train.csv").read_text().splitlines()[1:]

    kept = fs.few_shot_lists(tmp_path / "a", 5, 0, data=home)
    assert kept == {"A": 5, "B": 5, "C": 5}  # CUB class names lose their number
    rows5 = train_rows(tmp_path / "a")
    assert len(rows5) == 15 and len(set(rows5)) == 15
    fs.few_shot_lists(tmp_path / "again", 5, 0, data=home)
    assert train_rows(tmp_path / "again") == rows5
    fs.few_shot_lists(tmp_path / "ten", 10, 0, data=home)
    assert set(rows5) < set(train_rows(tmp_path / "ten")) and len(train_rows(tmp_path / "ten")) == 30
    fs.few_shot_lists(tmp_path / "other", 5, 1, data=home)
    assert set(train_rows(tmp_path / "other")) != set(rows5)
    ds = open_dataset(f"csv:{tmp_path / 'a'}", "train")
    test = open_dataset(f"csv:{tmp_path / 'a'}", "test")
    assert len(ds) == 15 and sorted(ds.classes) == ["A", "B", "C"]
    assert len(test) == 6 and not {str(p) for p, _ in test.samples} & {str(p) for p, _ in ds.samples}
    fs.few_shot_lists(tmp_path / "val", 5, 0, data=home, val=3)
    val_rows = (tmp_path / "val" / "val.csv").read_text().splitlines()[1:]
    assert train_rows(tmp_path / "val") == rows5 and len(val_rows) == 9
    fs.few_shot_lists(tmp_path / "nine", 9, 0, data=home)
    assert not set(val_rows) & set(train_rows(tmp_path / "nine"))  # outside every draw that leaves room for it
    assert open_dataset(f"csv:{tmp_path / 'val'}", "val").classes == ds.classes
    with pytest.raises(SystemExit, match="has 12 training images, fewer than 10 \\+ 3 val"):
        fs.few_shot_lists(tmp_path / "big", 10, 0, data=home, val=3)
    cmd = fs.train_command("csv:x", "tasn", 2, ["--layer-decay", "0.7"], tmp_path / "run", 1)
    assert "--holdout" not in cmd and cmd[cmd.index("--seed") + 1] == "2"
    assert cmd[cmd.index("--eval-every") + 1] == "1" and cmd[-2:] == ["--layer-decay", "0.7"]
    unscored = fs.train_command("csv:x", "full", 0, [], tmp_path / "run", 1, scored=False)
    assert unscored[unscored.index("--eval-every") + 1] == "0"
    assert "-osample_size=128" in cmd and cmd[cmd.index("--epochs") + 1] == "8"
    with pytest.raises(SystemExit, match="unknown arm or candidate nope"):
        fs.main(["--arms", "nope", "report"])


def test_the_scenes_queue_counts_every_run_another_process_runs_before_starting_one(tmp_path, monkeypatch):
    """Runs an earlier queue left running (anywhere in the plan) share the machine: with two of them alive and
    --parallel 2 nothing starts until one ends; then the next job starts, and a finished one is reported."""
    import argparse

    lc = _script("looking_closer")
    lc.use_recipe("scenes")
    monkeypatch.setattr(lc, "RESULTS", tmp_path)
    plan = [("", "a", 0, []), ("", "b", 0, []), ("", "c", 0, [])]
    monkeypatch.setattr(lc, "scene_plan", lambda *a, **k: list(plan))
    alive = {"a": 2, "c": 4}  # polls each stays alive for
    finished: set[str] = {"probe"}
    monkeypatch.setattr(lc, "_finished", lambda data, tag, arm, seed: arm in finished)

    def elsewhere(sig):
        arm = sig[sig.index("--arms") + 1] if "--arms" in sig else None
        if alive.get(arm, 0) > 0:
            alive[arm] -= 1
            if alive[arm] == 0:
                finished.add(arm)
            return True
        return False

    monkeypatch.setattr(lc, "_running_elsewhere", elsewhere)
    started, done = [], []

    class Proc:
        returncode = 0

        def __init__(self, cmd, **kw):
            started.append((cmd[cmd.index("--arms") + 1], sorted(finished - {"probe"})))
            kw["stdout"].close()

        def poll(self):
            return 0

    monkeypatch.setattr(__import__("subprocess"), "Popen", Proc)
    monkeypatch.setattr(lc.time, "sleep", lambda s: None)
    monkeypatch.setattr(lc, "_done", lambda args, data, e, job, how: done.append((job[1], how)))
    args = argparse.Namespace(data="cub100-scenes", epochs="2", seeds=1, parallel=2, only="", no_candidates=False,
                              commit=False, dry_run=True)
    lc.queue(args)  # --dry-run: the plan, and nothing started
    assert started == [] and done == []
    args.dry_run = False
    lc.queue(args)
    # b starts only once one of the two runs elsewhere has ended (a, after its polls)
    assert started == [("b", ["a"])]
    assert sorted(done) == [("a", "elsewhere"), ("b", "exit 0"), ("c", "elsewhere")]
    # b's log went into its folder, claimed first as the benchmark's, so the benchmark run accepts the folder
    from lookcloser.benchmark import _earlier_benchmark
    from lookcloser.folders import output_folder, written_by

    folder = lc._folder("cub100-scenes", "")
    assert (folder / "b-seed0.log").is_file() and written_by(folder) == "benchmark accuracy"
    output_folder(folder, "benchmark accuracy", recognize=_earlier_benchmark)  # no refusal


def test_the_queue_knows_a_job_by_its_arm_seed_and_tag_not_by_words_anywhere():
    lc = _script("looking_closer")
    base = ["/venv/bin/python", "/w/benchmarks/looking_closer.py", "--recipe", "scenes", "train", "cub100-scenes"]
    seed0 = base + ["--arms", "tasn", "--first-seed", "0", "--seeds", "1", "--epochs", "2", "--threads", "1"]
    assert lc._same_job(seed0, lc._signature("cub100-scenes", "", "tasn", 0))
    assert not lc._same_job(seed0, lc._signature("cub100-scenes", "", "tasn", 1))  # "1" is --seeds' value
    assert not lc._same_job(seed0, lc._signature("cub100-scenes", "", "tasn", 2))  # "2" is --epochs'
    assert not lc._same_job(seed0, lc._signature("synth448", "", "tasn", 0))
    tagged = base + ["--arms", "wsdan", "--first-seed", "0", "--tag", "s32", "-ox=1"]
    assert lc._same_job(tagged, lc._signature("cub100-scenes", "s32", "wsdan", 0))
    assert not lc._same_job(tagged, lc._signature("cub100-scenes", "", "wsdan", 0))
    assert not lc._same_job(seed0[:4] + ["probe", "cub100-scenes"], lc._signature("cub100-scenes", "", "tasn", 0))
    assert lc._same_job(base[:4] + ["probe", "cub100-scenes", "--quiet"], lc._signature("cub100-scenes", "", "probe", -1))
    by_hand = base + ["--epochs", "2", "--seeds", "1", "--arms", "rra", "--tag", "top1"]  # no --first-seed: seed 0
    assert lc._same_job(by_hand, lc._signature("cub100-scenes", "top1", "rra", 0))
    assert not lc._same_job(by_hand, lc._signature("cub100-scenes", "top1", "rra", 1))


def test_few_shot_report_puts_each_candidate_and_arm_beside_the_probe_of_its_view(tmp_path):
    import json

    fs = _script("few_shot")
    out = tmp_path / "res"
    run = out / "choose" / "5shot" / "lld0.7" / "full-seed0"
    run.mkdir(parents=True)
    (run / "where-it-stands.json").write_text(json.dumps(
        {"held_out_images": 100, "view_size": 224, "probe_top1": 60.0, "last_top1": 55.0, "last_epoch": 10,
         "best_top1": 62.0, "best_epoch": 2, "best_phase": "heads", "below_probe": False}))
    for seed, (tasn, probe128) in enumerate([(50.0, 48.0), (47.0, 49.0)]):
        rep = out / "final" / "recipe" / "5shot" / f"tasn-seed{seed}" / "eval-test" / "report.json"
        rep.parent.mkdir(parents=True)
        rep.write_text(json.dumps({"top1": tasn}))
        epochs = [{"epoch": 1, "device": "CPU (x86_64)", "threads": 1, "commit": "aaa"},
                  {"epoch": 2, "device": "CPU (x86_64)", "threads": 1, "commit": "aaa" if seed == 0 else "bbb",
                   **({"torch": "2.9", "timm": "1.1"} if seed else {})}]
        (rep.parent.parent / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
        pr = out / "probe" / f"5shot-seed{seed}" / "probe.json"
        pr.parent.mkdir(parents=True)
        pr.write_text(json.dumps({"views": {"128": {"top1": probe128}, "224": {"top1": 70.0}},
                                  "environment": {"device": "CPU (x86_64)", "torch": "2.1", "timm": "1.0",
                                                  "commit": "ccc"}}))
    for cand, last in (("recipe", 80.0), ("default", 84.0)):  # the rule where it turns on without few shots
        run = out / "carry" / "flowers12" / cand / "full-seed0"
        run.mkdir(parents=True)
        (run / "where-it-stands.json").write_text(json.dumps(
            {"split": "holdout", "probe_top1": 82.0, "last_top1": last, "best_top1": last, "best_epoch": 6,
             "best_phase": "all"}))
    rep = out / "final" / "default" / "5shot" / "tasn-seed0" / "eval-test" / "report.json"
    rep.parent.mkdir(parents=True)
    rep.write_text(json.dumps({"top1": 52.0}))
    fs.main(["--out", str(out), "--shots", "5", "--seeds", "2", "report"])
    md = (out / "fewshot-cub100.md").read_text()
    # every final recipe that ran gets its table, whatever --candidate says
    assert "Every arm with the `default` recipe (`--head-epochs -1 --small-set auto`)" in md
    assert "| 5 | tasn | 128 | 1 | 52.00 ± 0.00 | 48.00 ± 0.00 | +4.00 | 1 of 1 |" in md
    assert "| flowers12 | full | recipe | 82.00 | 80.00 | 80.00 (6, all) | -2.00 |" in md
    assert "| flowers12 | full | default | 82.00 | 84.00 | 84.00 (6, all) | +2.00 |" in md
    from PIL import Image

    assert md.startswith("![each arm against the probe of its view](fewshot-cub100.png)")
    with Image.open(out / "fewshot-cub100.png") as picture:  # a panel each: val (choose), test (final)
        assert picture.size[0] > 3 * picture.size[1]  # val (choose), flowers12 (carry), test (final)
    assert "| 5 | full | lld0.7 | `--layer-decay 0.7` | 60.00 | 55.00 | 62.00 (2, heads) | -5.00 |" in md
    assert "| 5 | full | recipe |" not in md  # not run: not listed
    # TASN's view is its 128 px glance: 48.5 ± 2.12 against the probe at 128, one seed of two at or above it
    assert "| 5 | tasn | 128 | 2 | 48.50 ± 2.12 | 48.50 ± 0.71 | +0.00 | 1 of 2 |" in md
    # where and by which code: the runs' own records (a resumed run names both commits), the probes' environment
    # ... and the libraries (seed 1 was resumed by code that records them)
    assert ("Runs: CPU (x86_64); threads per run: 1 (2 runs); trained at commit aaa (1 run), commit aaa, bbb "
            "(1 run); with torch, timm not recorded (1 run), torch, timm not recorded then torch 2.9, timm 1.1 "
            "(1 run).") in md
    assert "Probes: CPU (x86_64), torch 2.1, timm 1.0, commit ccc (2)." in md  # below the probes' own table
    assert "| 5shot-seed1 | 224 | 70.00 |" in md


def test_looking_closer_ablations_are_read_on_held_out_images_beside_their_cost(tmp_path, monkeypatch):
    """A tagged candidate's row: its held-out top-1 against the main run's (what the recipe is chosen on), the
    GFLOPs of the model each run's config builds, then the test figures for the record."""
    import json

    import yaml

    closer = _script("looking_closer")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    for folder, top1, held, options in (("closer-d-cpu", 70.0, 72.0, {}),
                                        ("closer-d-cheap-cpu", 69.0, 74.5, {"output_stride": 32})):
        run = tmp_path / folder / "wsdan-seed0"
        (run / "final-eval").mkdir(parents=True)
        (run / "eval-holdout").mkdir()
        (run / "final-eval" / "report.json").write_text(json.dumps({"top1": top1}))
        (run / "eval-holdout" / "report.json").write_text(json.dumps({"top1": held}))
        (run / "config.yaml").write_text(yaml.safe_dump({
            "data": {"holdout": 0.1}, "train": {"epochs": 2, "lr": 0.001},
            "model": {"method": "wsdan", "backbone": TINY_BACKBONE, "options": {"num_maps": 4, **options}}}))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "device": "CPU", "commit": "abc1234"}) + "\n")
    # a tag whose run is still training: no row, and no word of it in the line saying where the runs trained
    (tmp_path / "closer-d-longer-cpu" / "wsdan-seed0").mkdir(parents=True)
    (tmp_path / "closer-d-longer-cpu" / "wsdan-seed0" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    lines = closer._recipe_ablations("d")
    assert not any("longer" in line for line in lines)
    assert "Trained on cheap: CPU" in lines[-2]
    row = next(x for x in lines if x.startswith("| cheap |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["cheap", "wsdan", "0"] and "output_stride 32 (main 16)" in cells[3]
    assert cells[4:7] == ["74.50", "72.00", "+2.50"] and cells[9:] == ["69.00", "70.00", "-1.00"]
    g, g_main = float(cells[7]), float(cells[8])
    assert 0 < g < g_main  # the stride-32 attention costs less than the dilated stride 16
    assert "Choose on the held-out columns" in lines[0]


def test_a_benchmark_commit_takes_the_paths_that_exist_and_only_them(tmp_path, monkeypatch):
    """A finished run's files are committed alone, found from their paths; a path that is not there (a log a
    run did not write) is left out instead of failing the whole commit."""
    import subprocess

    for key, value in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@t"), ("GIT_COMMITTER_NAME", "t"),
                       ("GIT_COMMITTER_EMAIL", "t@t")):
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "other.txt").write_text("not this")
    run = repo / "results" / "tasn-seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (repo / "results" / "tasn-seed0.log").write_text("log\n")
    closer = _script("looking_closer")
    closer._commit([run, repo / "results" / ".lookcloser.json", repo / "results" / "tasn-seed0.log"], "a run")
    files = subprocess.run(["git", "-C", str(repo), "show", "--name-only", "--format=%s", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert files[:2] == ["a", "run"] and sorted(files[2:]) == ["results/tasn-seed0.log",
                                                               "results/tasn-seed0/metrics.jsonl"]


def test_a_queued_run_that_resumes_keeps_the_log_of_its_earlier_epochs(tmp_path, monkeypatch):
    """The queue appends to a run's log: a run resumed after a stop (the machine's or the session's) keeps the
    lines of the epochs it trained before it."""
    import argparse

    from lookcloser.benchmark import _earlier_benchmark
    from lookcloser.folders import output_folder

    lc = _script("looking_closer")
    lc.use_recipe("scenes")
    monkeypatch.setattr(lc, "RESULTS", tmp_path)
    monkeypatch.setattr(lc, "scene_plan", lambda *a, **k: [("", "b", 0, [])])
    monkeypatch.setattr(lc, "_finished", lambda data, tag, arm, seed: arm == "probe")
    monkeypatch.setattr(lc, "_running_elsewhere", lambda sig: False)
    monkeypatch.setattr(lc.time, "sleep", lambda s: None)
    monkeypatch.setattr(lc, "_done", lambda *a: None)

    class Proc:
        returncode = 0

        def __init__(self, cmd, **kw):
            kw["stdout"].write("epoch 2\n")
            kw["stdout"].close()

        def poll(self):
            return 0

    monkeypatch.setattr(__import__("subprocess"), "Popen", Proc)
    folder = lc._folder("cub100-scenes", "")
    output_folder(folder, "benchmark accuracy", recognize=_earlier_benchmark)
    (folder / "b-seed0.log").write_text("epoch 1\n")
    lc.queue(argparse.Namespace(data="cub100-scenes", epochs="2", seeds=1, parallel=2, only="",
                                no_candidates=False, commit=False, dry_run=False))
    assert (folder / "b-seed0.log").read_text() == "epoch 1\nepoch 2\n"


def test_a_queued_runs_commit_message_says_what_the_run_trained(tmp_path):
    """A tag that changes the budget (noheads: no heads-first epochs, 4 of everything) is named as it ran, not
    as the recipe's 2 + 2."""
    lc = _script("looking_closer")
    run = tmp_path / "wsdan-seed0"
    assert lc._run_budget(run, 2) == "2 heads-first + 2 epochs"  # no saved configuration: the queue's
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 4\n  head_epochs: 0\n")
    assert lc._run_budget(run, 2) == "4 epochs"
    (run / "config.yaml").write_text("train:\n  epochs: 10\n  head_epochs: 2\n")
    assert lc._run_budget(run, 2) == "2 heads-first + 10 epochs"


def _train_args(**given):
    """``looking_closer.py train``'s arguments as its parser leaves them when only ``given`` is set."""
    import argparse

    return argparse.Namespace(**{
        "tag": "", "seeds": 1, "first_seed": 0, "lr": None, "device": "cpu", "workers": None, "threads": 1,
        "cache": False, "backbone_lr_scale": None, "head_epochs": None, "head_lr": None, "bn": None,
        "holdout": None, "option": [], **given})


def test_an_arm_chosen_without_heads_first_keeps_the_recipes_length(tmp_path, monkeypatch):
    """An arm whose held-out choice is no heads-first phase (``ARM_TRAIN``) trains in its own benchmark command
    with the recipe's 2 heads-first epochs turned into epochs of everything (2 + 2 -> 0 + 4; 2 + 10 -> 0 + 12
    on a GPU); the other arms keep the recipe; an ablation that sets its own heads-first epochs keeps its budget."""
    import sys

    from lookcloser import cli

    lc = _script("looking_closer")
    lc.use_recipe("scenes")
    monkeypatch.setattr(lc, "RESULTS", tmp_path)
    monkeypatch.setitem(lc.ARM_TRAIN, "scenes", {"wsdan": {"head_epochs": 0}})
    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append(list(sys.argv)))

    def last(argv, flag):
        return [argv[i + 1] for i, a in enumerate(argv) if a == flag][-1] if flag in argv else None

    def run(epochs, head_epochs=None):
        calls.clear()
        lc.train(_train_args(data="cub100-scenes", arms="wsdan,tasn", epochs=epochs, head_epochs=head_epochs))
        return {last(argv, "--methods").split("=")[0]: argv for argv in calls}

    by_arm = run(2)
    assert sorted(by_arm) == ["tasn", "wsdan"]  # two commands: the arms' recipes differ
    assert last(by_arm["wsdan"], "--head-epochs") == "0" and last(by_arm["wsdan"], "--epochs") == "4"
    assert last(by_arm["tasn"], "--head-epochs") is None and last(by_arm["tasn"], "--epochs") == "2"
    assert last(run(10)["wsdan"], "--epochs") == "12"
    ablation = run(2, head_epochs=4)  # heads4: 4 heads-first epochs, then the queue's 2 of everything
    assert last(ablation["wsdan"], "--head-epochs") == "4" and last(ablation["wsdan"], "--epochs") == "2"
    # the report names what the selection changed per arm
    line = lc._arm_recipes({"wsdan": {}, "wsban": {}, "tasn": {}})[0]
    assert "wsdan: no heads-first phase (its epochs train everything)" in line
    assert "wsban: output_stride 32" in line and "tasn" not in line
    lc.use_recipe("heads")


def test_a_crop_sets_zoom_only_when_unsure_rows_come_from_its_retrained_runs(tmp_path, monkeypatch):
    """The crop sets' main runs hold out no images, so a method's zoom-only-when-unsure row and curve come from the
    `adaptive` tag's runs (the recipe with a tenth held out, ``train ... --holdout 0.1 --tag adaptive``), and
    the row says so with those runs' always-zooming top-1; a main run's own sweep comes first where it has one."""
    import json
    import sys

    import yaml

    from lookcloser import cli

    closer = _script("looking_closer")
    closer.use_recipe("heads")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setattr(closer, "COST", tmp_path / "cost.json")
    drawn = []
    monkeypatch.setattr(closer, "_plot", lambda panels, path: drawn.append(panels))
    sweep = [{"threshold": 0.0, "top1": 80.0, "zoomed": 0.0, "gflops": 0.6},
             {"threshold": 0.5, "top1": 84.0, "zoomed": 0.3, "gflops": 0.8},
             {"threshold": None, "top1": 85.0, "zoomed": 1.0, "gflops": 1.2}]

    def write(folder, arm, seed, top1, adaptive=None, holdout=0.0):
        run = folder / f"{arm}-seed{seed}"
        (run / "final-eval").mkdir(parents=True)
        (run / "final-eval" / "report.json").write_text(json.dumps({"top1": top1, **({"adaptive": adaptive}
                                                                                      if adaptive else {})}))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "threads": 1, "commit": "a"}) + "\n")
        method = "baseline" if arm in ("glance", "full") else arm
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "head_epochs": 2},
                                                         "data": {"holdout": holdout},
                                                         "model": {"method": method, "backbone": "resnet18"}}))

    (tmp_path / "cost.json").write_text(json.dumps({
        "batch_size": 16, "threads": 2, "rounds": 3, "environment": {"device": "CPU (x86_64)", "commit": "a"},
        "arms": {"glance": {"gflops": 0.25}, "full": {"gflops": 0.77}, "tasn": {"gflops": 1.2}, "rra": {"gflops": 0.5}}}))
    main, tagged = tmp_path / "closer-cub100-cpu", tmp_path / "closer-cub100-adaptive-cpu"
    for arm, top1 in (("glance", 85.0), ("full", 90.0), ("tasn", 86.0), ("rra", 83.0)):
        write(main, arm, 0, top1)
    for seed, at in ((0, 83.5), (1, 84.5)):
        write(tagged, "tasn", seed, 85.0 + seed,
              {"sweep": sweep, "run_threshold": 0.5, "at_run_threshold": {**sweep[1], "top1": at}}, holdout=0.1)
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    assert ("| tasn, zoom only when unsure | 128 px glance; zooms 30 % of images at its run's threshold; runs "
            "retrained with a tenth of the training images held out (`adaptive`), always zooming 85.00 | "
            "84.00 ± 0.71 | -1.00 |") in md
    assert "rra, zoom only when unsure" not in md  # no sweep anywhere: no row
    assert "| adaptive | tasn | 0 | holdout 0.1 (main 0.0) |" in md  # the retrained run beside the main one
    assert drawn[0][0][3] == {"tasn": [(0.6, 80.0), (0.8, 84.0), (1.2, 85.0)]}
    # the share held out is read from the runs' own configuration, not assumed
    cfg = tagged / "tasn-seed1" / "config.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "data": {"holdout": 0.2}}))
    closer.report(None)
    assert "runs retrained with a tenth or 20% of the training images held out" in (tmp_path / "closer-cpu.md").read_text()
    # the main run's own sweep, where it has one, is the one shown
    path = main / "tasn-seed0" / "final-eval" / "report.json"
    path.write_text(json.dumps({"top1": 86.0, "adaptive": {"sweep": sweep, "run_threshold": 0.0,
                                                           "at_run_threshold": sweep[0]}}))
    closer.report(None)
    md = (tmp_path / "closer-cpu.md").read_text()
    assert "| tasn, zoom only when unsure | 128 px glance; zooms 0 % of images at its run's threshold | 80.00 |" in md
    # train --holdout reaches the benchmark command (the crop recipe holds out none)
    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append(list(sys.argv)))
    closer.train(_train_args(data="cub100", arms="tasn", tag="adaptive", epochs=2, holdout=0.1))
    argv = calls[0]
    assert argv[argv.index("--holdout") + 1] == "0.1" and argv[argv.index("--out") + 1].endswith("closer-cub100-adaptive-cpu")


def test_evaluate_scores_held_out_images_only_where_something_reads_them(tmp_path, monkeypatch):
    """`looking_closer.py evaluate` scores a run's held-out images for a method that looks closer (its zoom
    threshold is chosen there) and for every ablation run; a main-table baseline only where an ablation of its
    arm is compared with it (the only reader of its held-out top-1)."""
    import json
    from types import SimpleNamespace

    import lookcloser.engine.checkpoint as checkpoint
    import lookcloser.report as report

    closer = _script("looking_closer")
    closer.use_recipe("scenes")
    monkeypatch.setattr(closer, "RESULTS", tmp_path)
    monkeypatch.setattr(closer, "DATASETS", {"cub100-scenes": lambda: "csv:/x"})
    scored = []

    def evaluate_checkpoint(path, split, out, **_):  # records the call and writes what a real one would
        scored.append((path.parent.parent.name, path.parent.name, split))
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"top1": 50.0, "bf16": False}))

    monkeypatch.setattr(report, "evaluate_checkpoint", evaluate_checkpoint)
    monkeypatch.setattr(checkpoint, "load_checkpoint_file", lambda path: {"build_args": {}})
    main, tagged = tmp_path / "closer-cub100-scenes-cpu", tmp_path / "closer-cub100-scenes-s32-cpu"
    for folder, arm in ((main, "glance"), (main, "full"), (main, "tasn"), (tagged, "tasn")):
        run = folder / f"{arm}-seed0"
        (run / "final-eval").mkdir(parents=True)
        (run / "last.pt").write_bytes(b"")
        (run / "final-eval" / "report.json").write_text(json.dumps(
            {"top1": 60.0, "bf16": False, "localization": {}, **({"adaptive": {}} if arm == "tasn" else {})}))
    args = SimpleNamespace(data="cub100-scenes", workers=0, speed_images=0)
    closer.evaluate_runs(args)
    assert sorted(scored) == [(main.name, "tasn-seed0", "holdout"), (tagged.name, "tasn-seed0", "holdout")]
    # an ablation of the 448 px baseline makes its main run's held-out top-1 a reference: scored then, once
    run = tagged / "full-seed0"
    (run / "final-eval").mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    (run / "final-eval" / "report.json").write_text(json.dumps({"top1": 61.0, "bf16": False, "localization": {}}))
    scored.clear()
    closer.evaluate_runs(args)
    assert sorted(scored) == [(main.name, "full-seed0", "holdout"), (tagged.name, "full-seed0", "holdout")]
    closer.use_recipe("heads")


def test_rra_local_stream_centres_patches_on_the_object_and_keeps_them_inside():
    """The object-centred patch: a square of the given side around the box's centre, shifted (not shrunk) where
    it would leave the image, as RRA's proposals are placed."""
    script = _script("rra_local_stream")
    boxes = torch.tensor([[100.0, 100.0, 200.0, 300.0],   # centre (150, 200)
                          [0.0, 400.0, 40.0, 448.0]])     # centre (20, 424): at the corner
    got = script.centred_patches(boxes, 100.0, 448, 448)
    torch.testing.assert_close(got, torch.tensor([[100.0, 150.0, 200.0, 250.0], [0.0, 348.0, 100.0, 448.0]]))


def test_rra_local_stream_measures_the_methods_own_head_and_streams():
    """``heads`` trains RRA's local head as the method builds it (same output for the same weights), and
    ``streams`` scores the streams the method's evaluation fuses: its fused prediction with its own patch is
    exactly the model's, and the object-centred patch is what the local stream reads in the other column."""
    script = _script("rra_local_stream")
    torch.manual_seed(0)
    model = create_model("rra", backbone=TINY_BACKBONE, num_classes=4, patch_size=16, steps=3, hidden_size=8,
                         lstm_layers=2, output_stride=8).eval()
    head = script.LocalHead(model.local_backbone.channels, 4, 3, 2, 8)
    head.lstm.load_state_dict(model.lstm.state_dict())
    head.time_attention.load_state_dict(model.time_attention.state_dict())
    head.classifier.load_state_dict(model.local_classifier.state_dict())
    images = torch.randn(6, 3, 64, 64)
    patch = torch.tensor([[8.0, 8.0, 40.0, 40.0]]).expand(6, 4)
    with torch.no_grad():
        feats = model.local_backbone(__import__("lookcloser.layers.proposals", fromlist=["x"]).crop_patches(
            images, patch, 16)).mean((2, 3))
        torch.testing.assert_close(head(feats), model._local(images, patch)[0])
        out = model(images)
    labels = out.logits.argmax(1)  # the fused prediction is right on every image by construction
    obj = torch.tensor([[10.0, 10.0, 30.0, 50.0]]).expand(6, 4)
    r = script.stream_scores(model, [(images, labels, [], {"object_box": obj})])
    assert r["images"] == 6 and r["top1"]["fused, its patch"] == 100.0
    assert r["top1"]["global alone"] == pytest.approx(100 * int((out.global_logits.argmax(1) == labels).sum()) / 6)
    side = model.box_size * 64
    centred = torch.tensor([[20 - side / 2, 30 - side / 2, 20 + side / 2, 30 + side / 2]]).expand(6, 4)
    with torch.no_grad():
        local = model._local(images, centred)[0]
    assert r["top1"]["local alone, patch on the object"] == pytest.approx(100 * int((local.argmax(1) == labels).sum()) / 6)
    from lookcloser.layers.proposals import box_iou
    assert abs(r["patch_iou"] - 100 * float(box_iou(out.boxes[:, 0], obj).mean())) < 1e-4


def test_rra_local_stream_heads_learn_a_separable_set():
    """A head trained by the script reaches every held-out image of an easily separated set (it can fail: an
    untrained or mis-wired head stays near chance), and records one row per epoch."""
    script = _script("rra_local_stream")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 16, generator=g) * 0.3
    rows = script.train_head(lambda: script.linear_head(16, 3), (x[:45], y[:45]), (x[45:], y[45:]), epochs=15,
                             lr=0.05, seed=0)
    assert len(rows) == 15 and rows[-1]["holdout_top1"] == 100.0 and rows[-1]["train_ce"] < rows[0]["train_ce"]
