"""The command line: every subcommand's --help, and the commands on a trained run."""

import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from lookcloser.cli import app
from tests.conftest import TINY_BACKBONE, TINY_SYNTH

runner = CliRunner()
SUBCOMMANDS = [["train"], ["evaluate"], ["predict"], ["probe"], ["visualize"], ["models"], ["export"], ["demo"], ["data"],
               ["data", "synth"], ["data", "info"], ["benchmark"], ["benchmark", "accuracy"], ["benchmark", "speed"]]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_help(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_rendered_help_shows_every_configuration_default():
    """The help as a terminal renders it (Rich) keeps each generated option's default in brackets."""
    import re

    from lookcloser.cli import train

    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    text = re.sub(r"\s+", " ", r.output.replace("│", " "))  # the panel's borders split wrapped lines
    for needle in ("with augmentation). [default: 10]", "or adamw. [default: 'sgd']", "[default: 'resnet18']",
                   "[default: 0.01]", "[default: -1]", "[default: 'auto']"):
        assert needle in text, needle
    assert text.count("[default:") >= len(train.config_fields)


def _main(*args):
    """Run the installed entry point as a user would, returning (code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-c", "from lookcloser.cli import main; main()", *args],
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def _sample_images(folder, n=3):
    from lookcloser.data import open_dataset

    ds = open_dataset(TINY_SYNTH, "test")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        ds.load(i).save(p)
        paths.append(p)
    return paths


def test_predict_on_saved_checkpoint(trained_run, tmp_path):
    paths = _sample_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_text("not an image")
    code, out, err = _main("predict", str(trained_run), str(tmp_path / "imgs"), "--top-k", "2", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == sorted(str(p) for p in [*paths, tmp_path / "imgs" / "broken.jpg"])
    good = [r for r in rows if "top" in r]
    assert len(good) == 3 and all(len(r["top"]) == 2 for r in good)
    for r in good:
        (c1, p1), (c2, p2) = r["top"]
        assert p1 >= p2 and 0 < p1 <= 1
    # the same probabilities as the Python API
    from lookcloser import Predictor

    api = Predictor(trained_run).predict([paths[0]], top_k=2)[0]
    assert api["top"][0][0] == good[0]["top"][0][0]
    assert api["top"][0][1] == pytest.approx(good[0]["top"][0][1], abs=1e-6)
    bad = next(r for r in rows if "error" in r)  # the unreadable file gets a row that says so, not a crash
    assert bad["image"].endswith("broken.jpg") and "top" not in bad and len(bad["error"]) > 10


def test_evaluate_writes_report(trained_run, tmp_path):
    r = runner.invoke(app, ["evaluate", str(trained_run), "--out", str(tmp_path / "ev"), "--workers", "0",
                            "--quiet", "--tta-flip"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == 12 and report["tta_flip"] is True
    assert report["bf16"] is False  # float32 on every CPU by default, as training scored it
    assert 0 <= report["top1"] <= report["top5"] <= 100
    assert len(report["per_class"]) == 4
    csv_lines = (tmp_path / "ev" / "confusion.csv").read_text().splitlines()
    assert len(csv_lines) == 5
    assert sum(int(v) for line in csv_lines[1:] for v in line.split(",")[1:]) == 12
    assert Image.open(tmp_path / "ev" / "confusion.png").size[0] > 100
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "data:image/png;base64" in html and "disc-stripes" in html


def test_visualize_writes_pictures(trained_run, tmp_path):
    paths = _sample_images(tmp_path / "imgs", 2)
    r = runner.invoke(app, ["visualize", str(trained_run), *map(str, paths), "--out", str(tmp_path / "viz")])
    assert r.exit_code == 0, r.output
    pics = sorted((tmp_path / "viz").glob("*.png"))
    assert len(pics) == 2 and Image.open(pics[0]).size[0] > 200
    gallery = (tmp_path / "viz" / "gallery.html").read_text()
    assert gallery.count("data:image/png;base64") == 2 and "img0.png" in gallery


def test_train_from_yaml_with_flag_override(tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"data:\n  data: '{TINY_SYNTH}'\n  image_size: 32\n  batch_size: 8\n  workers: 0\n"
                   f"model:\n  backbone: {TINY_BACKBONE}\ntrain:\n  epochs: 3\n  device: cpu\n")
    r = runner.invoke(app, ["train", "--config", str(cfg), "--epochs", "1", "--lr", "0.02",
                            "--out", str(tmp_path / "run"), "--quiet", "-o", "drop_rate=0.1"])
    assert r.exit_code == 0, r.output
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["lr"] == 0.02
    assert saved["data"]["image_size"] == 32 and saved["model"]["options"] == {"drop_rate": 0.1}


def test_data_synth_and_info(tmp_path):
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "s"), "--classes", "3", "--train", "2",
                            "--test", "1", "--size", "24"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "info", str(tmp_path / "s")])
    assert "format: folder" in r.output and "train: 6 images, 3 classes" in r.output


@pytest.mark.parametrize("args, phrase", [
    (["evaluate", "/no/such/run"], "does not exist"),
    (["train", "--data", "/no/such/folder", "--epochs", "1"], "does not exist"),
    (["train", "--method", "nope", "--data", TINY_SYNTH], "unknown method"),
    (["train", "--epochs", "-1"], "epochs must be >= 0"),
    # nothing to train: random weights start with no heads-first epochs
    (["train", "--data", TINY_SYNTH, "--epochs", "0"], "epochs 0 trains the heads-first epochs alone, and this run "
                                                       "has none"),
    (["train", "--backbone", "no_such_net", "--data", TINY_SYNTH], "unknown backbone"),
    (["train", "--optimizer", "lbfgs"], "optimizer must be"),
    (["train", "--data", TINY_SYNTH, "--backbone", "resnet18", "--pretrained"], "--weights"),
])
def test_user_errors_are_one_line(args, phrase, tmp_path, capsys):
    from lookcloser.cli import run

    code = run([*args, "--out", str(tmp_path / "r")] if args[0] == "train" else args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and phrase in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, phrase", [
    (["evaluate", "/no/such/run"], "does not exist"),
    (["train", "--data", TINY_SYNTH, "--backbone", "resnet18", "--pretrained"], "--weights"),
])
def test_user_errors_through_the_installed_entry_point(args, phrase, tmp_path):
    """The same through the console script's entry point in a fresh process, as a user meets them."""
    code, out, err = _main(*args, "--out", str(tmp_path / "r")) if args[0] == "train" else _main(*args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and phrase in lines[0], err
    assert "Traceback" not in err


def test_export_cli_onnx(trained_run, tmp_path):
    r = runner.invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").stat().st_size > 1000 and (tmp_path / "m.onnx.json").is_file()
    assert "max |" in r.output


def test_benchmark_speed_cli(tmp_path):
    r = runner.invoke(app, ["benchmark", "speed", "--methods", "wsdan", "--backbone", TINY_BACKBONE, "--image-size",
                            "32", "--batch-size", "2", "--device", "cpu", "--warmup", "1", "--windows", "2",
                            "--steps", "1", "-o", "wsdan.num_maps=4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [x["method"] for x in rows] == ["baseline", "wsdan"] and rows[1]["options"] == {"num_maps": 4}
    assert "| wsdan" in (tmp_path / "speed.md").read_text()


def test_bf16_inference_on_request_stays_close_to_float32(trained_run, tmp_path):
    from lookcloser import Predictor

    paths = _sample_images(tmp_path / "imgs", n=4)
    exact = Predictor(trained_run, bf16=False).predict(paths, top_k=1)
    half = Predictor(trained_run, bf16=True)
    # auto: float32 on every CPU (native bfloat16 or not), the precision CPU training chose its thresholds in
    assert half.bf16 and Predictor(trained_run, device="cpu").bf16 is False
    fast = half.predict(paths, top_k=1)
    for a, b in zip(exact, fast):
        assert abs(a["top"][0][1] - dict(b["top"]).get(a["top"][0][0], 0.0)) < 0.05


def test_print_config_shows_the_resolved_run_and_trains_nothing(tmp_path, capsys):
    import yaml

    from lookcloser.cli import run

    out = tmp_path / "never"
    assert run(["train", "--method", "tasn", "--backbone", "efficientnet_lite0", "--pretrained", "-o",
                "tasn.att_channels=8", "-o", "sample_size=96", "--out", str(out), "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["options"] == {"att_channels": 8, "sample_size": 96}  # both forms of -o
    # auto choices made: the default synthetic set's 320 images are 10 steps of 32, so 12 heads-first epochs
    assert cfg["train"]["head_epochs"] == 12 and cfg["train"]["epochs"] == 10
    assert cfg["train"]["small_set"] == "on"  # ... and the small-set rule after them
    assert not out.exists()
    assert run(["train", "--method", "tasn", "-o", "wsdan.num_maps=4", "--print-config"]) == 2
    assert "is for wsdan, but this run trains tasn" in capsys.readouterr().err


def test_benchmark_takes_plain_options_for_every_arm_that_has_them():
    from lookcloser.cli import _per_method
    from lookcloser.errors import LookcloserError

    arms = {"glance": "baseline", "tasn": "tasn", "wsdan": "wsdan"}
    assert _per_method(["view_size=128", "tasn.sample_size=64"], list(arms), arms) == {
        "glance": {"view_size": 128}, "tasn": {"view_size": 128, "sample_size": 64}, "wsdan": {"view_size": 128}}
    assert _per_method(["num_maps=4"], list(arms), arms) == {"wsdan": {"num_maps": 4}}
    with pytest.raises(LookcloserError, match="no method of this benchmark"):
        _per_method(["not_an_option=1"], list(arms), arms)


def test_predict_writes_a_results_file_a_pipeline_parses_back(trained_run, tmp_path):
    import csv

    from lookcloser.cli import run

    images = _sample_images(tmp_path / "imgs", n=3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "results.csv"
    assert run(["predict", str(trained_run), str(tmp_path / "imgs"), "--out", str(out), "--probabilities",
                "--top-k", "2", "--workers", "1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == sorted(str(p) for p in [*images, tmp_path / "imgs" / "broken.jpg"])
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3 and "cannot read image" in next(r for r in rows if r["error"])["error"]
    classes = [k[2:] for k in rows[0] if k.startswith("p:")]
    for r in good:
        probs = [float(r[f"p:{c}"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-4 and classes[int(r["index"])] == r["label"]
        assert abs(max(probs) - float(r["probability"])) < 1e-5
        assert r["top"].split(" ")[0].split(":")[0] == r["label"] and len(r["top"].split(" ")) == 2
    as_json = tmp_path / "results.json"
    assert run(["predict", str(trained_run), *map(str, images), "--out", str(as_json), "--workers", "0"]) == 0
    parsed = json.loads(as_json.read_text())
    assert [p["label"] for p in parsed] == [r["label"] for r in good]


def test_evaluate_writes_per_image_predictions(trained_run, tmp_path):
    import csv

    from lookcloser.cli import run

    assert run(["evaluate", str(trained_run), "--out", str(tmp_path / "ev"), "--workers", "0", "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "ev" / "predictions.csv").open()))
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert len(rows) == report["n"]
    assert 100 * sum(int(r["correct"]) for r in rows) / len(rows) == pytest.approx(report["top1"])
    assert all((r["label"] == r["predicted"]) == (r["correct"] == "1") for r in rows)
